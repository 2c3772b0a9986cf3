//! The embedded store: one redb file, `canopy.redb`, in the data directory. One table per
//! collection, key → JSON bytes. Every write (a single put or delete, or a whole
//! [`Batch`]) is one transaction committed with redb's default `Immediate` durability, so
//! `Ok` means the data is on disk. redb's file lock keeps a
//! second process from opening the same file.

use crate::{Batch, Document, Result, Store, StoreError, backend, check_collection, check_key};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "canopy.redb";
/// redb's page cache (its default is 1 GiB). The daemons keep their state in memory and read
/// the store only when they start, so a large cache holds nothing that is read again: at
/// 10,000 instances the default left a cluster 60 MB larger (248 → 185 MB in the scale bench).
const CACHE_BYTES: usize = 16 << 20;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`. Recovers the file after a crash.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir))
            .await
            .map_err(backend)?
    }

    fn open_blocking(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(backend)?
    }

    fn write(
        db: &Database,
        collection: &str,
        key: &str,
        doc: Option<&[u8]>,
        only_if_absent: bool,
    ) -> Result<bool> {
        let txn = db.begin_write().map_err(backend)?;
        let existed;
        {
            let mut t = txn.open_table(table(collection)).map_err(backend)?;
            existed = t.get(key).map_err(backend)?.is_some();
            if only_if_absent && existed {
                return Err(StoreError::Conflict {
                    collection: collection.to_owned(),
                    key: key.to_owned(),
                });
            }
            match doc {
                Some(bytes) => {
                    t.insert(key, bytes).map_err(backend)?;
                }
                None => {
                    t.remove(key).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)?;
        Ok(existed)
    }
}

impl EmbeddedStore {
    async fn write_doc(
        &self,
        collection: &str,
        key: &str,
        doc: &Document,
        only_if_absent: bool,
    ) -> Result<()> {
        check_collection(collection)?;
        check_key(key)?;
        let (c, k, bytes) = (collection.to_owned(), key.to_owned(), doc.to_string());
        self.blocking(move |db| Self::write(db, &c, &k, Some(bytes.as_bytes()), only_if_absent))
            .await
            .map(|_| ())
    }
}

fn decode(collection: &str, key: &str, bytes: &[u8]) -> Result<Document> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        collection: collection.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put(&self, collection: &str, key: &str, doc: &Document) -> Result<()> {
        self.write_doc(collection, key, doc, false).await
    }

    async fn create(&self, collection: &str, key: &str, doc: &Document) -> Result<()> {
        self.write_doc(collection, key, doc, true).await
    }

    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>> {
        check_collection(collection)?;
        check_key(key)?;
        let (c, k) = (collection.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = match txn.open_table(table(&c)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            match t.get(k.as_str()).map_err(backend)? {
                Some(v) => decode(&c, &k, v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn delete(&self, collection: &str, key: &str) -> Result<bool> {
        check_collection(collection)?;
        check_key(key)?;
        let (c, k) = (collection.to_owned(), key.to_owned());
        self.blocking(move |db| Self::write(db, &c, &k, None, false))
            .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Document)>> {
        check_collection(collection)?;
        let c = collection.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let t = match txn.open_table(table(&c)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(backend(e)),
            };
            let mut out = Vec::new();
            for entry in t.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let key = k.value().to_owned();
                let doc = decode(&c, &key, v.value())?;
                out.push((key, doc));
            }
            Ok(out)
        })
        .await
    }

    async fn write_batch(&self, batch: &Batch) -> Result<()> {
        for (collection, key, _) in &batch.puts {
            check_collection(collection)?;
            check_key(key)?;
        }
        for (collection, key) in &batch.deletes {
            check_collection(collection)?;
            check_key(key)?;
        }
        let puts: Vec<(&'static str, String, String)> = batch
            .puts
            .iter()
            .map(|(c, k, doc)| (*c, k.clone(), doc.to_string()))
            .collect();
        let deletes = batch.deletes.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            for (collection, key, bytes) in &puts {
                let mut t = txn.open_table(table(collection)).map_err(backend)?;
                t.insert(key.as_str(), bytes.as_bytes()).map_err(backend)?;
            }
            for (collection, key) in &deletes {
                let mut t = txn.open_table(table(collection)).map_err(backend)?;
                t.remove(key.as_str()).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
