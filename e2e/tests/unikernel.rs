//! Unikernels through `canopy up`, with the real binaries: the workers offer `unikernel` by
//! default where QEMU is installed; an SLA with `virtualization: unikernel` whose `code` is a
//! tiny kernel served over HTTP on 127.0.0.1 runs under QEMU, its console shows in
//! `canopy logs`, and deleting it stops QEMU and leaves nothing of it in the worker's data
//! directory. Without QEMU, `canopy up` still comes up and says unikernels are not offered.
#![allow(clippy::unwrap_used)]

use canopy_e2e::unikernel::{
    FileServer, QEMU, kill_recorded_vms, qemu_installed, qemu_pid, runs_vm, tiny_kernel, unikernel,
    vm_dir,
};
use canopy_e2e::{Stack, sla};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every path under `dir` (files and directories), relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Kills what a failed test's stack still runs (by the pids QEMU wrote), before the stack goes.
struct VmGuard<'a>(&'a Stack);

impl Drop for VmGuard<'_> {
    fn drop(&mut self) {
        kill_recorded_vms(self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unikernel_runs_logs_and_leaves_nothing_behind() {
    if !qemu_installed() {
        eprintln!(
            "SKIPPED: {QEMU} is not installed, so the workers offer no unikernels (scripts/test.sh installs it)"
        );
        return;
    }
    let kernels = tempfile::tempdir().unwrap();
    let kernel = tiny_kernel(kernels.path(), "tiny", "TINY-E2E", "halt");
    let server = FileServer::start(kernels.path()).await;
    // The default runtimes: container, wasm and unikernel. The tiny kernel ignores the power
    // button, so a stop waits out the grace before QEMU is told to quit.
    let stack = Stack::up_with(1, &["--node-arg=--stop-grace-secs=1"]).await;
    let _guard = VmGuard(&stack);
    let out = stack.output();
    assert!(out.contains(&format!("unikernels   {QEMU}")), "{out}");
    let nodes = stack.get("/api/nodes").await;
    assert!(
        nodes[0]["virtualizations"]
            .as_array()
            .unwrap()
            .contains(&Value::from("unikernel")),
        "{nodes}"
    );

    let ids = stack
        .deploy(&sla(
            "uni",
            vec![unikernel("tiny", &server.url(&kernel), &["hello", "e2e"])],
        ))
        .await;
    let id = ids[0].clone();
    stack.wait_all(&id, 1, "RUNNING").await;
    let instance = "uni.e2e.tiny.e2e.instance.0";
    let pid = qemu_pid(&stack, 1, instance).expect("QEMU wrote its pid");
    assert!(runs_vm(pid, instance), "QEMU {pid} runs {instance}");

    // The serial console, through the worker's report and the root, in the real CLI.
    let start = Instant::now();
    let logs = loop {
        let logs = stack.cli_ok(&["logs", "uni.tiny"]).await;
        if logs.contains("TINY-E2E hello e2e") || start.elapsed() > Duration::from_secs(30) {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(logs.contains("TINY-E2E hello e2e"), "logs: {logs:?}");

    // Deleting the service stops the VM; nothing of the instance stays on the worker.
    let worker = stack.dir.path().join("up/worker1");
    let before = tree(&worker);
    assert!(before.iter().any(|p| p.contains(instance)), "{before:#?}");
    stack.cli_ok(&["delete", "service", &id]).await;
    let start = Instant::now();
    while runs_vm(pid, instance) || !tree(&vm_dir(&stack, 1)).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "QEMU {pid} still runs or its directory stays: {:?}\n{}",
            tree(&vm_dir(&stack, 1)),
            stack.daemon_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} is gone (not even a zombie)"
    );
    let left = tree(&worker);
    let of_instance: Vec<&String> = left.iter().filter(|p| p.contains(instance)).collect();
    assert!(of_instance.is_empty(), "left behind: {of_instance:?}");
    assert!(
        tree(&worker.join("unikernel/qmp")).is_empty(),
        "QMP sockets left: {:?}",
        tree(&worker.join("unikernel/qmp"))
    );
    let logs_dir = tree(&worker.join("logs"));
    assert!(logs_dir.is_empty(), "instance logs left: {logs_dir:?}");
}

/// No QEMU on `PATH`: the stack still comes up with containers and wasm, says unikernels are
/// not offered, and a unikernel SLA is refused for want of the virtualization, not attempted.
#[tokio::test(flavor = "multi_thread")]
async fn without_qemu_canopy_up_runs_the_rest_and_says_so() {
    // The daemons are started by absolute path; with --no-overlay they run nothing from PATH.
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let stack = Stack::up_with_env(1, &[], &[("PATH", &path)]).await;
    let out = stack.output();
    assert!(
        out.contains(&format!(
            "unikernels   not offered: {QEMU} is not installed"
        )),
        "{out}"
    );
    let nodes = stack.get("/api/nodes").await;
    let offered: Vec<&str> = nodes[0]["virtualizations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        offered.contains(&"container") && !offered.contains(&"unikernel"),
        "{nodes}"
    );
    let ids = stack
        .deploy(&sla(
            "nouni",
            vec![unikernel("tiny", "http://127.0.0.1:1/k.tar.gz", &[])],
        ))
        .await;
    stack
        .wait_instances(
            &ids[0],
            "refused for want of unikernels",
            Duration::from_secs(30),
            |l| {
                l.len() == 1
                    && l[0]["status_detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("virtualization"))
            },
        )
        .await;
}
