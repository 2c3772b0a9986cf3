//! The cluster link over real gRPC on loopback: registration with the join token, deploys
//! down, status up, commands re-sent until acknowledged, failover to another cluster.
#![allow(clippy::unwrap_used)]

mod common;

use canopy_core::InstanceStatus;
use canopy_core::link::{Command, CommandAction};
use common::{Api, TestCluster, TestRoot, capacity, sla};
use serde_json::Value;
use std::time::Duration;

fn deploy_of(c: &Command) -> (String, u32, String) {
    match &c.action {
        CommandAction::Deploy {
            service_id,
            instance,
            spec,
            instance_ip,
        } => (
            service_id.to_string(),
            instance.0,
            format!("{}@{}", spec.job_name, instance_ip.unwrap()),
        ),
        other => panic!("expected a deploy, got {other:?}"),
    }
}

fn undeploy_of(c: &Command) -> (String, Option<u32>) {
    match &c.action {
        CommandAction::Undeploy {
            service_id,
            instance,
        } => (service_id.to_string(), instance.map(|i| i.0)),
        other => panic!("expected an undeploy, got {other:?}"),
    }
}

async fn one_service(api: &Api, app: &str) -> String {
    let app = api.create_app(sla(app, "web")).await.remove(0);
    api.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn registration_needs_the_join_token() {
    let root = TestRoot::start().await;
    let err = TestCluster::register(root.grpc, "wrong", "c1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = TestCluster::register(root.grpc, &root.cluster_token, "bad name!", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The same name keeps its id; the id is kept when presented again.
    let (id, _) = TestCluster::register(root.grpc, &root.cluster_token, "c1", None)
        .await
        .unwrap();
    let (again, _) = TestCluster::register(root.grpc, &root.cluster_token, "c1", None)
        .await
        .unwrap();
    let (by_id, token) = TestCluster::register(root.grpc, &root.cluster_token, "c1", Some(&id))
        .await
        .unwrap();
    assert_eq!((&id, &id), (&again, &by_id));
    // The name of another cluster cannot be taken with a different id.
    let (other, _) = TestCluster::register(root.grpc, &root.cluster_token, "c2", None)
        .await
        .unwrap();
    let err = TestCluster::register(root.grpc, &root.cluster_token, "c1", Some(&other))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // A session needs the latest session token.
    let mut client = canopy_proto::pb::cluster_link_client::ClusterLinkClient::connect(format!(
        "http://{}",
        root.grpc
    ))
    .await
    .unwrap();
    let hello = canopy_proto::pb::ClusterMessage {
        body: Some(canopy_proto::pb::cluster_message::Body::Hello(
            canopy_proto::pb::Hello {
                cluster_id: id.clone(),
                session_token: format!("{token}x"),
            },
        )),
    };
    let err = client
        .session(futures::stream::iter(vec![hello]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn deploy_down_status_up() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let mut cluster =
        TestCluster::join(root.grpc, &root.cluster_token, "c1", capacity(4, 4096)).await;
    let sid = one_service(&admin, "shop").await;
    admin.wait_active_clusters(1).await;
    assert_eq!(admin.scale_up(&sid).await, 0);

    let cmd = cluster.command().await;
    let (service, n, what) = deploy_of(&cmd);
    assert_eq!((service.as_str(), n), (sid.as_str(), 0));
    let svc = admin.ok(&format!("/api/service/{sid}")).await;
    let inst = &svc["instance_list"][0];
    assert_eq!(inst["status"], "CLUSTER_SCHEDULED");
    assert_eq!(inst["cluster_id"], Value::String(cluster.id.clone()));
    assert_eq!(
        what,
        format!(
            "shop.test.web.test@{}",
            inst["instance_ip"].as_str().unwrap()
        )
    );
    cluster.ack(cmd.id, Ok(())).await;

    cluster.report(&sid, 0, InstanceStatus::NodeScheduled).await;
    admin.wait_instance(&sid, 0, "NODE_SCHEDULED").await;
    cluster.report(&sid, 0, InstanceStatus::Running).await;
    let inst = admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], "worker-1");
    assert_eq!(
        admin.ok(&format!("/api/service/{sid}")).await["status"],
        "RUNNING"
    );

    // A report about an instance the root does not know gets an undeploy back.
    cluster
        .report("0123456789abcdef01234567", 3, InstanceStatus::Running)
        .await;
    let (s, n) = undeploy_of(&cluster.command().await);
    assert_eq!((s.as_str(), n), ("0123456789abcdef01234567", Some(3)));

    // A refused deploy ends FAILED with the cluster's reason.
    admin.scale_up(&sid).await;
    let cmd = cluster.command().await;
    cluster
        .ack(cmd.id, Err("image cannot be pulled".into()))
        .await;
    let inst = admin.wait_instance(&sid, 1, "FAILED").await;
    assert!(
        inst["status_detail"]
            .as_str()
            .unwrap()
            .contains("image cannot be pulled")
    );

    // Deleting the service undeploys every instance on the cluster.
    admin
        .call(
            reqwest::Method::DELETE,
            &format!("/api/service/{sid}"),
            None,
        )
        .await;
    let (s, n) = undeploy_of(&cluster.command().await);
    assert_eq!((s, n), (sid, None));
}

#[tokio::test]
async fn commands_are_resent_until_acknowledged() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let cluster = TestCluster::join(root.grpc, &root.cluster_token, "c1", capacity(4, 4096)).await;
    let sid = one_service(&admin, "shop").await;
    admin.scale_up(&sid).await;
    let mut cluster = cluster;
    let first = cluster.command().await;
    let id = cluster.id.clone();
    cluster.kill();

    // Reconnect without having acknowledged: the same command comes again.
    let (again_id, token) = TestCluster::register(root.grpc, &root.cluster_token, "c1", Some(&id))
        .await
        .unwrap();
    assert_eq!(again_id, id);
    let mut cluster = TestCluster::session(root.grpc, id.clone(), token, capacity(4, 4096)).await;
    let resent = cluster.command().await;
    assert_eq!(resent, first);
    cluster.ack(resent.id, Ok(())).await;
    cluster.report(&sid, 0, InstanceStatus::Running).await;
    cluster.kill();

    // Acknowledged: not sent again; the sequence number carries over.
    let (_, token) = TestCluster::register(root.grpc, &root.cluster_token, "c1", Some(&id))
        .await
        .unwrap();
    let mut cluster = TestCluster::session(root.grpc, id, token, capacity(4, 4096)).await;
    cluster.no_command(Duration::from_millis(700)).await;
    cluster.report(&sid, 0, InstanceStatus::Running).await;
    admin.wait_instance(&sid, 0, "RUNNING").await;
}

#[tokio::test]
async fn a_silent_cluster_loses_its_instances_to_another() {
    let root = TestRoot::start_with(|c| c.cluster_grace_secs = 1.0).await;
    let admin = root.admin().await;
    let mut a = TestCluster::join(root.grpc, &root.cluster_token, "a", capacity(4, 4096)).await;
    let sid = one_service(&admin, "shop").await;
    admin.scale_up(&sid).await;
    let cmd = a.command().await;
    a.ack(cmd.id, Ok(())).await;
    a.report(&sid, 0, InstanceStatus::Running).await;
    admin.wait_instance(&sid, 0, "RUNNING").await;
    let ip =
        admin.ok(&format!("/api/service/{sid}")).await["instance_list"][0]["instance_ip"].clone();

    let mut b = TestCluster::join(root.grpc, &root.cluster_token, "b", capacity(4, 4096)).await;
    admin.wait_active_clusters(2).await;
    let a_id = a.id.clone();
    a.kill();

    // Within the grace period (1 s) plus a tick, the instance moves to b, same number and IP.
    let cmd = b.command().await;
    let (s, n, _) = deploy_of(&cmd);
    assert_eq!((s.as_str(), n), (sid.as_str(), 0));
    b.ack(cmd.id, Ok(())).await;
    let inst = admin.wait_instance(&sid, 0, "CLUSTER_SCHEDULED").await;
    assert_eq!(inst["cluster_id"], Value::String(b.id.clone()));
    assert_eq!(inst["instance_ip"], ip);
    b.report(&sid, 0, InstanceStatus::Running).await;
    admin.wait_instance(&sid, 0, "RUNNING").await;
    let active = admin.ok("/api/clusters/active").await;
    assert_eq!(active.as_array().unwrap().len(), 1);
    assert_eq!(active[0]["cluster_name"], "b");

    // When a comes back it is told to drop its copy, and its stale report changes nothing.
    let (_, token) = TestCluster::register(root.grpc, &root.cluster_token, "a", Some(&a_id))
        .await
        .unwrap();
    let mut a = TestCluster::session(root.grpc, a_id, token, capacity(4, 4096)).await;
    let (s, n) = undeploy_of(&a.command().await);
    assert_eq!((s.as_str(), n), (sid.as_str(), Some(0)));
    a.report(&sid, 0, InstanceStatus::Running).await;
    let (s, n) = undeploy_of(&a.command().await);
    assert_eq!((s.as_str(), n), (sid.as_str(), Some(0)));
    let inst = admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["cluster_id"], Value::String(b.id.clone()));
    b.no_command(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_cluster_without_a_fitting_worker_hands_the_instance_on() {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    // a looks roomier, so it is chosen first.
    let mut a = TestCluster::join(root.grpc, &root.cluster_token, "a", capacity(16, 64000)).await;
    let sid = one_service(&admin, "shop").await;
    admin.scale_up(&sid).await;
    let cmd = a.command().await;
    a.ack(cmd.id, Ok(())).await;
    let mut b = TestCluster::join(root.grpc, &root.cluster_token, "b", capacity(2, 2048)).await;
    admin.wait_active_clusters(2).await;
    a.report(&sid, 0, InstanceStatus::NoWorkerCapacity).await;
    let (s, n, _) = deploy_of(&b.command().await);
    assert_eq!((s.as_str(), n), (sid.as_str(), 0));
    let (s, n) = undeploy_of(&a.command().await);
    assert_eq!((s.as_str(), n), (sid.as_str(), Some(0)));
    let inst = admin.wait_instance(&sid, 0, "CLUSTER_SCHEDULED").await;
    assert_eq!(inst["cluster_id"], Value::String(b.id.clone()));

    // With nowhere else to go, the cluster's answer stands.
    b.report(&sid, 0, InstanceStatus::NoQualifiedWorkerFound)
        .await;
    a.kill();
    let inst = admin
        .wait_instance(&sid, 0, "NO_QUALIFIED_WORKER_FOUND")
        .await;
    assert_eq!(inst["cluster_id"], Value::String(b.id.clone()));
}
