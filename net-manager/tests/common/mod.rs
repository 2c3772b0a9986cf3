//! Test hosts for the net manager's data path: network namespaces the test creates (named
//! with the test's prefix, removed with their links on drop), processes started in them
//! (stopped by pid), and HTTP fetches from inside them with busybox.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The test process's own prefix for namespaces, links and tables.
pub fn prefix() -> String {
    format!("cnmt{}", std::process::id() % 100_000)
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub struct Lab {
    names: Vec<String>,
    procs: Vec<Child>,
    www: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        Lab {
            names: Vec::new(),
            procs: Vec::new(),
            www: tempfile::tempdir().unwrap(),
        }
    }

    /// A new network namespace `<prefix>-<role>`; its path.
    pub fn netns(&mut self, role: &str) -> PathBuf {
        let name = format!("{}-{role}", prefix());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name} (the test needs root and iproute2)");
        // Loopback up, as on any host.
        let _ = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status();
        self.names.push(name.clone());
        PathBuf::from(format!("/run/netns/{name}"))
    }

    /// A veth from bridge `bridge` in `from` to `into`, where its end `name` gets
    /// `addr/prefix` and comes up (a host's link to a LAN).
    #[allow(clippy::too_many_arguments)]
    pub fn veth_into(
        &self,
        from: &Path,
        bridge: &str,
        far: &str,
        into: &Path,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) {
        let run = |ns: &Path, args: &[&str]| {
            let ok = Command::new("nsenter")
                .arg(format!("--net={}", ns.display()))
                .arg("ip")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        };
        let into_s = into.display().to_string();
        let into_name = into_s.rsplit('/').next().unwrap().to_owned();
        run(
            from,
            &["link", "add", far, "type", "veth", "peer", "name", name],
        );
        run(from, &["link", "set", far, "master", bridge, "up"]);
        run(from, &["link", "set", name, "netns", &into_name]);
        run(
            into,
            &["addr", "add", &format!("{addr}/{prefix}"), "dev", name],
        );
        run(into, &["link", "set", name, "up"]);
    }

    /// busybox httpd in namespace `ns` on port 80, serving a page that says `page`.
    pub fn web_server(&mut self, ns: &Path, page: &str) {
        let dir = self.www.path().join(page);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), page).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.procs.push(child);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Lab {
    /// The names of the namespaces this lab made.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }
}

/// Whether any of these namespaces is still on the machine.
pub fn namespaces_left(names: &[String]) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|n| names.iter().any(|m| m == n))
}

/// `GET http://addr/` from namespace `ns`: the page, or `None` when nothing answered.
pub fn fetch(ns: &Path, addr: Ipv4Addr) -> Option<String> {
    fetch_within(ns, addr, 5)
}

/// Nothing answers at `addr` from `ns` within a second.
pub fn unreachable(ns: &Path, addr: Ipv4Addr) -> bool {
    fetch_within(ns, addr, 1).is_none()
}

/// `GET http://addr:port/` from namespace `ns` (2 s at most).
pub fn fetch_port(ns: &Path, addr: Ipv4Addr, port: u16) -> Option<String> {
    get(ns, &format!("http://{addr}:{port}/"), 2)
}

fn fetch_within(ns: &Path, addr: Ipv4Addr, secs: u32) -> Option<String> {
    get(ns, &format!("http://{addr}/"), secs)
}

fn get(ns: &Path, url: &str, secs: u32) -> Option<String> {
    let secs = secs.to_string();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args([
            "busybox", "timeout", &secs, "busybox", "wget", "-q", "-O", "-",
        ])
        .arg(url)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Retries while the servers come up.
pub fn fetch_soon(ns: &Path, addr: Ipv4Addr) -> String {
    for _ in 0..50 {
        if let Some(page) = fetch(ns, addr) {
            return page;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing answered at {addr}");
}

/// `ip -o link` in namespace `ns`.
pub fn links_in(ns: &Path) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP connection held open between two namespaces with busybox `nc`: a listener on `port`
/// in the server's namespace writing what it hears to a file, a client connected to
/// `addr:port` whose input the test writes. Both stopped by pid on drop.
pub struct Held {
    server: Child,
    client: Child,
    heard: PathBuf,
    _dir: tempfile::TempDir,
}

impl Held {
    pub fn open(server_ns: &Path, client_ns: &Path, addr: Ipv4Addr, port: u16) -> Held {
        let dir = tempfile::tempdir().unwrap();
        let heard = dir.path().join("heard");
        let server = Command::new("nsenter")
            .arg(format!("--net={}", server_ns.display()))
            .args(["busybox", "nc", "-l", "-p", &port.to_string()])
            // Its input stays open (nc hangs up when its input ends).
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&heard).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let client = Command::new("nsenter")
            .arg(format!("--net={}", client_ns.display()))
            .args(["busybox", "nc", &addr.to_string(), &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Held {
            server,
            client,
            heard,
            _dir: dir,
        }
    }

    /// Sends `line` and waits until the server heard it; `false` if the connection is gone.
    pub fn say(&mut self, line: &str) -> bool {
        use std::io::Write;
        let Some(stdin) = self.client.stdin.as_mut() else {
            return false;
        };
        if stdin.write_all(format!("{line}\n").as_bytes()).is_err() || stdin.flush().is_err() {
            return false;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(5) {
            if self.heard().lines().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    pub fn heard(&self) -> String {
        std::fs::read_to_string(&self.heard).unwrap_or_default()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for c in [&mut self.client, &mut self.server] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
