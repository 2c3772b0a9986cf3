//! Data written and acknowledged before a `kill -9` of the writing process is there after a
//! restart (embedded store).
//!
//! The writer is this same test binary, re-run with `CANOPY_KILL9_DIR` set: it writes keys
//! 0, 1, 2, … and prints `ACK n` only after `put` returned `Ok`. The parent SIGKILLs it at an
//! arbitrary moment, reopens the store and checks every acknowledged key. Every third write is
//! a [`Batch`] (the document and a second key, and the delete of an earlier second key): an
//! acknowledged batch is there whole.
#![allow(clippy::unwrap_used)] // tests may panic: a panic is a failed test

use canopy_store::{Batch, EmbeddedStore, Store};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "CANOPY_KILL9_DIR";

/// The writer. Ignored in normal runs; the parent runs it explicitly.
#[tokio::test]
#[ignore = "helper process for acknowledged_writes_survive_kill_9"]
async fn kill9_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = EmbeddedStore::open(std::path::Path::new(&dir))
        .await
        .unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let doc = json!({ "n": n, "payload": "x".repeat((n % 512) as usize) });
        let key = format!("{n:08}");
        if n % 3 == 0 {
            let batch = Batch {
                puts: vec![("acked", key.clone(), doc), ("pairs", key, json!(n))],
                deletes: vec![("pairs", format!("{:08}", n.wrapping_sub(3)))],
            };
            store.write_batch(&batch).await.unwrap();
        } else {
            store.put("acked", &key, &doc).await.unwrap();
        }
        writeln!(out, "ACK {n}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill9_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut last_ack = None;
        // Let it write a while (a different amount each round), then kill it mid-stream.
        let target = 150 + round * 170;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("ACK ") {
                let n: u64 = n.parse().unwrap();
                last_ack = Some(n);
                if n >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_ack = last_ack.expect("writer acknowledged nothing");

        let store = EmbeddedStore::open(dir.path()).await.unwrap();
        for n in 0..=last_ack {
            let doc = store.get("acked", &format!("{n:08}")).await.unwrap();
            assert_eq!(
                doc,
                Some(json!({ "n": n, "payload": "x".repeat((n % 512) as usize) })),
                "round {round}: acknowledged write {n} lost (last ack {last_ack})"
            );
        }
        // The batches' second keys: the newest acknowledged batch's (or a later one's, written
        // after the last ack read) is there; in the first round it is the only one left, each
        // batch having deleted the one before.
        let last_batch = last_ack - last_ack % 3;
        let pairs: Vec<u64> = store
            .list("pairs")
            .await
            .unwrap()
            .iter()
            .map(|(k, _)| k.parse().unwrap())
            .collect();
        assert!(
            pairs.iter().any(|k| *k >= last_batch),
            "round {round}: acknowledged batch {last_batch} lost: {pairs:?}"
        );
        if round == 0 {
            assert_eq!(pairs.len(), 1, "a batch's delete was lost: {pairs:?}");
        }
        // Each round restarts the count from 0 over the same keys; the file must stay usable.
        drop(store);
    }
}
