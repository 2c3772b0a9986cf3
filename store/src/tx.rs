//! One way to change a control plane's state: **stage, commit, then apply**.
//!
//! A change is first staged in a [`Tx`]: the documents to write and delete, and the effects
//! (messages to clusters or workers) that may go out only once those writes are durable. The
//! in-memory state is not touched while staging. [`Tx::commit`] writes every staged document;
//! only when it returns `Ok` does the caller apply the change to memory and deliver the effects
//! it returns. A failed commit leaves memory as it was and sends nothing, so memory never
//! holds what the store does not.
//!
//! The root's and the cluster's control planes both use this one piece; `E` is what each sends
//! (commands to clusters, MQTT publishes to workers).

use crate::{Document, Result, Store};
use serde::Serialize;

/// A staged change: writes, deletes and effects, in the order they were staged.
#[derive(Debug)]
pub struct Tx<E> {
    puts: Vec<(&'static str, String, Document)>,
    deletes: Vec<(&'static str, String)>,
    effects: Vec<E>,
}

impl<E> Default for Tx<E> {
    fn default() -> Self {
        Tx {
            puts: Vec::new(),
            deletes: Vec::new(),
            effects: Vec::new(),
        }
    }
}

impl<E> Tx<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages a write of `value` at `collection/key` (a later put of the same key wins).
    pub fn put<T: Serialize>(
        &mut self,
        collection: &'static str,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let doc = crate::encode(collection, key, value)?;
        self.deletes
            .retain(|(c, k)| !(*c == collection && k == key));
        self.puts.push((collection, key.to_owned(), doc));
        Ok(())
    }

    /// Stages the removal of `collection/key` (it also drops an earlier staged put of it).
    pub fn delete(&mut self, collection: &'static str, key: &str) {
        self.puts
            .retain(|(c, k, _)| !(*c == collection && k == key));
        self.deletes.push((collection, key.to_owned()));
    }

    /// Stages an effect, delivered by the caller after a successful commit.
    pub fn effect(&mut self, effect: E) {
        self.effects.push(effect);
    }

    /// The effects staged so far.
    pub fn effects(&self) -> &[E] {
        &self.effects
    }

    /// Nothing staged: no write, no delete, no effect.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.effects.is_empty()
    }

    /// Moves everything staged in `other` after what is staged here.
    pub fn append(&mut self, other: Tx<E>) {
        for (c, k, doc) in other.puts {
            self.deletes.retain(|(dc, dk)| !(*dc == c && *dk == k));
            self.puts.push((c, k, doc));
        }
        for (c, k) in other.deletes {
            self.puts.retain(|(pc, pk, _)| !(*pc == c && *pk == k));
            self.deletes.push((c, k));
        }
        self.effects.extend(other.effects);
    }

    /// Writes every staged document, then performs the deletes. On `Ok` every write is durable
    /// and the effects are returned for the caller to deliver; on `Err` nothing is returned
    /// and the caller must not apply the change (writes before the failing one may have
    /// landed: each is idempotent, so retrying the whole change is safe).
    pub async fn commit(self, store: &dyn Store) -> Result<Vec<E>> {
        for (collection, key, doc) in &self.puts {
            store.put(collection, key, doc).await?;
        }
        for (collection, key) in &self.deletes {
            store.delete(collection, key).await?;
        }
        Ok(self.effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    #[tokio::test]
    async fn a_commit_writes_and_deletes_then_hands_back_the_effects() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        store
            .put("things", "old", &serde_json::json!(1))
            .await
            .unwrap();
        let mut tx: Tx<&str> = Tx::new();
        assert!(tx.is_empty());
        tx.put("things", "a", &"one").unwrap();
        tx.delete("things", "old");
        tx.effect("sent after the writes");
        let effects = tx.commit(&store).await.unwrap();
        assert_eq!(effects, vec!["sent after the writes"]);
        assert_eq!(
            store.get("things", "a").await.unwrap(),
            Some(serde_json::json!("one"))
        );
        assert_eq!(store.get("things", "old").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_last_staged_change_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let mut tx: Tx<()> = Tx::new();
        tx.put("things", "k", &1).unwrap();
        tx.delete("things", "k");
        let mut later: Tx<()> = Tx::new();
        later.put("things", "j", &2).unwrap();
        later.delete("things", "j");
        later.put("things", "j", &3).unwrap();
        tx.append(later);
        tx.commit(&store).await.unwrap();
        assert_eq!(store.get("things", "k").await.unwrap(), None);
        assert_eq!(
            store.get("things", "j").await.unwrap(),
            Some(serde_json::json!(3))
        );
    }

    #[tokio::test]
    async fn a_failed_commit_returns_no_effects() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        let mut tx: Tx<&str> = Tx::new();
        tx.put("Not A Collection", "k", &1).unwrap();
        tx.effect("never sent");
        assert!(tx.commit(&store).await.is_err());
    }
}
