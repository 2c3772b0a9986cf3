//! The cluster with a real root, real HTTP registration and a real MQTT broker: deploys reach
//! workers and their reports reach the root; a lost worker's instances move within 3 s with no
//! duplicate; with the root down the cluster still heals, and the root's view matches after it
//! returns; bad input is refused or dropped. The same cases run with the embedded broker and
//! with Mosquitto.
#![allow(clippy::unwrap_used)]

mod common;

use common::root::{Api, TestRoot, sla};
use common::{BrokerKind, Mosquitto, NODE_TOKEN, TestCluster, TestWorker, register};
use std::time::{Duration, Instant};

/// A root, a cluster joined to it, and the broker the cluster uses.
struct Site {
    root: TestRoot,
    cluster: TestCluster,
    admin: Api,
    _mosquitto: Option<Mosquitto>,
    _dir: tempfile::TempDir,
}

async fn site(kind: &BrokerKind) -> Site {
    site_with(kind, |_| {}).await
}

async fn site_with(
    kind: &BrokerKind,
    tweak: impl FnOnce(&mut root_orchestrator::config::Config),
) -> Site {
    let root = TestRoot::start_with(tweak).await;
    let (cluster, mosquitto, dir) = common::cluster_on(kind, &root).await;
    cluster.wait_root(true).await;
    let admin = root.admin().await;
    Site {
        root,
        cluster,
        admin,
        _mosquitto: mosquitto,
        _dir: dir,
    }
}

/// Creates an application with one service and asks for one instance; returns the service id.
async fn deploy_one(admin: &Api, app: &str) -> String {
    let app = admin.create_app(sla(app, "web")).await.remove(0);
    let sid = admin.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.wait_active_clusters(1).await;
    admin.scale_up(&sid).await;
    sid
}

async fn deploy_reaches_the_worker_and_running_reaches_the_root(kind: BrokerKind) {
    let s = site(&kind).await;
    let mut w = TestWorker::join(&s.cluster, "worker-a").await;
    s.cluster.wait_workers(1).await;
    let sid = deploy_one(&s.admin, "shop").await;

    let d = w.deploy(Duration::from_secs(10)).await;
    assert_eq!((d.id.as_str(), d.instance_number), (sid.as_str(), 0));
    assert_eq!(d.job_name, "shop.test.web.test");
    assert_eq!(d.image, "localhost:5000/busybox:latest");
    assert!(d.instance_ip.starts_with("10.30."), "{d:?}");
    s.admin.wait_instance(&sid, 0, "NODE_SCHEDULED").await;

    w.job_status(&d.job_name, 0, "RUNNING").await;
    let inst = s.admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], w.id.to_string());

    // Undeploy through the root reaches the worker.
    let (st, _) = s
        .admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api/service/{sid}/instance/0"),
            None,
        )
        .await;
    assert!(st.is_success());
    let del = w.delete(Duration::from_secs(10)).await;
    assert_eq!(
        (del.job_name.as_str(), del.instance_number),
        ("shop.test.web.test", 0)
    );
}

async fn a_lost_worker_is_replaced_within_3_s_without_duplicates(kind: BrokerKind) {
    let s = site(&kind).await;
    let mut a = TestWorker::join(&s.cluster, "worker-a").await;
    let mut b = TestWorker::join(&s.cluster, "worker-b").await;
    s.cluster.wait_workers(2).await;
    let sid = deploy_one(&s.admin, "shop").await;

    // Whichever worker got it is "first".
    let (mut first, mut second) = tokio::select! {
        d = a.deploy(Duration::from_secs(10)) => { let _ = d; (a, b) }
        d = b.deploy(Duration::from_secs(10)) => { let _ = d; (b, a) }
    };
    let _ = &mut first;
    first.job_status("shop.test.web.test", 0, "RUNNING").await;
    s.admin.wait_instance(&sid, 0, "RUNNING").await;
    let answer = first.answer.clone();
    let first_name = first.name.clone();

    let killed = Instant::now();
    first.kill();
    let d = second.deploy(Duration::from_secs(3)).await;
    let took = killed.elapsed();
    assert_eq!((d.id.as_str(), d.instance_number), (sid.as_str(), 0));
    println!("worker loss → deploy on the other worker: {took:?}");
    second.job_status("shop.test.web.test", 0, "RUNNING").await;
    let inst = s.admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], second.id.to_string());

    // The lost worker comes back still running its old copy: it is told to delete it, and the
    // instance stays where it is now.
    let mut back = TestWorker::connect(s.cluster.mqtt_port, &first_name, answer).await;
    back.resources("shop.test.web.test", 0).await;
    let del = back.delete(Duration::from_secs(5)).await;
    assert_eq!(del.instance_number, 0);
    assert!(back.try_deploy(Duration::from_millis(500)).await.is_none());
    let instances = s.cluster.cluster.instances().await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].node.as_ref(), Some(&second.id));
    let inst = s.admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], second.id.to_string());
}

async fn without_the_root_the_cluster_still_heals(kind: BrokerKind) {
    // The root keeps its data directory and ports across the stop so the cluster can return.
    let root_dir = tempfile::tempdir().unwrap();
    let grpc = common::free_port();
    let api = common::free_port();
    let rd = root_dir.path().to_owned();
    let s = site_with(&kind, move |c| {
        c.data_dir = rd;
        c.grpc_addr = ([127, 0, 0, 1], grpc).into();
        c.api_addr = ([127, 0, 0, 1], api).into();
    })
    .await;
    let Site {
        root,
        cluster,
        admin,
        _mosquitto,
        _dir,
    } = s;
    let mut a = TestWorker::join(&cluster, "worker-a").await;
    let mut b = TestWorker::join(&cluster, "worker-b").await;
    cluster.wait_workers(2).await;
    let sid = deploy_one(&admin, "shop").await;
    let (first, mut second) = tokio::select! {
        _ = a.deploy(Duration::from_secs(10)) => (a, b),
        _ = b.deploy(Duration::from_secs(10)) => (b, a),
    };
    first.job_status("shop.test.web.test", 0, "RUNNING").await;
    admin.wait_instance(&sid, 0, "RUNNING").await;

    let config = root.config.clone();
    root.stop().await;
    cluster.wait_root(false).await;

    first.kill();
    let d = second.deploy(Duration::from_secs(3)).await;
    assert_eq!(d.instance_number, 0);
    second.job_status("shop.test.web.test", 0, "RUNNING").await;
    for _ in 0..100 {
        let i = &cluster.cluster.instances().await[0];
        if i.status == canopy_core::InstanceStatus::Running && i.node.as_ref() == Some(&second.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The root returns: its view matches the cluster's.
    let root = TestRoot::start_config(config).await;
    cluster.wait_root(true).await;
    let admin = root.admin().await;
    let inst = admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], second.id.to_string());
    let local = &cluster.cluster.instances().await[0];
    assert_eq!(local.node.as_ref(), Some(&second.id));
    assert!(
        cluster.cluster.pending_reports().await.is_empty() || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.cluster.pending_reports().await.is_empty()
        }
    );
    let svc = admin.ok(&format!("/api/service/{sid}")).await;
    assert_eq!(svc["instance_list"].as_array().unwrap().len(), 1);
    drop(root_dir);
}

async fn bad_input_is_refused_or_dropped(kind: BrokerKind) {
    let s = site(&kind).await;
    // Registration: wrong token 401, bad body 400 naming the field, bad values 422.
    let (st, _) = register(&s.cluster.api, "worker-x", "wrong").await;
    assert_eq!(st, reqwest::StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::new()
        .post(format!("{}/api/node/register", s.cluster.api))
        .body(r#"{"host": 5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["field"], "host");
    let r = reqwest::Client::new()
        .post(format!("{}/api/node/register/", s.cluster.api))
        .json(&serde_json::json!({"host": "w", "architecture": "z80", "virtualization": ["docker"], "token": NODE_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);

    // The same host name keeps its id; the old password stops working.
    let w = TestWorker::join(&s.cluster, "worker-a").await;
    let (_, again) = register(&s.cluster.api, "worker-a", NODE_TOKEN).await;
    assert_eq!(again["id"], w.id.to_string());

    // Anonymous and wrong credentials are refused by the broker.
    for creds in [
        None,
        Some(("nobody", "nothing")),
        Some((w.id.as_str(), "wrong")),
    ] {
        let mut opts = rumqttc::MqttOptions::new("intruder", "127.0.0.1", s.cluster.mqtt_port);
        if let Some((u, p)) = creds {
            opts.set_credentials(u, p);
        }
        let (_c, mut ev) = rumqttc::AsyncClient::new(opts, 10);
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => {
                        return a.code != rumqttc::ConnectReturnCode::Success;
                    }
                    Ok(_) => {}
                    Err(_) => return true,
                }
            }
        })
        .await
        .unwrap_or(true);
        assert!(refused, "{creds:?} was let in");
    }

    // Garbage on every worker topic is dropped; the cluster keeps working.
    let w = TestWorker::connect(
        s.cluster.mqtt_port,
        "worker-a",
        serde_json::from_value(again).unwrap(),
    )
    .await;
    use canopy_proto::worker::topics;
    for payload in [
        &b""[..],
        b"{",
        b"null",
        b"[1,2]",
        b"{\"sname\": 5}",
        b"{\"cpu_percent\": \"x\"}",
        b"\xff\xfe",
    ] {
        for topic in [
            topics::information(&w.id),
            topics::job(&w.id),
            topics::resources(&w.id),
        ] {
            w.publish_raw(topic, payload).await;
        }
    }
    w.job_status("no.such.job.here", 0, "RUNNING").await;
    w.job_status("a.b.c.d", 0, "NOT_A_STATUS").await;
    s.cluster.wait_workers(1).await;
    let mut w = w;
    let sid = deploy_one(&s.admin, "shop").await;
    let d = w.deploy(Duration::from_secs(10)).await;
    assert_eq!(d.id, sid);

    // Metrics are served.
    let text = reqwest::get(format!("{}/metrics", s.cluster.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "canopy_cluster_workers{state=\"active\"} 1",
        "canopy_cluster_mqtt_messages_total{direction=\"out\",kind=\"deploy\"}",
        "canopy_cluster_instances{status=\"NODE_SCHEDULED\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

async fn crashes_back_off_and_one_shots_complete(kind: BrokerKind) {
    let s = site(&kind).await;
    let mut w = TestWorker::join(&s.cluster, "worker-a").await;
    s.cluster.wait_workers(1).await;
    let sid = deploy_one(&s.admin, "shop").await;
    let job = "shop.test.web.test";
    let d = w.deploy(Duration::from_secs(10)).await;
    assert_eq!(d.instance_number, 0);

    // Each crash waits longer before the next start: 1 s, then 2 s (no hot loop).
    let mut gaps = Vec::new();
    for _ in 0..2 {
        w.job_status(job, 0, "RUNNING").await;
        s.admin.wait_instance(&sid, 0, "RUNNING").await;
        let crashed = Instant::now();
        w.job_status(job, 0, "DEAD").await;
        let del = w.delete(Duration::from_secs(5)).await;
        assert_eq!(
            del.instance_number, 0,
            "the dead copy is removed before a restart"
        );
        let again = w.deploy(Duration::from_secs(10)).await;
        assert_eq!(again.instance_number, 0);
        gaps.push(crashed.elapsed());
    }
    println!("restart gaps: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1900), "{gaps:?}");

    // A one-shot that ends well is COMPLETED for good.
    w.job_status(job, 0, "COMPLETED").await;
    s.admin.wait_instance(&sid, 0, "COMPLETED").await;
    assert!(w.try_deploy(Duration::from_millis(1500)).await.is_none());
    let local = &s.cluster.cluster.instances().await[0];
    assert_eq!(local.status, canopy_core::InstanceStatus::Completed);
}

/// Workers register while another worker keeps talking. (The cluster used to hold its state
/// lock while the broker granted a worker's credentials; the broker's answer comes through the
/// MQTT loop, which needed that lock for the talking worker's message, so the registration
/// timed out.)
async fn registrations_go_on_while_workers_talk(kind: BrokerKind) {
    use canopy_proto::worker::topics;
    let s = site(&kind).await;
    let w = TestWorker::join(&s.cluster, "chatty").await;
    let client = w.client.clone();
    let topic = topics::information(&w.id);
    let chatter = tokio::spawn(async move {
        let info = serde_json::json!({"ip": "127.0.0.1", "cpu_percent": 5.0, "vcpus": 4,
                                      "memory_percent": 10.0, "memory": 4000})
        .to_string();
        loop {
            let _ = client
                .publish(
                    topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    info.clone(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    for i in 0..5 {
        let (status, body) = register(&s.cluster.api, &format!("newcomer{i}"), NODE_TOKEN).await;
        assert_eq!(status, reqwest::StatusCode::OK, "registration {i}: {body}");
    }
    chatter.abort();
}

macro_rules! suite {
    ($($case:ident),+ $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $case() { super::$case(super::BrokerKind::Embedded).await })+
        }
        mod mosquitto {
            $(#[tokio::test] async fn $case() { super::$case(super::BrokerKind::Mosquitto).await })+
        }
    };
}

suite!(
    deploy_reaches_the_worker_and_running_reaches_the_root,
    a_lost_worker_is_replaced_within_3_s_without_duplicates,
    without_the_root_the_cluster_still_heals,
    bad_input_is_refused_or_dropped,
    crashes_back_off_and_one_shots_complete,
    registrations_go_on_while_workers_talk,
);
