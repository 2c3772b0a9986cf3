//! The MongoDB store. Each collection is a MongoDB collection of `{_id: key, doc: <document>}`.
//! Writes use write concern `w: majority, j: true`, so `Ok` means journaled.

use crate::{Document, Result, Store, StoreError, backend, check_collection, check_key};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, DatabaseOptions, WriteConcern};
use mongodb::{Client, Database};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone, Debug)]
pub struct MongoStore {
    db: Database,
}

impl MongoStore {
    /// Connects to `uri` and checks the server answers, using database `database`.
    pub async fn connect(uri: &str, database: &str) -> Result<Self> {
        let client = Client::with_uri_str(uri)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot use MongoDB URI: {e}")))?;
        let options = DatabaseOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .build();
        let db = client.database_with_options(database, options);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| StoreError::Backend(format!("MongoDB does not answer: {e}")))?;
        Ok(MongoStore { db })
    }

    fn coll(&self, name: &str) -> mongodb::Collection<bson::Document> {
        self.db.collection(name)
    }

    fn record(key: &str, doc: &Document) -> Result<bson::Document> {
        let value = bson::to_bson(doc).map_err(backend)?;
        Ok(doc! { "_id": key, "doc": value })
    }

    fn unpack(collection: &str, record: bson::Document) -> Result<(String, Document)> {
        let decode_err = |reason: String| StoreError::Decode {
            collection: collection.to_owned(),
            key: record.get_str("_id").map(str::to_owned).unwrap_or_default(),
            reason,
        };
        let key = record
            .get_str("_id")
            .map_err(|e| decode_err(e.to_string()))?
            .to_owned();
        let value = record.get("doc").cloned().unwrap_or(Bson::Null);
        let doc: Document = bson::from_bson(value).map_err(|e| decode_err(e.to_string()))?;
        Ok((key, doc))
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn put(&self, collection: &str, key: &str, doc: &Document) -> Result<()> {
        check_collection(collection)?;
        check_key(key)?;
        self.coll(collection)
            .replace_one(doc! { "_id": key }, Self::record(key, doc)?)
            .upsert(true)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn create(&self, collection: &str, key: &str, doc: &Document) -> Result<()> {
        check_collection(collection)?;
        check_key(key)?;
        match self
            .coll(collection)
            .insert_one(Self::record(key, doc)?)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict {
                collection: collection.to_owned(),
                key: key.to_owned(),
            }),
            Err(e) => Err(backend(e)),
        }
    }

    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>> {
        check_collection(collection)?;
        check_key(key)?;
        let found = self
            .coll(collection)
            .find_one(doc! { "_id": key })
            .await
            .map_err(backend)?;
        found
            .map(|r| Self::unpack(collection, r).map(|(_, d)| d))
            .transpose()
    }

    async fn delete(&self, collection: &str, key: &str) -> Result<bool> {
        check_collection(collection)?;
        check_key(key)?;
        let r = self
            .coll(collection)
            .delete_one(doc! { "_id": key })
            .await
            .map_err(backend)?;
        Ok(r.deleted_count > 0)
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Document)>> {
        check_collection(collection)?;
        let records: Vec<bson::Document> = self
            .coll(collection)
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        let mut out = records
            .into_iter()
            .map(|r| Self::unpack(collection, r))
            .collect::<Result<Vec<_>>>()?;
        // Order by key bytes exactly as the embedded store does, whatever the server's collation.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }
}
