//! Rolling updates at the root (`PUT /api/service/{id}`, `GET /api/service/{id}/rollout`)
//! against a test cluster on the real gRPC link: instances are replaced one at a time (a new
//! one is deployed with the new spec, and only when it has run for the ready time is an old
//! one undeployed); the same body again changes nothing; a new instance that fails rolls the
//! service back by itself to its old spec; a second update while one runs is refused; the
//! name cannot change; the rollout goes on after the root restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use canopy_core::InstanceStatus;
use canopy_core::link::{Command, CommandAction};
use common::{TestCluster, TestRoot, capacity, sla};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn root() -> TestRoot {
    TestRoot::start_with(|c| {
        c.rollout_min_ready_secs = 0.5;
        c.rollout_deadline_secs = 10.0;
    })
    .await
}

/// The microservice of the test SLA, with `cmd`.
fn microservice(cmd: &[&str]) -> Value {
    let mut ms = sla("app", "web")["applications"][0]["microservices"][0].clone();
    ms["cmd"] = json!(cmd);
    ms
}

fn deployed(c: &Command) -> (u32, Vec<String>) {
    match &c.action {
        CommandAction::Deploy { instance, spec, .. } => (instance.0, spec.cmd.clone()),
        other => panic!("expected a deploy, got {other:?}"),
    }
}

fn undeployed(c: &Command) -> u32 {
    match &c.action {
        CommandAction::Undeploy {
            instance: Some(n), ..
        } => n.0,
        other => panic!("expected an undeploy of one instance, got {other:?}"),
    }
}

/// Alice's service with two instances RUNNING on cluster `c1`.
async fn two_running(root: &TestRoot) -> (common::Api, TestCluster, String) {
    let alice = root.user("alice").await;
    let app = alice.create_app(sla("app", "web")).await.remove(0);
    let id = alice.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cluster =
        TestCluster::join(root.grpc, &root.cluster_token, "c1", capacity(8, 8000)).await;
    alice.wait_active_clusters(1).await;
    for n in 0..2 {
        alice.scale_up(&id).await;
        let c = cluster.command().await;
        cluster.ack(c.id, Ok(())).await;
        cluster.report(&id, n, InstanceStatus::Running).await;
    }
    (alice, cluster, id)
}

async fn put(api: &common::Api, id: &str, body: Value) -> (StatusCode, Value) {
    api.call(Method::PUT, &format!("/api/service/{id}"), Some(body))
        .await
}

async fn wait_state(api: &common::Api, id: &str, state: &str) -> Value {
    for _ in 0..200 {
        let r = api.ok(&format!("/api/service/{id}/rollout")).await;
        if r["state"] == state {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rollout of {id} never became {state}");
}

#[tokio::test]
async fn instances_are_replaced_one_at_a_time_and_the_same_body_changes_nothing() {
    let root = root().await;
    let (alice, mut cluster, id) = two_running(&root).await;
    let none = alice.ok(&format!("/api/service/{id}/rollout")).await;
    assert_eq!(
        (none["state"].clone(), none["revision"].clone()),
        ("none".into(), 0.into())
    );
    let rr_ip = alice.ok(&format!("/api/service/{id}")).await["RR_ip"].clone();

    let b = microservice(&["httpd", "-f", "-p", "81"]);
    let (s, r) = put(&alice, &id, b.clone()).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["changed"].clone(), r["revision"].clone()),
        (true.into(), 1.into())
    );
    assert_eq!(r["state"], "progressing");
    // A second update while this one runs is refused.
    let (s, e) = put(&alice, &id, microservice(&["httpd", "-f", "-p", "82"])).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["field"], "service");

    // One new instance with the new spec; nothing is removed while it is not ready.
    for (added, removed) in [(2, 0), (3, 1)] {
        let c = cluster.command().await;
        let (n, cmd) = deployed(&c);
        assert_eq!(
            (n, cmd),
            (
                added,
                vec!["httpd".into(), "-f".into(), "-p".into(), "81".into()]
            )
        );
        cluster.ack(c.id, Ok(())).await;
        cluster.no_command(Duration::from_millis(700)).await;
        cluster.report(&id, n, InstanceStatus::Running).await;
        // RUNNING for the ready time: only then does an old one go.
        let c = cluster.command().await;
        assert_eq!(undeployed(&c), removed);
        cluster.ack(c.id, Ok(())).await;
    }
    let r = wait_state(&alice, &id, "complete").await;
    assert_eq!(
        (r["updated"].clone(), r["old"].clone()),
        (2.into(), 0.into())
    );
    let svc = alice.ok(&format!("/api/service/{id}")).await;
    assert_eq!(svc["RR_ip"], rr_ip, "the service keeps its rr_ip");
    let revisions: Vec<(u64, u64)> = svc["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance_number"].as_u64().unwrap(),
                i["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(revisions, [(2, 1), (3, 1)]);

    // The same body again: nothing happens.
    let (s, r) = put(&alice, &id, b).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["changed"].clone(), r["state"].clone()),
        (false.into(), "complete".into())
    );
    cluster.no_command(Duration::from_millis(700)).await;
    let events = alice.event_whats(&id).await;
    assert!(
        events.iter().filter(|w| *w == "rollout").count() >= 5,
        "{events:?}"
    );
    assert!(events.contains(&"update".to_owned()), "{events:?}");

    // The name does not change in an update.
    let mut renamed = microservice(&["httpd"]);
    renamed["microservice_name"] = json!("other");
    let (s, e) = put(&alice, &id, renamed).await;
    assert_eq!(
        (s, e["field"].clone()),
        (StatusCode::CONFLICT, "microservice_name".into())
    );
    root.stop().await;
}

#[tokio::test]
async fn a_new_instance_that_fails_rolls_the_service_back_by_itself() {
    let root = root().await;
    let (alice, mut cluster, id) = two_running(&root).await;
    let (s, r) = put(&alice, &id, microservice(&["false"])).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let c = cluster.command().await;
    let (n, cmd) = deployed(&c);
    assert_eq!((n, cmd), (2, vec!["false".to_owned()]));
    cluster.ack(c.id, Ok(())).await;
    cluster.report(&id, 2, InstanceStatus::Failed).await;
    // The failed instance goes; the old ones were never touched.
    let c = cluster.command().await;
    assert_eq!(undeployed(&c), 2);
    cluster.ack(c.id, Ok(())).await;
    let r = wait_state(&alice, &id, "rolled_back").await;
    assert_eq!(r["revision"], 0, "the old revision is current again");
    assert!(r["reason"].as_str().unwrap().contains("FAILED"), "{r}");
    let svc = alice.ok(&format!("/api/service/{id}")).await;
    assert_eq!(
        svc["cmd"],
        json!(["httpd", "-f"]),
        "the old spec is shown again"
    );
    let list = svc["instance_list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|i| i["status"] == "RUNNING" && i["revision"] == 0)
    );
    cluster.no_command(Duration::from_millis(700)).await;
    let events = alice.event_whats(&id).await;
    assert!(events.contains(&"rollback".to_owned()), "{events:?}");

    // A later update to a good spec works (the revision numbers go on).
    let (s, r) = put(&alice, &id, microservice(&["httpd", "-f", "-v"])).await;
    assert_eq!(
        (s, r["revision"].clone()),
        (StatusCode::OK, 2.into()),
        "{r}"
    );
    root.stop().await;
}

#[tokio::test]
async fn a_rollout_goes_on_after_the_root_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = root_orchestrator::config::Config::for_test(dir.path());
    config.admin_password = Some(common::ADMIN_PASSWORD.into());
    config.rollout_min_ready_secs = 0.5;
    let root = TestRoot::start_config(config.clone()).await;
    let (alice, mut cluster, id) = two_running(&root).await;
    let (s, _) = put(&alice, &id, microservice(&["httpd", "-f", "-p", "81"])).await;
    assert_eq!(s, StatusCode::OK);
    let c = cluster.command().await;
    assert_eq!(deployed(&c).0, 2);
    cluster.ack(c.id, Ok(())).await;
    let (cluster_id, token) = (cluster.id.clone(), cluster.session_token.clone());
    cluster.kill();
    root.stop().await;

    let root = TestRoot::start_config(config).await;
    let mut cluster = TestCluster::session(root.grpc, cluster_id, token, capacity(8, 8000)).await;
    let alice = root.login("alice", "pw-of-user").await;
    let r = alice.ok(&format!("/api/service/{id}/rollout")).await;
    assert_eq!(
        (r["state"].clone(), r["revision"].clone()),
        ("progressing".into(), 1.into())
    );
    cluster.report(&id, 2, InstanceStatus::Running).await;
    // (A deploy whose ack did not arrive before the kill is sent again: idempotent.)
    let c = loop {
        let c = cluster.command().await;
        if matches!(c.action, CommandAction::Deploy { .. }) {
            assert_eq!(deployed(&c).0, 2);
            cluster.ack(c.id, Ok(())).await;
            continue;
        }
        break c;
    };
    assert_eq!(undeployed(&c), 0);
    root.stop().await;
}
