//! Persistence shared by the root and cluster orchestrators.
//!
//! One trait, [`Store`], holds JSON documents in named collections under string keys. Two
//! implementations pass the same test suite (`store/tests/suite.rs`):
//!
//! - [`EmbeddedStore`]: one redb file under a data directory; the default, needs no service;
//! - [`MongoStore`]: a MongoDB database, what Oakestra deployments already run.
//!
//! A write that returned `Ok` is durable: it survives a crash (`kill -9`) of the process.
//! [`Collection`] adds typed access on top of any store; [`Tx`] is the one way the control
//! planes change state (stage, commit, then apply).

mod embedded;
mod mongo;
pub mod secrets;
mod tx;
mod typed;

pub use embedded::EmbeddedStore;
pub use mongo::MongoStore;
pub use tx::Tx;
pub use typed::Collection;

use async_trait::async_trait;
use std::sync::Arc;

/// A stored document.
pub type Document = serde_json::Value;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already present.
    #[error("{collection}/{key} already exists")]
    Conflict { collection: String, key: String },
    /// A collection name or key that the store refuses.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A stored document that does not decode as the expected type.
    #[error("{collection}/{key} does not decode: {reason}")]
    Decode {
        collection: String,
        key: String,
        reason: String,
    },
    /// The backend failed (I/O, connection, database error).
    #[error("store backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Documents in named collections under string keys.
///
/// Collection names are 1–64 characters of `[a-z0-9_]`; keys are 1–512 bytes of UTF-8.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces the document at `key`. Durable once it returns `Ok`.
    async fn put(&self, collection: &str, key: &str, doc: &Document) -> Result<()>;
    /// Inserts the document only if `key` is absent; [`StoreError::Conflict`] otherwise.
    async fn create(&self, collection: &str, key: &str, doc: &Document) -> Result<()>;
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>>;
    /// Removes `key`; `true` if it was there.
    async fn delete(&self, collection: &str, key: &str) -> Result<bool>;
    /// Every document of the collection, ordered by key.
    async fn list(&self, collection: &str) -> Result<Vec<(String, Document)>>;
    /// Writes every document of `batch.puts`, then removes every key of `batch.deletes`.
    /// Durable once it returns `Ok`. The default does one `put` or `delete` after the other
    /// (each idempotent, so retrying a failed batch is safe); the embedded store makes the
    /// batch one transaction, all or nothing, with one sync to disk.
    async fn write_batch(&self, batch: &Batch) -> Result<()> {
        for (collection, key, doc) in &batch.puts {
            self.put(collection, key, doc).await?;
        }
        for (collection, key) in &batch.deletes {
            self.delete(collection, key).await?;
        }
        Ok(())
    }
    /// Which backend this is, for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// Writes and deletes to make together ([`Store::write_batch`]); a key is in at most one of
/// the two lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub puts: Vec<(&'static str, String, Document)>,
    pub deletes: Vec<(&'static str, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// A store shared between tasks.
pub type SharedStore = Arc<dyn Store>;

/// Where a daemon keeps its state, as chosen on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `--data-dir DIR`: the embedded store in `DIR/canopy.redb`.
    Embedded { data_dir: std::path::PathBuf },
    /// `--mongodb-uri URI`: a MongoDB database.
    Mongo { uri: String, database: String },
}

impl StoreConfig {
    /// MongoDB when a URI is given (`--mongodb-uri`), else the embedded store in `data_dir`.
    pub fn choose(mongodb_uri: Option<&str>, database: &str, data_dir: &std::path::Path) -> Self {
        match mongodb_uri {
            Some(uri) => StoreConfig::Mongo {
                uri: uri.to_owned(),
                database: database.to_owned(),
            },
            None => StoreConfig::Embedded {
                data_dir: data_dir.to_owned(),
            },
        }
    }

    pub async fn open(&self) -> Result<SharedStore> {
        Ok(match self {
            StoreConfig::Embedded { data_dir } => Arc::new(EmbeddedStore::open(data_dir).await?),
            StoreConfig::Mongo { uri, database } => {
                Arc::new(MongoStore::connect(uri, database).await?)
            }
        })
    }
}

/// Encodes a value as a stored document; a value serde cannot encode is a [`StoreError::Decode`]
/// naming where it was going.
pub fn encode<T: serde::Serialize>(collection: &str, key: &str, value: &T) -> Result<Document> {
    serde_json::to_value(value).map_err(|e| StoreError::Decode {
        collection: collection.to_owned(),
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })
}

pub(crate) fn check_collection(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            what: "collection",
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return bad("may contain only a-z, 0-9 and _");
    }
    Ok(())
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 512 {
        return Err(StoreError::InvalidName {
            what: "key",
            value: key.chars().take(64).collect(),
            reason: "must be 1 to 512 bytes",
        });
    }
    Ok(())
}

pub(crate) fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}
