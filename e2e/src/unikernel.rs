//! Unikernels for the end-to-end tests and benchmarks: tiny PVH kernels built offline by
//! `scripts/unikernel-image.sh tiny`, served over HTTP on loopback (as a user would serve
//! them), and what the worker's QEMU runtime keeps under its data directory
//! (`<up>/workerN/unikernel/vm/<instance>/pid`, QEMU's own pid file).

use crate::Stack;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The QEMU the node engine looks for on this architecture.
pub const QEMU: &str = if cfg!(target_arch = "aarch64") {
    "qemu-system-aarch64"
} else {
    "qemu-system-x86_64"
};

/// Whether QEMU is on `PATH` (where the node engine looks).
pub fn qemu_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(QEMU).is_file()))
}

/// Builds `DIR/NAME.tar.gz`: a kernel that prints `MARKER` and its command line on COM1, then
/// ends as `ending` says (`halt`, `reset`, `exit:N`). Returns the archive's path.
pub fn tiny_kernel(dir: &Path, name: &str, marker: &str, ending: &str) -> PathBuf {
    let out = dir.join(format!("{name}.tar.gz"));
    let run = Command::new("bash")
        .arg(crate::repo().join("scripts/unikernel-image.sh"))
        .arg("tiny")
        .arg(&out)
        .args([marker, ending])
        .stdout(Stdio::null())
        .output()
        .expect("bash runs");
    assert!(
        run.status.success(),
        "building {}: {}",
        out.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// An HTTP server on 127.0.0.1 serving the files of one directory; stopped on drop.
pub struct FileServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    pub async fn start(dir: &Path) -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let dir = dir.to_owned();
        let app = axum::Router::new().route(
            "/{file}",
            axum::routing::get(move |axum::extract::Path(f): axum::extract::Path<String>| {
                let found = (!f.contains('/') && !f.starts_with('.'))
                    .then(|| std::fs::read(dir.join(&f)).ok())
                    .flatten();
                async move {
                    match found {
                        Some(b) => (axum::http::StatusCode::OK, b),
                        None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileServer { base, task }
    }

    /// The URL of `file` in the served directory.
    pub fn url(&self, file: &Path) -> String {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        format!("{}/{name}", self.base)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A unikernel microservice booting `code` with `cmd` on its kernel command line.
pub fn unikernel(name: &str, code: &str, cmd: &[&str]) -> Value {
    json!({
        "microservice_name": name,
        "microservice_namespace": "e2e",
        "virtualization": "unikernel",
        "code": code,
        "cmd": cmd,
        "memory": 32,
        "vcpus": 1,
    })
}

/// `<up>/workerN/unikernel/vm/`: one directory per VM the worker's QEMU runtime holds.
pub fn vm_dir(stack: &Stack, worker: u32) -> PathBuf {
    stack
        .dir
        .path()
        .join(format!("up/worker{worker}/unikernel/vm"))
}

/// The pid QEMU wrote for `instance` (`app.appns.svc.svcns.instance.N`) on worker `worker`.
pub fn qemu_pid(stack: &Stack, worker: u32, instance: &str) -> Option<i32> {
    std::fs::read_to_string(vm_dir(stack, worker).join(instance).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether process `pid` still exists (a zombie counts as gone).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next()),
            Some('Z') | Some('X') | None
        )
    })
}

/// Whether process `pid` is the QEMU of VM `instance` (its `-name instance,...` argument).
pub fn runs_vm(pid: i32, instance: &str) -> bool {
    let want = format!("{instance},");
    running(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a.starts_with(want.as_bytes())))
}

/// Kills (SIGKILL, by the pid QEMU wrote) every VM still recorded on the stack's workers: for a
/// test that failed before its stack removed them.
pub fn kill_recorded_vms(stack: &Stack) {
    for w in 1..=stack.workers {
        for e in std::fs::read_dir(vm_dir(stack, w))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only a process that is that VM's QEMU (`-name <instance>,...`), not a reused pid.
            if let Some(pid) = qemu_pid(stack, w, &name).filter(|&p| runs_vm(p, &name)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
