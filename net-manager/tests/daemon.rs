//! The `net-manager` binary, run inside a worker namespace this test creates, driven through
//! its unix-socket API with curl: instances get namespaces, addresses and veths; a
//! translation table makes a service address reach them; bad input is refused naming the
//! field; a kill -9 and restart rebuilds nothing and keeps an established connection; a
//! delete removes the instance's network; `--remove-on-exit` leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Lab, fetch, fetch_soon, ip, links_in, prefix};
use net_manager::plan::host_if;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

struct Setup {
    worker: PathBuf,
    dir: PathBuf,
}

impl Setup {
    fn start(&self, remove_on_exit: bool) -> Daemon {
        let p = prefix();
        let socket = self.dir.join("nm.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nm.log"))
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.worker.display()))
            .arg(env!("CARGO_BIN_EXE_net-manager"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg("--subnet=10.18.0.0")
            .arg(format!("--bridge={p}br"))
            .arg(format!("--nft-table={p}_t"))
            .arg(format!("--netns-dir={}", self.dir.join("netns").display()));
        if remove_on_exit {
            cmd.arg("--remove-on-exit");
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon { child, socket };
        let start = Instant::now();
        while d.call("GET", "/health", None).0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the net manager did not answer:\n{}",
                std::fs::read_to_string(self.dir.join("nm.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Daemon {
    /// One API call with curl over the socket: status and JSON answer (`Null` if none).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
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
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    fn attach(&self, name: &str) -> (String, PathBuf) {
        let (status, v) = self.call("POST", "/instances", Some(&json!({"name": name})));
        assert_eq!(status, 200, "attach {name}: {v}");
        (
            v["address"].as_str().unwrap().to_owned(),
            PathBuf::from(v["netns"].as_str().unwrap()),
        )
    }

    fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://nm/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn in_ns(ns: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display())).args(args);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_attaches_translates_survives_restarts_and_cleans_up() {
    let p = prefix();
    let mut lab = Lab::new();
    let worker = lab.netns("dw");
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup {
        worker: worker.clone(),
        dir: tmp.path().to_owned(),
    };
    let d = setup.start(false);

    let (c_ip, client) = d.attach("app.t.client.t.instance.0");
    let (s1_ip, s1) = d.attach("app.t.web.t.instance.0");
    let (s2_ip, s2) = d.attach("app.t.web.t.instance.1");
    assert_eq!(
        (c_ip.as_str(), s1_ip.as_str(), s2_ip.as_str()),
        ("10.18.0.2", "10.18.0.3", "10.18.0.4")
    );
    // The same name again is the same attachment.
    assert_eq!(d.attach("app.t.web.t.instance.0").0, s1_ip);
    assert!(links_in(&s1).contains("eth0"));
    lab.web_server(&s1, "page-one");
    lab.web_server(&s2, "page-two");

    let table = json!({"targets": {
        "10.30.55.55": [s1_ip, s2_ip],
        "10.30.0.9": [s1_ip],
    }});
    assert_eq!(d.call("PUT", "/translations", Some(&table)).0, 204);
    assert!(fetch_soon(&client, ip("10.30.55.55")).starts_with("page-"));
    let pages: BTreeSet<String> = (0..8)
        .filter_map(|_| fetch(&client, ip("10.30.55.55")))
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");

    // Bad input: refused, naming what is wrong; nothing else changes.
    let (status, v) = d.call("POST", "/instances", Some(&json!({"name": "../etc"})));
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("name:"), "{v}");
    let (status, v) = d.call("POST", "/instances", Some(&json!({"nam": "x"})));
    assert_eq!(status, 400, "{v}");
    let (status, v) = d.call("PUT", "/translations", Some(&json!({"targets": 5})));
    assert_eq!((status, v["field"].as_str()), (400, Some("targets")), "{v}");
    let (status, v) = d.call(
        "PUT",
        "/translations",
        Some(&json!({"targets": {"not-an-ip": []}})),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    let metrics = d.metrics();
    assert!(
        metrics.contains("canopy_net_instances_attached 3"),
        "{metrics}"
    );
    assert!(metrics.contains("canopy_net_translations 3"), "{metrics}");
    assert!(
        metrics.contains("canopy_net_table_updates_total 1"),
        "{metrics}"
    );

    // An established connection through an instance address, held across a kill -9 and a
    // restart of the net manager, which also removes a veth of its prefix it does not own.
    let mut held = common::Held::open(&s1, &client, ip("10.30.0.9"), 9000);
    assert!(
        held.say("before"),
        "no connection through the instance address"
    );
    let veth_before = links_in(&worker)
        .lines()
        .find(|l| l.contains(&format!(": {}@", host_if("app.t.web.t.instance.0"))))
        .map(str::to_owned)
        .expect("the instance's veth");
    let stray = format!("{}ffffffffff", net_manager::plan::HOST_IF_PREFIX);
    assert!(
        in_ns(
            &worker,
            &[
                "ip", "link", "add", &stray, "type", "veth", "peer", "name", "strayp"
            ]
        )
        .status()
        .unwrap()
        .success()
    );
    d.kill();
    let d = setup.start(false);
    assert!(
        held.say("after"),
        "the connection did not survive the restart: heard {:?}",
        held.heard()
    );
    assert_eq!(held.heard(), "before\nafter\n");
    drop(held);
    assert!(!links_in(&worker).contains(&stray), "the stray veth stayed");
    assert!(
        links_in(&worker).contains(&veth_before),
        "the instance's veth was rebuilt:\n{}",
        links_in(&worker)
    );
    let (_, list) = d.call("GET", "/instances", None);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));

    // A detach removes the instance's network, and only its.
    assert_eq!(
        d.call("DELETE", "/instances/app.t.web.t.instance.1", None)
            .0,
        204
    );
    assert_eq!(
        d.call("DELETE", "/instances/app.t.web.t.instance.1", None)
            .0,
        204
    );
    assert!(!s2.exists(), "its namespace file stayed");
    assert!(!links_in(&worker).contains(&host_if("app.t.web.t.instance.1")));
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    d.terminate();

    // --remove-on-exit: nothing of the net manager's is left in the worker.
    let d = setup.start(true);
    d.terminate();
    let links = links_in(&worker);
    assert!(!links.contains(&format!("{p}br")), "{links}");
    assert!(
        !links.contains(net_manager::plan::HOST_IF_PREFIX),
        "{links}"
    );
    let tables = in_ns(&worker, &["nft", "list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&format!("{p}_t")));
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_answer_on_the_workers_addresses_and_are_not_shared() {
    let mut lab = Lab::new();
    let worker = lab.netns("pw");
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup {
        worker: worker.clone(),
        dir: tmp.path().to_owned(),
    };
    let d = setup.start(false);
    let ports = json!([{"host": 8080, "container": 80, "protocol": "tcp"}]);
    let (status, web) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.web.t.instance.0", "ports": ports})),
    );
    assert_eq!(status, 200, "{web}");
    let web_ns = PathBuf::from(web["netns"].as_str().unwrap());
    lab.web_server(&web_ns, "published-page");
    let (client_ip, client) = d.attach("app.t.client.t.instance.0");
    assert_eq!(client_ip, "10.18.0.3");

    // On the worker's own loopback, and from an instance on the worker's bridge address.
    let from_worker = || {
        let out = in_ns(
            &worker,
            &[
                "busybox",
                "timeout",
                "5",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ],
        )
        .output()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let start = Instant::now();
    while from_worker() != "published-page" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "127.0.0.1:8080 never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bridge = std::net::Ipv4Addr::new(10, 18, 0, 1);
    let page = common::fetch_port(&client, bridge, 8080);
    assert_eq!(page.as_deref(), Some("published-page"));

    // The same port and protocol for another instance is refused, naming who has it; the
    // same number over UDP is another port.
    let (status, v) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.other.t.instance.0", "ports": ports})),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("app.t.web.t.instance.0"),
        "{v}"
    );
    let (status, v) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.other.t.instance.0",
                     "ports": [{"host": 8080, "container": 80, "protocol": "udp"}]})),
    );
    assert_eq!(status, 200, "{v}");

    // Detached, the port is free again and answers nothing.
    assert_eq!(
        d.call("DELETE", "/instances/app.t.web.t.instance.0", None)
            .0,
        204
    );
    assert!(common::fetch_port(&client, bridge, 8080).is_none());
    d.terminate();
    drop(lab);
}
