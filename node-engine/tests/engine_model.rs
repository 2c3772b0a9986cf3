//! The engine over the simulated runtime (which outlives an engine, as containerd does):
//! no workload is ever left that the engine does not track.
//!
//! - A shutdown while a delete is in flight waits for it; with `--remove-on-exit` nothing is
//!   left in the runtime. A second delete waits for the first.
//! - The periodic check removes and counts workloads nothing tracks.
//! - Property style: random sequences of deploy, redeploy, crash, delete, graceful stop
//!   (during a delete, too) and kill -9 + restart. At every quiet point the workloads the
//!   runtime holds are exactly those the engine tracks as running; after deleting everything
//!   both are empty.

use canopy_core::Virtualization;
use canopy_proto::worker::{DeployMessage, JobStatus};
use node_engine::engine::{Engine, EngineConfig, runtime_id};
use node_engine::runtime::Runtime;
use node_engine::runtime::simulated::SimulatedRuntime;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

const GRACE: Duration = Duration::from_millis(30);
const SERVICES: u32 = 4;

fn job(i: u32) -> String {
    format!("app.test.svc{i}.test")
}

fn id(i: u32) -> String {
    runtime_id(&format!("{}.instance.0", job(i)))
}

fn deploy_msg(i: u32, version: u32, one_shot: bool) -> DeployMessage {
    serde_json::from_value(json!({
        "_id": format!("svc{i:04}"), "job_name": job(i), "instance_number": 0,
        "image": "simulated", "virtualization": "container",
        "cmd": ["serve", format!("v{version}")], "one_shot": one_shot,
    }))
    .expect("a deploy message")
}

/// One engine process: its own tokio runtime, so dropping it is a kill -9 (every task of the
/// process dies at once, nothing is cleaned up).
struct Process {
    tokio: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    _updates: UnboundedReceiver<JobStatus>,
}

/// The machine: a runtime and a data directory that outlive engine processes.
struct Machine {
    runtime: Arc<SimulatedRuntime>,
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            runtime: Arc::new(SimulatedRuntime::ignoring_sigterm(
                Virtualization::Container,
            )),
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// Starts an engine process (which recovers what is recorded).
    fn boot(&self) -> Process {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (engine, updates) = tokio.block_on(async {
            let store = canopy_store::StoreConfig::choose(None, "", self.dir.path())
                .open()
                .await
                .expect("the store opens");
            let (engine, updates) = Engine::new(
                vec![self.runtime.clone() as Arc<dyn Runtime>],
                store,
                EngineConfig {
                    log_dir: self.dir.path().join("logs"),
                    stop_grace: GRACE,
                    public_ip: "127.0.0.1".into(),
                    overlay: None,
                },
            );
            engine.recover().await.expect("recovery");
            (engine, updates)
        });
        Process {
            tokio,
            engine,
            _updates: updates,
        }
    }

    fn held(&self) -> Vec<String> {
        let mut v = futures::executor::block_on(self.runtime.list()).expect("a list");
        v.sort();
        v
    }
}

impl Process {
    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.tokio.block_on(f)
    }

    /// A delete sent and left in flight (as the uplink spawns it), given time to begin.
    fn delete_in_flight(&self, i: u32) {
        let engine = self.engine.clone();
        self.tokio
            .spawn(async move { engine.delete(&job(i), 0).await });
        self.run(async { tokio::time::sleep(Duration::from_millis(5)).await });
    }

    /// Graceful stop (SIGTERM): the engine's own shutdown, then the process ends.
    fn stop(self, remove: bool) {
        self.run(self.engine.shutdown(remove));
    }

    /// kill -9: the process ends with nothing cleaned up.
    fn kill(self) {
        drop(self);
    }
}

/// Waits until the runtime holds exactly what the engine tracks as running; panics with both
/// if that does not come within 3 s.
fn assert_quiet(m: &Machine, p: &Process, context: &str) {
    let start = Instant::now();
    loop {
        p.run(p.engine.settled());
        let tracked = p.run(p.engine.running_workloads());
        let held = m.held();
        if tracked == held {
            return;
        }
        if start.elapsed() > Duration::from_secs(3) {
            panic!("{context}: the runtime holds {held:?} but the engine tracks {tracked:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_running(m: &Machine, i: u32) {
    let start = Instant::now();
    while !m.held().contains(&id(i)) {
        assert!(start.elapsed() < Duration::from_secs(3), "svc{i} never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_shutdown_during_a_delete_waits_for_it_and_leaves_nothing() {
    let m = Machine::new();
    let p = m.boot();
    p.run(p.engine.deploy(deploy_msg(0, 0, false))).unwrap();
    wait_running(&m, 0);
    p.delete_in_flight(0);
    // The stop takes the whole grace (SIGTERM is ignored): the delete is still under way.
    assert_eq!(m.held(), vec![id(0)]);
    p.stop(true);
    assert!(m.held().is_empty(), "left behind: {:?}", m.held());
    let p = m.boot();
    assert!(p.run(p.engine.instances()).is_empty());
}

#[test]
fn a_graceful_stop_without_removal_finishes_the_delete_in_flight() {
    let m = Machine::new();
    let p = m.boot();
    p.run(p.engine.deploy(deploy_msg(0, 0, false))).unwrap();
    p.run(p.engine.deploy(deploy_msg(1, 0, false))).unwrap();
    wait_running(&m, 0);
    wait_running(&m, 1);
    p.delete_in_flight(0);
    p.stop(false);
    // The deleted one is gone; the other keeps running for the next engine.
    assert_eq!(m.held(), vec![id(1)]);
    let p = m.boot();
    assert_quiet(&m, &p, "after the restart");
    assert_eq!(p.run(p.engine.running_workloads()), vec![id(1)]);
}

#[test]
fn a_second_delete_waits_for_the_first() {
    let m = Machine::new();
    let p = m.boot();
    p.run(p.engine.deploy(deploy_msg(0, 0, false))).unwrap();
    wait_running(&m, 0);
    p.delete_in_flight(0);
    p.run(p.engine.delete(&job(0), 0));
    assert!(
        m.held().is_empty(),
        "the second delete returned while the workload still ran"
    );
}

#[test]
fn workloads_nothing_tracks_are_removed_and_counted() {
    let m = Machine::new();
    let p = m.boot();
    p.run(p.engine.deploy(deploy_msg(0, 0, false))).unwrap();
    wait_running(&m, 0);
    let stray = node_engine::runtime::Workload {
        id: "stray".into(),
        name: "stray".into(),
        instance: canopy_core::InstanceNumber(0),
        spec: deploy_msg(1, 0, false).parse().unwrap().spec,
        log_path: m.dir.path().join("stray.log"),
        netns: None,
        resolv_conf: None,
        overlay: None,
    };
    p.run(m.runtime.start(&stray)).unwrap();
    assert_eq!(p.run(p.engine.remove_untracked()), vec!["stray".to_owned()]);
    assert_eq!(m.held(), vec![id(0)], "the tracked workload is left alone");
    assert!(p.run(p.engine.remove_untracked()).is_empty());
    let metrics = p.engine.metrics.render();
    assert!(
        metrics.contains(r#"canopy_node_untracked_workloads_removed_total{runtime="container"} 1"#),
        "{metrics}"
    );
}

/// xorshift64*: a small, seeded generator, so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_histories_never_leave_an_untracked_workload() {
    for seed in 1..=16u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let m = Machine::new();
        let mut p = m.boot();
        let mut history = Vec::new();
        for step in 0..40 {
            let i = rng.below(u64::from(SERVICES)) as u32;
            let op = rng.below(100);
            let what = match op {
                0..=29 => {
                    let one_shot = rng.below(4) == 0;
                    p.run(p.engine.deploy(deploy_msg(i, 0, one_shot))).unwrap();
                    format!("deploy svc{i} (one-shot {one_shot})")
                }
                30..=39 => {
                    p.run(
                        p.engine
                            .deploy(deploy_msg(i, 1 + rng.below(3) as u32, false)),
                    )
                    .unwrap();
                    format!("redeploy svc{i} changed")
                }
                40..=54 => {
                    let code = rng.below(2) as i32;
                    m.runtime.exit(&id(i), code);
                    format!("svc{i} exits with {code}")
                }
                55..=69 => {
                    p.run(p.engine.delete(&job(i), 0));
                    format!("delete svc{i}")
                }
                70..=79 => {
                    let remove = rng.below(2) == 0;
                    p.delete_in_flight(i);
                    p.stop(remove);
                    if remove {
                        assert!(
                            m.held().is_empty(),
                            "seed {seed}: a stop with removal left {:?}",
                            m.held()
                        );
                    }
                    p = m.boot();
                    format!("delete svc{i} then graceful stop (remove {remove}), restart")
                }
                80..=87 => {
                    p.stop(false);
                    p = m.boot();
                    "graceful restart".to_owned()
                }
                _ => {
                    if rng.below(2) == 0 {
                        p.delete_in_flight(i);
                    }
                    p.kill();
                    p = m.boot();
                    "kill -9 and restart".to_owned()
                }
            };
            history.push(what);
            assert_quiet(
                &m,
                &p,
                &format!("seed {seed}, step {step}, history {history:?}"),
            );
        }
        // Delete everything: both sides end empty.
        for v in p.run(p.engine.instances()) {
            p.run(p.engine.delete(&v.job_name, v.instance_number));
        }
        assert!(p.run(p.engine.instances()).is_empty(), "seed {seed}");
        assert!(m.held().is_empty(), "seed {seed}: left {:?}", m.held());
        p.stop(false);
    }
}
