//! Typed access: a [`Collection<T>`] reads and writes `T` through any [`Store`].

use crate::{Result, SharedStore, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// One collection of `T` documents.
pub struct Collection<T> {
    store: SharedStore,
    name: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Collection {
            store: self.store.clone(),
            name: self.name,
            _t: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Collection<T> {
    pub fn new(store: SharedStore, name: &'static str) -> Self {
        Collection {
            store,
            name,
            _t: PhantomData,
        }
    }

    fn encode(&self, key: &str, value: &T) -> Result<serde_json::Value> {
        crate::encode(self.name, key, value)
    }

    fn decode(&self, key: &str, doc: serde_json::Value) -> Result<T> {
        serde_json::from_value(doc).map_err(|e| StoreError::Decode {
            collection: self.name.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn put(&self, key: &str, value: &T) -> Result<()> {
        self.store
            .put(self.name, key, &self.encode(key, value)?)
            .await
    }

    pub async fn create(&self, key: &str, value: &T) -> Result<()> {
        self.store
            .create(self.name, key, &self.encode(key, value)?)
            .await
    }

    pub async fn get(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(self.name, key).await? {
            Some(doc) => self.decode(key, doc).map(Some),
            None => Ok(None),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.store.delete(self.name, key).await
    }

    pub async fn list(&self) -> Result<Vec<(String, T)>> {
        self.store
            .list(self.name)
            .await?
            .into_iter()
            .map(|(k, d)| self.decode(&k, d).map(|t| (k, t)))
            .collect()
    }
}
