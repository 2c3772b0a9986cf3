//! The overlay end to end, on three workers in two clusters, each worker a network namespace
//! with its own net manager and node engine (see `canopy_e2e::lab`): Oakestra's client/server
//! topology by service IP and by name, round robin across workers and clusters, the closest
//! instance, tables kept current when an instance is deleted and when a worker is killed, and
//! nothing left behind. Real containerd, netlink, nftables and VXLAN; traffic stays in the
//! lab's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::lab::{Lab, code, prefix};
use canopy_e2e::{demo_image, sla};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const RR_IP: &str = "10.30.55.55";
const CLOSEST_IP: &str = "10.30.55.56";

fn service(name: &str, image: &std::path::Path, cmd: &str, memory: u32, nodes: &str) -> Value {
    json!({
        "microservice_name": name,
        "microservice_namespace": "e2e",
        "virtualization": "container",
        "code": code(image),
        "cmd": ["sh", "-c", cmd],
        "memory": memory,
        "vcpus": 0,
        "constraints": [{"type": "direct", "node": nodes}],
    })
}

/// A client that fetches `url` forever, one line per answer (`FAIL` when none came).
fn client_cmd(url: &str) -> String {
    format!("while true; do timeout 3 wget -q -O - {url} || echo FAIL; sleep 0.1; done")
}

/// The answers in `log` from byte `from` on.
fn answers(log: &str, from: usize) -> Vec<String> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until the log of `instance` on `worker` holds at least `n` answers after `from`.
async fn wait_answers(
    lab: &Lab,
    worker: &str,
    instance: &str,
    from: usize,
    n: usize,
) -> Vec<String> {
    let start = Instant::now();
    loop {
        let got = answers(&lab.worker(worker).log(instance), from);
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{instance} on {worker}: {} of {n} answers: {got:?}\n{}",
            got.len(),
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The instance part of a page (`page instance-N`), without the container's random id.
fn instance_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until the client's answers include a page of every instance in `pages`.
async fn wait_pages(lab: &Lab, worker: &str, instance: &str, pages: &BTreeSet<String>) -> usize {
    let start = Instant::now();
    loop {
        let log = lab.worker(worker).log(instance);
        let seen: BTreeSet<String> = answers(&log, 0).iter().map(|a| instance_of(a)).collect();
        if pages.is_subset(&seen) {
            return log.len();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{instance} on {worker} never saw all of {pages:?}; saw {seen:?}\n{}",
            lab.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_reach_each_other_across_workers_and_clusters() {
    let work = tempfile::tempdir().unwrap();
    let image = demo_image(work.path());
    let p = prefix();
    // w1 and w2 in cluster c1, w3 in c2. w1 offers room for two 32 MB servers, w3 for one:
    // three servers end up on two workers in two clusters; the clients need 4 MB.
    let mut lab = Lab::start(
        2,
        &[0, 0, 1],
        &[&["--offer-memory-mb=70"], &[], &["--offer-memory-mb=40"]],
    )
    .await;

    // Each container's page is its instance and a random id: a replacement started after a
    // failover serves a page of its own.
    let server_cmd = "mkdir -p /tmp/w && echo \"page $HOSTNAME $(cat /proc/sys/kernel/random/uuid)\" > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w";
    let mut server = service("server", &image, server_cmd, 32, "w1;w3");
    server["addresses"] = json!({"rr_ip": RR_IP, "closest_ip": CLOSEST_IP});
    let ids = lab.create(&sla("ovl", vec![server])).await;
    let server_id = ids[0].clone();
    for _ in 0..3 {
        lab.scale_up(&server_id).await;
    }
    let running = lab.wait_running(&server_id, 3).await;
    let mut placed: Vec<(String, String)> = Vec::new();
    for i in &running {
        let n = i["instance_number"].as_u64().unwrap();
        placed.push((lab.worker_of(i).await, format!("page instance-{n}")));
    }
    let hosts: BTreeSet<&str> = placed.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        hosts,
        BTreeSet::from(["w1", "w3"]),
        "servers on two workers in two clusters: {placed:?}"
    );
    let all: BTreeSet<String> = placed.iter().map(|(_, p)| p.clone()).collect();
    let page_on = |w: &str| -> BTreeSet<String> {
        placed
            .iter()
            .filter(|(h, _)| h == w)
            .map(|(_, p)| p.clone())
            .collect()
    };

    // Clients: by service IP on w2 (a worker with no server), closest from w1, by name on w2.
    let clients = sla(
        "cli",
        vec![
            service(
                "rr",
                &image,
                &client_cmd(&format!("http://{RR_IP}/")),
                4,
                "w2",
            ),
            service(
                "near",
                &image,
                &client_cmd(&format!("http://{CLOSEST_IP}/")),
                4,
                "w1",
            ),
            service(
                "named",
                &image,
                &client_cmd("http://ovl.e2e.server.e2e/"),
                4,
                "w2",
            ),
        ],
    );
    let cids = lab.create(&clients).await;
    for id in &cids {
        lab.scale_up(id).await;
        lab.wait_running(id, 1).await;
    }
    let rr = "cli.e2e.rr.e2e.instance.0";
    let near = "cli.e2e.near.e2e.instance.0";
    let named = "cli.e2e.named.e2e.instance.0";

    // Round robin: once the tables are in place, 30 requests reach all three and none fails.
    let from = wait_pages(&lab, "w2", rr, &all).await;
    let got = wait_answers(&lab, "w2", rr, from, 30).await;
    let seen: BTreeSet<String> = got.iter().take(30).map(|a| instance_of(a)).collect();
    assert_eq!(
        seen, all,
        "30 requests through {RR_IP} reach every server: {got:?}"
    );

    // Closest: the client on w1 always reaches an instance on w1.
    let local = page_on("w1");
    let from = wait_pages(
        &lab,
        "w1",
        near,
        &BTreeSet::from([local.iter().next().unwrap().clone()]),
    )
    .await;
    let got = wait_answers(&lab, "w1", near, from, 10).await;
    assert!(
        got.iter().all(|a| local.contains(&instance_of(a))),
        "{CLOSEST_IP} from w1 reaches only w1's instances {local:?}: {got:?}"
    );

    // By name: the job name resolves to the service IP through the net manager's resolver.
    let from = wait_pages(&lab, "w2", named, &all).await;
    let got = wait_answers(&lab, "w2", named, from, 10).await;
    assert!(
        got.iter().all(|a| all.contains(&instance_of(a))),
        "by name: {got:?}"
    );

    // One instance deleted: within a second only the others answer, and nothing fails.
    let (gone_worker, gone_page) = placed.iter().find(|(w, _)| w == "w1").cloned().unwrap();
    let gone_n: u32 = gone_page
        .trim_start_matches("page instance-")
        .parse()
        .unwrap();
    let (status, v) = lab
        .call(
            "DELETE",
            &format!("/api/service/{server_id}/instance/{gone_n}"),
            None,
        )
        .await;
    assert!(
        status.is_success(),
        "delete instance {gone_n}: {status} {v}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = lab.worker("w2").log(rr).len();
    let got = wait_answers(&lab, "w2", rr, from, 20).await;
    assert!(
        got.iter()
            .all(|a| instance_of(a) != gone_page && a != "FAIL"),
        "after deleting instance {gone_n} on {gone_worker}: {got:?}"
    );

    // A worker killed (both daemons, SIGKILL): its instance leaves the tables of the other
    // cluster's workers through the root.
    // The very pages w3's containers served (a replacement elsewhere serves another).
    let w3_instances = page_on("w3");
    let w3_pages: BTreeSet<String> = answers(&lab.worker("w2").log(rr), 0)
        .into_iter()
        .filter(|a| w3_instances.contains(&instance_of(a)))
        .collect();
    assert!(!w3_pages.is_empty(), "w3's instance answered before");
    lab.worker_mut("w3").kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let from = loop {
        // The cluster notices the loss from the broker's last will; allow for that first.
        let from = lab.worker("w2").log(rr).len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = answers(&lab.worker("w2").log(rr), from);
        if got.iter().all(|a| !w3_pages.contains(a)) {
            break lab.worker("w2").log(rr).len();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "w3's instance still answers after it was killed: {got:?}\n{}",
            lab.logs()
        );
    };
    let got = wait_answers(&lab, "w2", rr, from, 20).await;
    assert!(
        got.iter()
            .all(|a| a != "FAIL" && !w3_pages.contains(a) && instance_of(a) != gone_page),
        "only live instances answer (not {w3_pages:?}, not {gone_page}), none fails: {got:?}"
    );

    lab.stop();
    let left = Lab::leftovers(&p);
    assert!(left.is_empty(), "the lab left {left:?}");
}
