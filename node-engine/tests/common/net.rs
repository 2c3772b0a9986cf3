//! Overlay test hosts: a network namespace of the test's own and the real `net-manager`
//! binary in it (`--same-host`: one worker, no tunnel), driven over its unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace of this test, removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("cne{}{role}", std::process::id() % 100_000);
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success(),
            "ip netns add (the test needs root and iproute2)"
        );
        let _ = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        Netns(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    /// `busybox wget` of `url` from inside this namespace (10 s at most); the page, if any.
    pub fn fetch(&self, url: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .args([
                "busybox", "timeout", "10", "busybox", "wget", "-q", "-O", "-", url,
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fetches `url` until the page holds `text` or `within` passes.
    pub async fn fetch_until(&self, url: &str, text: &str, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.fetch(url).is_some_and(|p| p.contains(text)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The net manager binary (built with `cargo build -p net-manager --bins`) in namespace `ns`.
pub struct NetManager {
    child: Child,
    pub socket: PathBuf,
}

impl NetManager {
    pub fn start(ns: &Netns, dir: &Path) -> NetManager {
        // Beside the test binary's `deps/` (only this binary is needed, not the workspace's).
        let exe = std::env::current_exe().unwrap();
        let mut bin = exe.parent().unwrap().to_path_buf();
        if bin.ends_with("deps") {
            bin.pop();
        }
        let bin = bin.join("net-manager");
        assert!(
            bin.exists(),
            "{} is missing: cargo build -p net-manager --bins",
            bin.display()
        );
        let socket = dir.join("nm.sock");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(bin)
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--data-dir={}", dir.join("nm").display()))
            .arg("--same-host")
            .arg(format!("--bridge={}br", ns.0))
            .arg(format!("--nft-table={}_t", ns.0))
            .arg(format!("--netns-dir={}", dir.join("netns").display()))
            .arg("--remove-on-exit")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no net manager socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NetManager { child, socket }
    }

    pub fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The overlay address of instance `name`, once attached.
    pub fn address(&self, name: &str) -> Option<String> {
        let attached: serde_json::Value =
            serde_json::from_str(&self.curl(&["http://nm/instances"])).unwrap();
        attached
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["address"].as_str())
            .map(str::to_owned)
    }
}

impl Drop for NetManager {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl NetManager {
    /// Publishes `view` to the engine (as a cluster would, on `nodes/<id>/net/view`) and waits
    /// until this net manager shows `applied` in its `GET /view`.
    pub async fn view_from(
        &self,
        cluster: &super::Cluster,
        view: &serde_json::Value,
        applied: &str,
    ) {
        cluster
            .publish_raw(
                canopy_proto::worker::topics::net_view(&super::node_id()),
                view.to_string().into_bytes(),
            )
            .await;
        let start = Instant::now();
        while !self.curl(&["http://nm/view"]).contains(applied) {
            assert!(
                start.elapsed() < super::SECS_30,
                "the view never reached the net manager"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
