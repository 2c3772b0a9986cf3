//! The contract in use: conversions round-trip and name bad fields, and the generated tonic
//! client and server hold a registration and a bidirectional session over real TCP on loopback.
#![allow(clippy::unwrap_used)] // tests may panic: a panic is a failed test

use canopy_core::job::{Constraint, EnvVar, GeoPoint, PortMapping, Protocol};
use canopy_core::link::{
    ClusterLocation, ClusterReport, Command, CommandAck, CommandAction, InstanceReport,
    InstanceUsage, NodeSummary, Registration, ResourceAggregate,
};
use canopy_core::probe::{Probe, ProbeCheck};
use canopy_core::{
    Architecture, InstanceNumber, InstanceStatus, JobName, NodeId, Resources, ServiceId,
    ServiceSpec, Virtualization,
};
use canopy_proto::pb::cluster_link_client::ClusterLinkClient;
use canopy_proto::pb::cluster_link_server::{ClusterLink, ClusterLinkServer};
use canopy_proto::pb::{self, cluster_message, root_message};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

fn spec() -> ServiceSpec {
    ServiceSpec {
        job_name: JobName::new("clientserver", "test", "nginx", "test").unwrap(),
        virtualization: Virtualization::Container,
        code: "docker.io/library/nginx:latest".into(),
        cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
        environment: vec![EnvVar::parse("A=1").unwrap()],
        resources: Resources {
            vcpus: 1,
            memory_mb: 100,
            vgpus: 0,
        },
        ports: vec![PortMapping {
            host: 6080,
            container: 60,
            protocol: Protocol::Udp,
        }],
        one_shot: true,
        privileged: false,
        architectures: vec![Architecture::Amd64, Architecture::Arm64],
        constraints: vec![
            Constraint::Direct {
                cluster: Some("munich".into()),
                nodes: vec!["w1".into(), "w2".into()],
            },
            Constraint::Clusters {
                allowed: vec!["a".into()],
            },
            Constraint::Geo {
                location: GeoPoint {
                    lat: 48.1,
                    lon: 11.5,
                },
                radius_km: 20.0,
            },
            Constraint::Latency {
                area: "munich-1".into(),
                threshold_ms: 10.0,
            },
            Constraint::Addons {
                needs: vec!["x".into()],
            },
        ],
        rr_ip: Some("10.30.30.30".parse().unwrap()),
        rr_ip_v6: None,
        closest_ip: Some("10.30.30.31".parse().unwrap()),
        readiness_probe: Some(Probe::new(ProbeCheck::Http {
            path: "/ready".into(),
            port: 8080,
        })),
        liveness_probe: Some(Probe {
            initial_delay_secs: 4,
            ..Probe::new(ProbeCheck::Exec {
                command: vec!["sh".into(), "-c".into(), "test -f /tmp/ok".into()],
            })
        }),
    }
}

fn deploy() -> Command {
    Command {
        id: 7,
        action: CommandAction::Deploy {
            service_id: ServiceId::parse("627527c1a4a5edb43d085f37").unwrap(),
            instance: InstanceNumber(2),
            spec: Box::new(spec()),
            instance_ip: Some("10.30.0.5".parse().unwrap()),
        },
    }
}

fn report() -> InstanceReport {
    InstanceReport {
        seq: 41,
        service_id: ServiceId::parse("s1").unwrap(),
        instance: InstanceNumber(0),
        status: InstanceStatus::NoWorkerCapacity,
        detail: "no worker has 4 vcpus free".into(),
        node_id: Some(NodeId::parse("n1").unwrap()),
        cpu_percent: 12.5,
        memory_mb: 20,
        ns_ip: Some("10.18.0.66".parse().unwrap()),
        ready: false,
    }
}

#[test]
fn domain_values_round_trip_through_the_wire() {
    let c = deploy();
    assert_eq!(Command::try_from(pb::Command::from(&c)).unwrap(), c);
    let u = Command {
        id: 8,
        action: CommandAction::Undeploy {
            service_id: ServiceId::parse("s1").unwrap(),
            instance: None,
        },
    };
    assert_eq!(Command::try_from(pb::Command::from(&u)).unwrap(), u);
    let r = report();
    assert_eq!(
        InstanceReport::try_from(pb::InstanceReport::from(&r)).unwrap(),
        r
    );
    for s in InstanceStatus::ALL {
        let mut r = report();
        r.status = *s;
        assert_eq!(
            InstanceReport::try_from(pb::InstanceReport::from(&r))
                .unwrap()
                .status,
            *s
        );
    }
    let agg = ResourceAggregate {
        active_nodes: 2,
        free: Resources {
            vcpus: 8,
            memory_mb: 4096,
            vgpus: 1,
        },
        cpu_percent: 33.0,
        memory_percent: 50.0,
        virtualizations: [Virtualization::Container, Virtualization::Wasm].into(),
        supported_addons: ["a".to_owned()].into(),
        csi_drivers: Default::default(),
    };
    let mut rep = ClusterReport {
        total: agg.clone(),
        per_architecture: [(Architecture::Arm64, agg)].into(),
        nodes: vec![NodeSummary {
            id: NodeId::parse("0123456789abcdef01234567").unwrap(),
            name: "worker1".into(),
            active: true,
            architecture: Architecture::Arm64,
            virtualizations: vec![Virtualization::Wasm],
            cpu_percent: 12.5,
            memory_percent: 40.0,
            instances: 3,
            overlay: Some(canopy_core::overlay::Peer {
                subnet: "10.18.0.64".parse().unwrap(),
                underlay: "192.0.2.2".parse().unwrap(),
            }),
        }],
        usage: vec![InstanceUsage {
            service_id: ServiceId::parse("0123456789abcdef01234567").unwrap(),
            instance: InstanceNumber(2),
            cpu_percent: 180.0,
            memory_mb: 12,
            logs: "hello\n".into(),
        }],
    };
    assert_eq!(
        ClusterReport::try_from(pb::ClusterReport::from(&rep)).unwrap(),
        rep
    );
    // A bad entry names its place.
    rep.nodes[0].memory_percent = 120.0;
    assert_eq!(
        ClusterReport::try_from(pb::ClusterReport::from(&rep))
            .unwrap_err()
            .field,
        "nodes[0].memory_percent"
    );
    let reg = Registration {
        join_token: "t".into(),
        cluster_name: "munich-1".into(),
        location: Some(ClusterLocation::parse("48.1,11.5,25").unwrap()),
        cluster_id: None,
        version: "0.1.0".into(),
    };
    assert_eq!(
        Registration::try_from(pb::RegisterRequest::from(&reg)).unwrap(),
        reg
    );
    let ack = CommandAck {
        id: 7,
        result: Err("no such service".into()),
    };
    assert_eq!(CommandAck::from(pb::CommandAck::from(&ack)), ack);
}

#[test]
fn the_overlay_view_round_trips_and_bad_addresses_name_their_field() {
    use canopy_core::overlay::{GlobalEndpoint, GlobalPeer, GlobalService, GlobalView, Peer};
    let cluster = canopy_core::ClusterId::parse("c1").unwrap();
    let node = NodeId::parse("n1").unwrap();
    let v = GlobalView {
        peers: vec![GlobalPeer {
            cluster: cluster.clone(),
            node: node.clone(),
            peer: Peer {
                subnet: "10.18.0.64".parse().unwrap(),
                underlay: "192.0.2.2".parse().unwrap(),
            },
        }],
        services: vec![GlobalService {
            id: ServiceId::parse("s1").unwrap(),
            name: "a.b.c.d".into(),
            rr_ip: "10.30.55.55".parse().unwrap(),
            closest_ip: None,
            instances: vec![GlobalEndpoint {
                instance: InstanceNumber(3),
                instance_ip: Some("10.30.0.9".parse().unwrap()),
                address: "10.18.0.66".parse().unwrap(),
                cluster,
                node,
            }],
        }],
    };
    let wire = pb::OverlayView::from(&v);
    assert_eq!(GlobalView::try_from(wire.clone()).unwrap(), v);
    let mut bad = wire;
    bad.services[0].instances[0].address = "nope".into();
    let e = GlobalView::try_from(bad).unwrap_err();
    assert_eq!(e.field, "services[0].instances[0].address");
}

#[test]
fn invalid_wire_messages_name_the_field() {
    let mut c = pb::Command::from(&deploy());
    let Some(pb::command::Action::Deploy(d)) = c.action.as_mut() else {
        unreachable!()
    };
    let wire_spec = d.spec.as_mut().unwrap();
    wire_spec.ports[0].host = 70000;
    wire_spec.environment.push("BROKEN".into());
    let e = Command::try_from(c.clone()).unwrap_err();
    assert_eq!(e.field, "deploy.spec.ports[0].host");

    let mut s = pb::ServiceSpec::from(&spec());
    if let Some(pb::probe::Check::Http(h)) =
        s.readiness_probe.as_mut().and_then(|p| p.check.as_mut())
    {
        h.port = 0;
    }
    let e = ServiceSpec::try_from(s).unwrap_err();
    assert_eq!(e.field, "readiness_probe.http.port");
    let mut s = pb::ServiceSpec::from(&spec());
    s.liveness_probe.as_mut().unwrap().failure_threshold = 0;
    let e = ServiceSpec::try_from(s).unwrap_err();
    assert_eq!(e.field, "liveness_probe.failure_threshold");

    // A cluster from before probes sends no readiness: the instance counts as ready.
    let mut old = pb::InstanceReport::from(&report());
    old.ready = None;
    assert!(InstanceReport::try_from(old).unwrap().ready);

    let mut bad = pb::InstanceReport::from(&report());
    bad.status = 999;
    assert_eq!(
        InstanceReport::try_from(bad.clone()).unwrap_err().field,
        "status"
    );
    bad.status = 0;
    assert_eq!(
        InstanceReport::try_from(bad.clone()).unwrap_err().reason,
        "is unspecified"
    );
    bad = pb::InstanceReport::from(&report());
    bad.cpu_percent = f64::NAN;
    assert_eq!(
        InstanceReport::try_from(bad).unwrap_err().field,
        "cpu_percent"
    );

    let mut s = pb::ServiceSpec::from(&spec());
    s.job_name = "a.b.c".into();
    assert_eq!(ServiceSpec::try_from(s).unwrap_err().field, "job_name");
    let mut s = pb::ServiceSpec::from(&spec());
    s.virtualization = 0;
    assert_eq!(
        ServiceSpec::try_from(s).unwrap_err().field,
        "virtualization"
    );
    let mut s = pb::ServiceSpec::from(&spec());
    s.constraints[2] = pb::Constraint {
        kind: Some(pb::constraint::Kind::Geo(pb::Geo {
            lat: 100.0,
            lon: 0.0,
            radius_km: 1.0,
        })),
    };
    assert_eq!(
        ServiceSpec::try_from(s).unwrap_err().field,
        "constraints[2].geo"
    );

    let mut r = pb::ClusterReport::from(&ClusterReport::default());
    r.per_architecture.insert("vax".into(), Default::default());
    assert_eq!(
        ClusterReport::try_from(r).unwrap_err().field,
        "per_architecture[\"vax\"]"
    );
    let reg = pb::RegisterRequest {
        join_token: String::new(),
        cluster_name: "c".into(),
        ..Default::default()
    };
    assert_eq!(Registration::try_from(reg).unwrap_err().field, "join_token");
    let reg = pb::RegisterRequest {
        join_token: "t".into(),
        cluster_name: "bad name".into(),
        ..Default::default()
    };
    let status: Status = Registration::try_from(reg).unwrap_err().into();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("cluster_name:"),
        "{}",
        status.message()
    );
}

/// A minimal root: checks the token, answers Hello with Welcome, sends one command, and
/// acknowledges each instance report.
struct TestRoot;

type RootStream = Pin<Box<dyn Stream<Item = Result<pb::RootMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ClusterLink for TestRoot {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let reg = Registration::try_from(req.into_inner())?;
        if reg.join_token != "secret" {
            return Err(Status::unauthenticated("wrong join token"));
        }
        Ok(Response::new(pb::RegisterResponse {
            cluster_id: format!("cluster-{}", reg.cluster_name),
            session_token: "session".into(),
        }))
    }

    async fn allocate_subnet(
        &self,
        _: Request<pb::SubnetRequest>,
    ) -> Result<Response<pb::SubnetGrant>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn release_subnet(
        &self,
        _: Request<pb::SubnetRequest>,
    ) -> Result<Response<pb::SubnetGrant>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type SessionStream = RootStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::ClusterMessage>>,
    ) -> Result<Response<RootStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                let reply = match msg.body {
                    Some(cluster_message::Body::Hello(h)) if h.session_token == "session" => vec![
                        root_message::Body::Welcome(pb::Welcome { last_acked_seq: 0 }),
                        root_message::Body::Command(pb::Command::from(&deploy())),
                    ],
                    Some(cluster_message::Body::Instance(r)) => match InstanceReport::try_from(r) {
                        Ok(r) => vec![root_message::Body::StatusAck(pb::StatusAck { seq: r.seq })],
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    },
                    _ => vec![],
                };
                for body in reply {
                    if tx
                        .send(Ok(pb::RootMessage { body: Some(body) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test]
async fn register_and_hold_a_session_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterLinkServer::new(TestRoot))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let mut client = ClusterLinkClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut reg = Registration {
        join_token: "wrong".into(),
        cluster_name: "munich".into(),
        location: None,
        cluster_id: None,
        version: "0.1.0".into(),
    };
    let refused = client
        .register(pb::RegisterRequest::from(&reg))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    reg.join_token = "secret".into();
    let registered = client
        .register(pb::RegisterRequest::from(&reg))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.cluster_id, "cluster-munich");

    let (tx, rx) = mpsc::channel(16);
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let send = |body| pb::ClusterMessage { body: Some(body) };
    tx.send(send(cluster_message::Body::Hello(pb::Hello {
        cluster_id: registered.cluster_id.clone(),
        session_token: registered.session_token.clone(),
    })))
    .await
    .unwrap();

    let first = inbound.next().await.unwrap().unwrap();
    assert!(matches!(first.body, Some(root_message::Body::Welcome(_))));
    let second = inbound.next().await.unwrap().unwrap();
    let Some(root_message::Body::Command(cmd)) = second.body else {
        panic!("expected a command, got {second:?}")
    };
    assert_eq!(Command::try_from(cmd).unwrap(), deploy());

    tx.send(send(cluster_message::Body::Instance(
        pb::InstanceReport::from(&report()),
    )))
    .await
    .unwrap();
    let ack = inbound.next().await.unwrap().unwrap();
    assert_eq!(
        ack.body,
        Some(root_message::Body::StatusAck(pb::StatusAck { seq: 41 }))
    );

    // An invalid report ends the session with InvalidArgument naming the field.
    let mut bad = pb::InstanceReport::from(&report());
    bad.service_id = String::new();
    tx.send(send(cluster_message::Body::Instance(bad)))
        .await
        .unwrap();
    let err = inbound.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("service_id:"),
        "{}",
        err.message()
    );

    drop(tx);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
