//! A burst of deploys, more than the MQTT client's request queue holds, reaches the cluster as
//! every status change of every instance: none is dropped while the event loop catches up (the
//! engine keeps them in its outbox). One virtual worker (`--bench-virtual-workers 1`: the real
//! engine over the simulated runtime) against Mosquitto and the cluster stand-in.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::BTreeSet;

const JOB: &str = "app.ns.burst.ns";
const INSTANCES: u32 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deploys_loses_no_status() {
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let _engine = spawn_engine_binary(
        &cluster.addr,
        dir.path(),
        free_port(),
        &["--bench-virtual-workers", "1"],
    );
    cluster.wait_worker(SECS_30).await;
    for n in 0..INSTANCES {
        cluster
            .deploy(&deploy(JOB, n, "container", "local/sim:1", &[]))
            .await;
    }
    let (mut creating, mut running) = (BTreeSet::new(), BTreeSet::new());
    cluster
        .until(SECS_30 * 2, "every instance RUNNING", |h| {
            if let Heard::Job(j) = h {
                match j.status.as_str() {
                    "CREATING" => creating.insert(j.instance),
                    "RUNNING" => running.insert(j.instance),
                    _ => false,
                };
            }
            running.len() == INSTANCES as usize
        })
        .await;
    assert_eq!(
        creating.len(),
        INSTANCES as usize,
        "every CREATING arrived too"
    );
}
