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

/// The real `net-manager` binary, run inside a namespace of the test, driven through its
/// socket with curl. Its links and table are named with the test's prefix and `tag`: bridge
/// `<prefix>b<tag>`, tunnel `<prefix>x<tag>`, table `<prefix>_t<tag>`. Stopped by pid.
pub struct NetManager {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl NetManager {
    pub fn bridge(tag: &str) -> String {
        format!("{}b{tag}", prefix())
    }

    pub fn tunnel(tag: &str) -> String {
        format!("{}x{tag}", prefix())
    }

    pub fn table(tag: &str) -> String {
        format!("{}_t{tag}", prefix())
    }

    /// Starts it in `ns` with its state under `dir` (socket, data, namespaces, log) and
    /// `extra` flags (which may name another `--tunnel`), and waits until it answers.
    pub fn start(ns: &Path, dir: &Path, tag: &str, extra: &[String]) -> NetManager {
        let socket = dir.join("nm.sock");
        let log = dir.join("nm.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.display()))
            .arg(env!("CARGO_BIN_EXE_net-manager"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--bridge={}", Self::bridge(tag)))
            .arg(format!("--nft-table={}", Self::table(tag)))
            .arg(format!("--netns-dir={}", dir.join("netns").display()));
        if !extra.iter().any(|a| a.starts_with("--tunnel")) {
            cmd.arg(format!("--tunnel={}", Self::tunnel(tag)));
        }
        let child = cmd
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut d = NetManager { child, socket, log };
        let start = std::time::Instant::now();
        while d.call("GET", "/health", None).0 != 200 {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the net manager stopped ({status}):\n{}", d.log_text());
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "the net manager did not answer:\n{}",
                d.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One API call with curl over the socket: status and JSON answer (`Null` if none).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("--unix-socket")
            .arg(&self.socket);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d"])
                .arg(b.to_string());
        }
        let out = cmd.arg(format!("http://nm{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `PUT /node`, which must succeed.
    pub fn configure(&self, subnet: &str, underlay: &str) {
        let body = serde_json::json!({"subnet": subnet, "underlay": underlay});
        let (status, v) = self.call("PUT", "/node", Some(&body));
        assert_eq!(status, 204, "PUT /node {body}: {v}");
    }

    /// `PUT /view`, which must succeed.
    pub fn view(&self, view: &serde_json::Value) {
        let (status, v) = self.call("PUT", "/view", Some(view));
        assert_eq!(status, 204, "PUT /view {view}: {v}");
    }

    /// `POST /instances` for `name`, which must succeed: its address and namespace.
    pub fn attach(&self, name: &str) -> (String, PathBuf) {
        let (status, v) = self.call(
            "POST",
            "/instances",
            Some(&serde_json::json!({"name": name})),
        );
        assert_eq!(status, 200, "attach {name}: {v}");
        (
            v["address"].as_str().unwrap().to_owned(),
            PathBuf::from(v["netns"].as_str().unwrap()),
        )
    }

    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://nm/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kill -9, by pid.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, by pid, and the exit awaited.
    pub fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for NetManager {
    fn drop(&mut self) {
        // A test that failed part way: stop it (a no-op once it was waited for).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cmd args…` inside namespace `ns`.
pub fn in_ns(ns: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display())).args(args);
    c
}

/// The output of `cmd args…` inside namespace `ns`.
pub fn run_in(ns: &Path, args: &[&str]) -> String {
    let out = in_ns(ns, args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iptables -P FORWARD DROP` in namespace `ns` (what Docker does to its host).
pub fn forward_policy_drop(ns: &Path) {
    let ok = in_ns(ns, &["iptables", "-w", "-P", "FORWARD", "DROP"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "iptables -P FORWARD DROP in {}", ns.display());
    assert!(iptables_rules(ns).contains("-P FORWARD DROP"));
}

/// `iptables -S` in namespace `ns`: every chain's rules.
pub fn iptables_rules(ns: &Path) -> String {
    run_in(ns, &["iptables", "-w", "-S"])
}

/// The rules of `iptables -S` in `ns` tagged with link `link`'s comment.
pub fn tagged_rules(ns: &Path, link: &str) -> Vec<String> {
    let tag = format!("\"{}\"", net_manager::firewall::comment(link));
    iptables_rules(ns)
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// Link `link`'s two rules are at the top of `FORWARD` in `ns`, once each.
pub fn accepted_in_forward(ns: &Path, link: &str) -> Result<(), String> {
    let rules = tagged_rules(ns, link);
    let want = [
        format!("-A FORWARD -i {link} -m comment --comment \"canopy-net:{link}\" -j ACCEPT"),
        format!("-A FORWARD -o {link} -m comment --comment \"canopy-net:{link}\" -j ACCEPT"),
    ];
    if rules.len() == 2 && want.iter().all(|w| rules.contains(w)) {
        Ok(())
    } else {
        Err(format!(
            "{link}: not its two rules in FORWARD:\n{}",
            iptables_rules(ns)
        ))
    }
}

/// Nothing the net manager tagged `tag` makes is left in `ns`: no bridge, tunnel or veth of
/// its, no nftables table, no iptables rule with their comments. (`extra` links: other names
/// it was given.)
pub fn nothing_left_in(ns: &Path, tag: &str, extra: &[&str]) -> Result<(), String> {
    let links = links_in(ns);
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    let ours = [NetManager::bridge(tag), NetManager::tunnel(tag)];
    if let Some(n) = names.iter().find(|n| {
        ours.iter().any(|o| o == *n) || extra.contains(n) || net_manager::plan::is_host_if(n)
    }) {
        return Err(format!("{n} is left:\n{links}"));
    }
    let tables = run_in(ns, &["nft", "list", "tables"]);
    if tables.contains(&NetManager::table(tag)) {
        return Err(format!("the table is left:\n{tables}"));
    }
    for link in ours.iter().map(String::as_str).chain(extra.iter().copied()) {
        if !tagged_rules(ns, link).is_empty() {
            return Err(format!(
                "iptables rules of {link} are left:\n{}",
                iptables_rules(ns)
            ));
        }
    }
    Ok(())
}
