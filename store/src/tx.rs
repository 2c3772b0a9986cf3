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
//! (commands to clusters, MQTT publishes to workers). A commit is one [`Store::write_batch`]:
//! on the embedded store one transaction, so a change of many documents costs one sync.

use crate::{Batch, Document, Result, Store};
use serde::Serialize;
use std::collections::BTreeMap;

/// A staged change: the last write or delete of each key, and the effects in the order they
/// were staged.
#[derive(Debug)]
pub struct Tx<E> {
    /// `Some`: write this document; `None`: delete the key.
    writes: BTreeMap<(&'static str, String), Option<Document>>,
    effects: Vec<E>,
}

impl<E> Default for Tx<E> {
    fn default() -> Self {
        Tx {
            writes: BTreeMap::new(),
            effects: Vec::new(),
        }
    }
}

impl<E> Tx<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stages a write of `value` at `collection/key` (a later put or delete of the same key
    /// replaces it).
    pub fn put<T: Serialize>(
        &mut self,
        collection: &'static str,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let doc = crate::encode(collection, key, value)?;
        self.writes.insert((collection, key.to_owned()), Some(doc));
        Ok(())
    }

    /// Stages the removal of `collection/key` (it replaces an earlier staged put of it).
    pub fn delete(&mut self, collection: &'static str, key: &str) {
        self.writes.insert((collection, key.to_owned()), None);
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
        self.writes.is_empty() && self.effects.is_empty()
    }

    /// Moves everything staged in `other` after what is staged here (its writes replace
    /// those of the same keys here).
    pub fn append(&mut self, other: Tx<E>) {
        self.writes.extend(other.writes);
        self.effects.extend(other.effects);
    }

    /// Writes every staged document and performs the deletes in one
    /// [`Store::write_batch`]. On `Ok` every write is durable and the effects are returned
    /// for the caller to deliver; on `Err` nothing is returned and the caller must not apply
    /// the change (with a store that writes one key at a time, some writes may have landed:
    /// each is idempotent, so retrying the whole change is safe).
    pub async fn commit(self, store: &dyn Store) -> Result<Vec<E>> {
        if !self.writes.is_empty() {
            let mut batch = Batch::default();
            for ((collection, key), doc) in self.writes {
                match doc {
                    Some(doc) => batch.puts.push((collection, key, doc)),
                    None => batch.deletes.push((collection, key)),
                }
            }
            store.write_batch(&batch).await?;
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
