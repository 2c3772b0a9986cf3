//! WebAssembly modules in wasmtime: from a path and from an HTTP URL, args and env from the
//! SLA, output to the log, exit codes, one-shot completion, memory limit, stop by epoch
//! interruption.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const JOB: &str = "app.ns.mod.ns";

/// Prints its first argument and $GREETING, then exits with the code in $CODE's first digit.
const HELLO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "hello from wasm\n")
  ;; strlen of a NUL-terminated string at $p
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $l
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $l)))
    (local.get $n))
  ;; writes the NUL-terminated string at $p and a newline
  (func $puts (param $p i32)
    (i32.store (i32.const 100) (local.get $p))
    (i32.store (i32.const 104) (call $strlen (local.get $p)))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))
    (i32.store8 (i32.const 120) (i32.const 10))
    (i32.store (i32.const 100) (i32.const 120))
    (i32.store (i32.const 104) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108))))
  (func (export "_start") (local $i i32) (local $n i32) (local $code i32)
    ;; "hello from wasm\n"
    (i32.store (i32.const 100) (i32.const 0))
    (i32.store (i32.const 104) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))
    ;; argv[1], if any
    (drop (call $args_sizes_get (i32.const 200) (i32.const 204)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (if (i32.gt_u (i32.load (i32.const 200)) (i32.const 1))
      (then (call $puts (i32.load (i32.const 1028)))))
    ;; every environment entry; CODE=<digit> sets the exit code
    (drop (call $env_sizes_get (i32.const 200) (i32.const 204)))
    (drop (call $env_get (i32.const 2048) (i32.const 8192)))
    (local.set $n (i32.load (i32.const 200)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (call $puts (i32.load (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 4)))))
      (if (i32.eq (i32.load (i32.load (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 4))))) (i32.const 0x45444f43))
        (then (local.set $code (i32.sub (i32.load8_u (i32.add (i32.load (i32.add (i32.const 2048) (i32.mul (local.get $i) (i32.const 4)))) (i32.const 5))) (i32.const 48)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (call $proc_exit (local.get $code))))
"#;

/// Prints, then spins forever.
const SPIN_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "spinning\n")
  (func (export "_start")
    (i32.store (i32.const 100) (i32.const 0))
    (i32.store (i32.const 104) (i32.const 9))
    (drop (call $fd_write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))
    (loop $l (br $l))))
"#;

/// Grows memory by 100 pages (6.4 MB); exits 7 when that is refused.
const GROW_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 100)) (i32.const -1))
      (then (call $proc_exit (i32.const 7))))))
"#;

fn module(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A broker, a cluster stand-in and an engine offering only wasm, connected.
async fn wasm_only(ns: &Namespace) -> (Broker, Cluster, Engine, tempfile::TempDir) {
    let broker = Broker::start().await;
    let cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Engine::config(&cluster.addr, dir.path(), ns);
    config.runtimes = vec!["wasm".into()];
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;
    (broker, cluster, engine, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_run_log_complete_and_stop() {
    let ns = Namespace::new("wasm");
    let (_broker, mut cluster, engine, dir) = wasm_only(&ns).await;

    // One-shot from a path, exit 0 → COMPLETED; args and env reach the module.
    let hello = module(dir.path(), "hello.wat", HELLO_WAT);
    let mut m = deploy(JOB, 0, "wasm", &hello, &["first-arg"]);
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 0, "RUNNING", SECS_30).await;
    cluster.status(JOB, 0, "COMPLETED", SECS_30).await;
    let log = engine.logs(JOB, 0).await;
    assert!(log.contains("hello from wasm"), "{log}");
    assert!(log.contains("first-arg"), "{log}");
    assert!(
        log.contains("GREETING=hi") && log.contains("HOSTNAME=instance-0"),
        "{log}"
    );

    // The exit code counts: CODE=5 → DEAD "exited with code 5".
    let mut m = deploy(JOB, 1, "wasm", &hello, &[]);
    m.environment = vec!["CODE=5".into()];
    m.one_shot = true;
    cluster.deploy(&m).await;
    let dead = cluster.status(JOB, 1, "DEAD", SECS_30).await;
    assert_eq!(dead.status_detail, "exited with code 5");

    // From an HTTP URL; spins until deleted; the log tail comes with resource reports.
    let server_dir = dir.path().join("www");
    std::fs::create_dir_all(&server_dir).unwrap();
    module(&server_dir, "spin.wat", SPIN_WAT);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/spin.wat", listener.local_addr().unwrap());
    let served = server_dir.clone();
    let http = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/spin.wat",
            axum::routing::get(move || {
                let p = served.join("spin.wat");
                async move { std::fs::read(p).unwrap() }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    cluster.deploy(&deploy(JOB, 2, "wasm", &url, &[])).await;
    cluster.status(JOB, 2, "RUNNING", SECS_30).await;
    cluster.logs_contain(JOB, 2, "spinning", SECS_30).await;
    let r = cluster.last_resources.clone().unwrap();
    let s = r.services.iter().find(|s| s.instance == 2).unwrap();
    assert_eq!(s.virtualization, "wasm");
    let t = std::time::Instant::now();
    cluster.undeploy(JOB, 2).await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );

    // The SLA's memory limit binds: growing past 1 MB is refused.
    let grow = module(dir.path(), "grow.wat", GROW_WAT);
    let mut m = deploy(JOB, 3, "wasm", &grow, &[]);
    m.memory = 1;
    cluster.deploy(&m).await;
    let dead = cluster.status(JOB, 3, "DEAD", SECS_30).await;
    assert_eq!(dead.status_detail, "exited with code 7");
    // Without a limit the same module grows and exits 0.
    let mut m = deploy(JOB, 4, "wasm", &grow, &[]);
    m.memory = 0;
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 4, "COMPLETED", SECS_30).await;

    // Bad modules fail with a reason.
    let junk = module(dir.path(), "junk.wasm", "not a module");
    cluster.deploy(&deploy(JOB, 5, "wasm", &junk, &[])).await;
    let f = cluster.status(JOB, 5, "FAILED", SECS_30).await;
    assert!(
        f.status_detail.contains("not a valid wasm module"),
        "{}",
        f.status_detail
    );
    cluster
        .deploy(&deploy(JOB, 6, "wasm", "/nonexistent/m.wasm", &[]))
        .await;
    let f = cluster.status(JOB, 6, "FAILED", SECS_30).await;
    assert!(
        f.status_detail.contains("no module at"),
        "{}",
        f.status_detail
    );
    cluster
        .deploy(&deploy(JOB, 7, "wasm", "relative.wasm", &[]))
        .await;
    let f = cluster.status(JOB, 7, "FAILED", SECS_30).await;
    assert!(f.status_detail.starts_with("code:"), "{}", f.status_detail);
    let no_start = module(dir.path(), "lib.wat", "(module (func (export \"f\")))");
    cluster
        .deploy(&deploy(JOB, 8, "wasm", &no_start, &[]))
        .await;
    let f = cluster.status(JOB, 8, "FAILED", SECS_30).await;
    assert!(f.status_detail.contains("_start"), "{}", f.status_detail);

    http.abort();
    engine.stop().await;
}

/// The quickstart's ticker sleeps in `poll_oneoff` between lines: it keeps running, keeps
/// printing, and stops within its one-second sleep when deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_module_keeps_running_and_stops() {
    let ns = Namespace::new("wasmsleep");
    let (_broker, mut cluster, engine, dir) = wasm_only(&ns).await;

    let ticker = module(
        dir.path(),
        "ticker.wat",
        include_str!("../../examples/ticker.wat"),
    );
    cluster.deploy(&deploy(JOB, 0, "wasm", &ticker, &[])).await;
    cluster.status(JOB, 0, "RUNNING", SECS_30).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let log = engine.logs(JOB, 0).await;
    assert!(
        log.matches("tick from the canopy wasm demo").count() >= 2,
        "{log}"
    );
    let running = engine.get("/instances").await.1;
    assert!(running.contains("RUNNING"), "{running}");
    let t = std::time::Instant::now();
    cluster.undeploy(JOB, 0).await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    engine.stop().await;
}
