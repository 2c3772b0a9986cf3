//! One test suite, run against both store implementations: the embedded redb file and MongoDB
//! (in CI: PyPI `nx-27017` on loopback, started by `scripts/test.sh`, which exports
//! `CANOPY_TEST_MONGODB_URI`).
#![allow(clippy::unwrap_used)] // tests may panic: a panic is a failed test

use canopy_store::{Batch, Collection, EmbeddedStore, SharedStore, Store, StoreConfig, StoreError};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};

/// Opens stores that all see the same data, so a test can "restart" by opening again.
trait Backend {
    async fn open(&self) -> SharedStore;
}

struct Embedded(tempfile::TempDir);

impl Backend for Embedded {
    async fn open(&self) -> SharedStore {
        StoreConfig::Embedded {
            data_dir: self.0.path().to_owned(),
        }
        .open()
        .await
        .unwrap()
    }
}

struct Mongo(String);

impl Backend for Mongo {
    async fn open(&self) -> SharedStore {
        let uri = std::env::var("CANOPY_TEST_MONGODB_URI").unwrap_or_else(|_| {
            panic!(
                "CANOPY_TEST_MONGODB_URI is not set: run the tests through scripts/test.sh, \
                 which starts nx-27017 on loopback, or point it at a MongoDB you own"
            )
        });
        StoreConfig::Mongo {
            uri,
            database: self.0.clone(),
        }
        .open()
        .await
        .unwrap()
    }
}

fn embedded() -> Embedded {
    Embedded(tempfile::tempdir().unwrap())
}

/// A fresh database per test, so tests do not see each other's data.
fn mongo() -> Mongo {
    static N: AtomicU32 = AtomicU32::new(0);
    Mongo(format!(
        "canopy_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

async fn put_get_replace(b: impl Backend) {
    let s = b.open().await;
    assert_eq!(s.get("apps", "a1").await.unwrap(), None);
    let doc = json!({"name": "web", "n": 3, "ratio": 0.5, "tags": ["x", "y"], "nested": {"ok": true, "none": null}});
    s.put("apps", "a1", &doc).await.unwrap();
    assert_eq!(s.get("apps", "a1").await.unwrap(), Some(doc));
    let doc2 = json!({"name": "web", "n": 4});
    s.put("apps", "a1", &doc2).await.unwrap();
    assert_eq!(s.get("apps", "a1").await.unwrap(), Some(doc2));
    // collections are separate namespaces
    assert_eq!(s.get("services", "a1").await.unwrap(), None);
}

async fn create_refuses_duplicates(b: impl Backend) {
    let s = b.open().await;
    s.create("users", "admin", &json!({"role": "admin"}))
        .await
        .unwrap();
    match s.create("users", "admin", &json!({"role": "user"})).await {
        Err(StoreError::Conflict { collection, key }) => {
            assert_eq!((collection.as_str(), key.as_str()), ("users", "admin"))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        s.get("users", "admin").await.unwrap(),
        Some(json!({"role": "admin"}))
    );
}

async fn delete_reports_presence(b: impl Backend) {
    let s = b.open().await;
    s.put("nodes", "n1", &json!(1)).await.unwrap();
    assert!(s.delete("nodes", "n1").await.unwrap());
    assert!(!s.delete("nodes", "n1").await.unwrap());
    assert_eq!(s.get("nodes", "n1").await.unwrap(), None);
    assert!(!s.delete("never_used", "x").await.unwrap());
}

async fn list_is_ordered_by_key(b: impl Backend) {
    let s = b.open().await;
    assert!(s.list("instances").await.unwrap().is_empty());
    for k in ["b", "a", "c/1", "A", "c"] {
        s.put("instances", k, &json!({ "k": k })).await.unwrap();
    }
    let keys: Vec<String> = s
        .list("instances")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, d)| {
            assert_eq!(d, json!({ "k": k }));
            k
        })
        .collect();
    assert_eq!(keys, ["A", "a", "b", "c", "c/1"]);
}

async fn survives_reopen(b: impl Backend) {
    {
        let s = b.open().await;
        s.put("clusters", "c1", &json!({"name": "munich"}))
            .await
            .unwrap();
        s.put("clusters", "c2", &json!({"name": "berlin"}))
            .await
            .unwrap();
        s.delete("clusters", "c2").await.unwrap();
    }
    let s = b.open().await;
    assert_eq!(
        s.list("clusters").await.unwrap(),
        vec![("c1".to_owned(), json!({"name": "munich"}))]
    );
}

async fn refuses_bad_names(b: impl Backend) {
    let s = b.open().await;
    for bad in ["", "Apps", "a-b", "a.b", "$x"] {
        assert!(
            matches!(
                s.put(bad, "k", &json!(1)).await,
                Err(StoreError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.put("ok", "", &json!(1)).await,
        Err(StoreError::InvalidName { .. })
    ));
    assert!(matches!(
        s.get("ok", &"k".repeat(513)).await,
        Err(StoreError::InvalidName { .. })
    ));
}

async fn typed_collections(b: impl Backend) {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Node {
        name: String,
        vcpus: u32,
    }
    let s = b.open().await;
    let nodes: Collection<Node> = Collection::new(s.clone(), "nodes");
    let n = Node {
        name: "w1".into(),
        vcpus: 4,
    };
    nodes.put("w1", &n).await.unwrap();
    assert_eq!(nodes.get("w1").await.unwrap(), Some(n));
    // A document of another shape is a decode error naming the key, not a panic.
    s.put("nodes", "junk", &json!({"name": 5})).await.unwrap();
    match nodes.get("junk").await {
        Err(StoreError::Decode { key, .. }) => assert_eq!(key, "junk"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

async fn concurrent_writers(b: impl Backend) {
    let s = b.open().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                s.put("load", &format!("{t:02}-{i:03}"), &json!(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.list("load").await.unwrap().len(), 200);
    // exactly one of many concurrent creates of the same key wins
    let mut creates = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        creates.push(tokio::spawn(async move {
            s.create("race", "only", &json!(t)).await.is_ok()
        }));
    }
    let mut wins = 0;
    for c in creates {
        wins += usize::from(c.await.unwrap());
    }
    assert_eq!(wins, 1);
}

/// The keys of `collection`, in order.
async fn keys(s: &dyn Store, collection: &str) -> Vec<String> {
    let docs = s.list(collection).await.unwrap();
    docs.into_iter().map(|(k, _)| k).collect()
}

async fn batches_write_and_delete(b: impl Backend) {
    let s = b.open().await;
    s.put("apps", "old", &json!("gone")).await.unwrap();
    s.put("apps", "kept", &json!("kept")).await.unwrap();
    let batch = Batch {
        puts: vec![
            ("apps", "a".into(), json!({"n": 1})),
            ("services", "s".into(), json!([1, 2])),
        ],
        deletes: vec![("apps", "old".into()), ("apps", "never-there".into())],
    };
    s.write_batch(&batch).await.unwrap();
    s.write_batch(&Batch::default()).await.unwrap();
    drop(s);
    let s = b.open().await;
    let apps = keys(&*s, "apps").await;
    assert_eq!(apps, vec!["a", "kept"]);
    assert_eq!(s.get("services", "s").await.unwrap(), Some(json!([1, 2])));
    let bad = Batch {
        puts: vec![("Bad Name", "k".into(), json!(1))],
        deletes: vec![],
    };
    assert!(matches!(
        s.write_batch(&bad).await,
        Err(StoreError::InvalidName { .. })
    ));
}

macro_rules! suite {
    ($backend:ident: $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$backend()).await;
                }
            )+
        }
    };
}

suite!(embedded: put_get_replace, create_refuses_duplicates, delete_reports_presence,
    list_is_ordered_by_key, survives_reopen, refuses_bad_names, typed_collections, concurrent_writers,
    batches_write_and_delete);
suite!(mongo: put_get_replace, create_refuses_duplicates, delete_reports_presence,
    list_is_ordered_by_key, survives_reopen, refuses_bad_names, typed_collections, concurrent_writers,
    batches_write_and_delete);

#[tokio::test]
async fn embedded_store_is_one_file_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(&dir.path().join("state"))
        .await
        .unwrap();
    s.put("x", "k", &json!(1)).await.unwrap();
    assert_eq!(s.path(), dir.path().join("state/canopy.redb"));
    assert!(s.path().is_file());
    assert_eq!(s.backend(), "embedded");
}

#[tokio::test]
async fn an_embedded_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path()).await.unwrap();
    s.put("apps", "stays", &json!(1)).await.unwrap();
    let half_bad = Batch {
        puts: vec![
            ("apps", "first".into(), json!(1)),
            ("apps", String::new(), json!(2)),
        ],
        deletes: vec![("apps", "stays".into())],
    };
    assert!(s.write_batch(&half_bad).await.is_err());
    let apps = keys(&s, "apps").await;
    assert_eq!(apps, vec!["stays"], "a refused batch wrote nothing");
}
