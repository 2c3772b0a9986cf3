//! Per-worker topic rules on a real broker, the embedded one and Mosquitto with dynsec: a worker
//! registered at runtime connects with its issued credentials and may publish, subscribe and
//! leave a last will under `nodes/<its id>/` only. Wrong credentials are refused; the cluster
//! sees a worker's own messages and its own will, never one forged for another worker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::root::TestRoot;
use common::{BrokerKind, TestCluster, TestWorker};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a probe connection saw after its CONNACK.
#[derive(Debug)]
enum Seen {
    SubAck(Vec<SubscribeReasonCode>),
    Message(String),
}

/// A raw MQTT connection made by the test; dropping it kills the socket (no DISCONNECT).
struct Probe {
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    async fn connect(
        port: u16,
        user: &str,
        password: &str,
        client_id: &str,
        will: Option<String>,
    ) -> Result<Probe, String> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(5));
        if let Some(topic) = will {
            opts.set_last_will(LastWill::new(
                topic,
                b"{\"connected\": false}".to_vec(),
                QoS::AtLeastOnce,
                false,
            ));
        }
        let (client, mut events) = AsyncClient::new(opts, 100);
        let (ack_tx, ack) = oneshot::channel();
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut ack_tx = Some(ack_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(a) = ack_tx.take() {
                            let _ = a.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = tx.send(Seen::SubAck(s.return_codes));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Seen::Message(p.topic));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let why = match e {
                            ConnectionError::ConnectionRefused(code) => {
                                format!("refused: {code:?}")
                            }
                            e => e.to_string(),
                        };
                        if let Some(a) = ack_tx.take() {
                            let _ = a.send(Err(why));
                        }
                        // No reconnection: a probe is one connection.
                        return;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .map_err(|_| "no CONNACK within 5 s".to_owned())?
            .map_err(|_| "the probe stopped".to_owned())??;
        Ok(Probe { client, seen, task })
    }

    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.seen.recv()).await {
                Ok(Some(Seen::SubAck(codes))) => return codes[0],
                Ok(Some(Seen::Message(_))) => {}
                other => panic!("no SUBACK for {filter}: {other:?}"),
            }
        }
    }

    async fn publish(&self, topic: String, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The topics of the messages received so far.
    fn received(&mut self) -> Vec<String> {
        let mut topics = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            if let Seen::Message(t) = s {
                topics.push(t);
            }
        }
        topics
    }
}

/// The cluster's count of worker messages of one kind received.
async fn received_by_cluster(cluster: &TestCluster, kind: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", cluster.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("canopy_cluster_mqtt_messages_total{")
                && l.contains("direction=\"in\"")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_count(cluster: &TestCluster, kind: &str, at_least: u64) {
    for _ in 0..100 {
        if received_by_cluster(cluster, kind).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the cluster never received {at_least} {kind} messages");
}

async fn is_active(cluster: &TestCluster, w: &TestWorker) -> bool {
    cluster
        .cluster
        .workers()
        .await
        .iter()
        .any(|v| v.doc.id == w.id && v.active)
}

fn job(name: &str) -> String {
    serde_json::json!({"sname": name, "instance": 0, "status": "RUNNING", "status_detail": "",
                       "publicip": "127.0.0.1"})
    .to_string()
}

async fn a_worker_stays_under_its_own_topics(kind: BrokerKind) {
    let started = std::time::Instant::now();
    let embedded = matches!(kind, BrokerKind::Embedded);
    let root = TestRoot::start().await;
    let (cluster, mosquitto, _dir) = common::cluster_on(&kind, &root).await;
    let port = cluster.mqtt_port;

    // Credentials issued at runtime, by registration, work (the test workers connect with
    // them, a last will on their own topic, and subscribe to their own control topics).
    let a = TestWorker::join(&cluster, "worker-a").await;
    let b = TestWorker::join(&cluster, "worker-b").await;
    cluster.wait_workers(2).await;
    let (a_user, a_pw) = (
        a.answer.mqtt_username.clone(),
        a.answer.mqtt_password.clone(),
    );
    let (b_user, b_pw) = (
        b.answer.mqtt_username.clone(),
        b.answer.mqtt_password.clone(),
    );

    // Wrong credentials are refused.
    assert!(
        Probe::connect(port, &a_user, "not-the-password", "x1", None)
            .await
            .is_err()
    );
    assert!(
        Probe::connect(port, "nobody", &a_pw, "x2", None)
            .await
            .is_err()
    );
    assert!(
        Probe::connect(port, &a_user, &b_pw, "x3", None)
            .await
            .is_err()
    );

    // B watches its own topics (which it may); A tries to watch them and everything.
    let mut b_spy = Probe::connect(port, &b_user, &b_pw, &format!("{}-spy", b.id), None)
        .await
        .unwrap();
    assert!(matches!(
        b_spy.subscribe(&format!("nodes/{}/#", b.id)).await,
        SubscribeReasonCode::Success(_)
    ));
    // Only under its own client id: another worker's would take over that worker's session.
    // The embedded broker refuses it; Mosquitto's dynsec does not bind client ids (there the
    // attempt would end B's session, so it is not tried).
    if embedded {
        let takeover = Probe::connect(port, &a_user, &a_pw, &format!("{}-ne", b.id), None).await;
        assert!(takeover.is_err(), "A connected under B's client id");
    }
    let mut a_spy = Probe::connect(port, &a_user, &a_pw, &format!("{}-spy", a.id), None)
        .await
        .unwrap();
    assert_eq!(
        a_spy.subscribe(&format!("nodes/{}/#", b.id)).await,
        SubscribeReasonCode::Failure,
        "A may not subscribe to B's topics"
    );
    assert_eq!(
        a_spy.subscribe("#").await,
        SubscribeReasonCode::Failure,
        "A may not subscribe to #"
    );
    assert_eq!(
        a_spy.subscribe("nodes/+/information").await,
        SubscribeReasonCode::Failure,
        "A may not subscribe to every worker's reports"
    );
    assert!(matches!(
        a_spy.subscribe(&format!("nodes/{}/#", a.id)).await,
        SubscribeReasonCode::Success(_)
    ));

    // A forges messages for B: a deploy, a job status, a will.
    let jobs = received_by_cluster(&cluster, "job").await;
    let wills = received_by_cluster(&cluster, "will").await;
    a_spy
        .publish(format!("nodes/{}/control/deploy", b.id), "{}")
        .await;
    a_spy
        .publish(format!("nodes/{}/job", b.id), &job("forged"))
        .await;
    a_spy
        .publish(
            format!("nodes/{}/will", b.id),
            &format!("{{\"node_id\": \"{}\", \"connected\": false}}", b.id),
        )
        .await;
    // A's own job status reaches the cluster (and shows the forged ones were sent before it).
    a_spy
        .publish(format!("nodes/{}/job", a.id), &job("own"))
        .await;
    wait_count(&cluster, "job", jobs + 1).await;
    // Both workers' heartbeats (every 500 ms) have gone out meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(received_by_cluster(&cluster, "job").await, jobs + 1);
    assert_eq!(received_by_cluster(&cluster, "will").await, wills);
    assert!(is_active(&cluster, &b).await, "a forged will took B down");

    let a_saw = a_spy.received();
    assert!(
        a_saw
            .iter()
            .all(|t| t.starts_with(&format!("nodes/{}/", a.id))),
        "A received another worker's messages: {a_saw:?}"
    );
    assert!(
        a_saw.contains(&format!("nodes/{}/information", a.id)),
        "A's own subscription works: {a_saw:?}"
    );
    let b_saw = b_spy.received();
    assert!(
        b_saw.contains(&format!("nodes/{}/information", b.id)),
        "B's own subscription works: {b_saw:?}"
    );
    assert!(
        b_saw
            .iter()
            .all(|t| t == &format!("nodes/{}/information", b.id)),
        "B's topics carried a message forged by A: {b_saw:?}"
    );

    // A last will on B's topic: refused at CONNECT, or (if the broker admits the connection)
    // never delivered when the connection dies.
    match Probe::connect(
        port,
        &a_user,
        &a_pw,
        &format!("{}-will-on-b", a.id),
        Some(format!("nodes/{}/will", b.id)),
    )
    .await
    {
        Err(e) => eprintln!("a will on B's topic: connection {e}"),
        Ok(_) if embedded => panic!("the embedded broker admitted a will on B's topic"),
        Ok(p) => {
            eprintln!("a will on B's topic: connection admitted; killing it");
            drop(p);
        }
    }
    // A's own will, on a connection that dies, reaches the cluster.
    let own = Probe::connect(
        port,
        &a_user,
        &a_pw,
        &format!("{}-will-on-a", a.id),
        Some(format!("nodes/{}/will", a.id)),
    )
    .await
    .expect("a will on the worker's own topic is accepted");
    drop(own);
    wait_count(&cluster, "will", wills + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received_by_cluster(&cluster, "will").await,
        wills + 1,
        "only A's own will arrived"
    );
    assert!(is_active(&cluster, &b).await, "a will set by A took B down");
    let b_saw = b_spy.received();
    assert!(
        !b_saw.contains(&format!("nodes/{}/will", b.id)),
        "B's will topic carried A's will: {b_saw:?}"
    );

    drop((a_spy, b_spy));
    a.kill();
    b.kill();
    cluster.stop().await;
    drop(mosquitto);
    eprintln!("took {:?}", started.elapsed());
}

#[tokio::test]
async fn embedded_broker_keeps_a_worker_under_its_own_topics() {
    a_worker_stays_under_its_own_topics(BrokerKind::Embedded).await;
}

#[tokio::test]
async fn mosquitto_keeps_a_worker_under_its_own_topics() {
    a_worker_stays_under_its_own_topics(BrokerKind::Mosquitto).await;
}
