//! The worker's side of the cluster protocol (spec §5): HTTP registration on the cluster's
//! port 10100, then one MQTT session with the credentials it answered, a last will, and:
//! `control/deploy` and `control/delete` in; `job` on every status change out, and
//! `information` and `jobs/resources` when a sample (every report interval) differs noticeably
//! from the last one sent, at least every refresh interval ([`crate::report`]). Liveness is the
//! MQTT keep-alive: the broker gives a silent worker up after 1.5 keep-alives and publishes its
//! last will. On every (re)connect the status of every instance and the node's information are
//! sent again, so the cluster reconciles after an outage.
//!
//! Nothing here is needed for instances to run: the engine recovers and runs its instances
//! whether or not a cluster answers. Registration and the broker are retried with back-off;
//! refused credentials lead to a new registration.
//!
//! On the overlay, the registration names the worker's tunnel address and the answer carries
//! its subnet, handed to the net manager before the session starts; the overlay views the
//! cluster publishes are relayed to the net manager, newest first (an older one still on its
//! way is dropped).

use crate::engine::{Engine, Refused};
use crate::host::{self, CpuMeter};
use crate::logs::LogStreams;
use crate::report::{Gate, NodeSample};
use canopy_core::logs::{LogClose, LogCredit};
use canopy_core::span::{self, Hop};
use canopy_core::{InstanceStatus, NodeId};
use canopy_proto::worker::{
    DeleteMessage, DeployMessage, JobStatus, LogDataMessage, LogOpenMessage, NodeInformation,
    NodeRegistration, RegistrationAnswer, ResourcesReport, WillMessage, topics,
};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Broker failures in a row after which the engine registers again (the cluster may have
/// been reinstalled, or its broker may have lost the credentials).
const REREGISTER_AFTER_FAILURES: u32 = 5;

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// `HOST:PORT` of the cluster's registration API.
    pub cluster_addr: String,
    pub join_token: String,
    pub name: String,
    /// How often the load is sampled.
    pub report_interval: Duration,
    /// A report goes out at least this often (else only when it changed noticeably).
    pub report_refresh: Duration,
    /// The MQTT keep-alive (the broker gives the worker up after 1.5 times it).
    pub keep_alive: Duration,
    /// The filesystem whose use is reported as disk use.
    pub data_dir: PathBuf,
    /// `--overlay-address`: the LAN address of the worker's tunnel (default: the address the
    /// cluster is reached from). Used only with a net manager.
    pub overlay_address: Option<std::net::Ipv4Addr>,
    /// `--offer-memory-mb`: at most this much memory is offered to the cluster.
    pub offer_memory_mb: Option<u64>,
}

/// What the uplink tells the rest of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Offline,
    Registered(NodeId),
    /// Connected to the broker and subscribed to its control topics.
    Connected(NodeId),
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cluster unreachable: {0}")]
    Unreachable(String),
    #[error("cluster refused the registration ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("cluster answered nonsense: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    NetManager(String),
}

enum SessionEnd {
    Shutdown,
    Reregister,
}

pub struct Uplink {
    engine: Arc<Engine>,
    config: UplinkConfig,
    http: reqwest::Client,
    state: watch::Sender<LinkState>,
}

impl Uplink {
    /// `state` is told how the link stands as it changes.
    pub fn new(
        engine: Arc<Engine>,
        config: UplinkConfig,
        state: watch::Sender<LinkState>,
    ) -> Uplink {
        state.send_replace(LinkState::Offline);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Uplink {
            engine,
            config,
            http,
            state,
        }
    }

    fn registration(&self) -> NodeRegistration {
        let (total, available) = host::memory();
        NodeRegistration {
            host: self.config.name.clone(),
            ip: host::primary_ipv4(),
            port: String::new(),
            architecture: crate::runtime::containerd::oci::host_arch().to_owned(),
            vcpus: host::vcpus(),
            memory: offered_memory_mb(self.config.offer_memory_mb, available >> 20),
            cpu_percent: 0.0,
            memory_percent: used_percent(total, available),
            vgpus: 0,
            virtualization: self.engine.virtualizations(),
            supported_addons: Vec::new(),
            token: self.config.join_token.clone(),
            overlay_address: String::new(),
        }
    }

    /// The LAN address of this worker's tunnel: `--overlay-address`, else the address the
    /// kernel sends from towards the cluster.
    async fn overlay_address(&self) -> Result<std::net::Ipv4Addr, RegisterError> {
        if let Some(a) = self.config.overlay_address {
            return Ok(a);
        }
        let unreachable =
            |e: String| RegisterError::Unreachable(format!("{}: {e}", self.config.cluster_addr));
        let target = tokio::net::lookup_host(&self.config.cluster_addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| unreachable("no IPv4 address".into()))?;
        let probe =
            std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| unreachable(e.to_string()))?;
        probe
            .connect(target)
            .map_err(|e| unreachable(e.to_string()))?;
        match probe
            .local_addr()
            .map_err(|e| unreachable(e.to_string()))?
            .ip()
        {
            std::net::IpAddr::V4(ip) => Ok(ip),
            std::net::IpAddr::V6(_) => Err(unreachable("no IPv4 route".into())),
        }
    }

    /// One registration attempt.
    pub async fn register(&self) -> Result<RegistrationAnswer, RegisterError> {
        let mut body = self.registration();
        body.vgpus = host::gpus().await.0;
        let net = self.engine.net_manager();
        if net.is_some() {
            body.overlay_address = self.overlay_address().await?.to_string();
        }
        let url = format!("http://{}/api/node/register", self.config.cluster_addr);
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| RegisterError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(RegisterError::Refused {
                status: status.as_u16(),
                body: text,
            });
        }
        let answer: RegistrationAnswer =
            serde_json::from_str(&text).map_err(|e| RegisterError::BadAnswer(e.to_string()))?;
        if let Some(net) = net {
            let subnet: std::net::Ipv4Addr = answer.subnet.parse().map_err(|_| {
                RegisterError::BadAnswer(format!(
                    "subnet: {:?} is not a worker subnet (is the cluster older than this worker?)",
                    answer.subnet
                ))
            })?;
            let underlay = body
                .overlay_address
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            net.configure(subnet, underlay)
                .await
                .map_err(|e| RegisterError::NetManager(e.to_string()))?;
            tracing::info!(%subnet, %underlay, "overlay configured");
        }
        Ok(answer)
    }

    /// Runs until `shutdown`: register, hold the session, start again when it ends.
    pub async fn run(
        self,
        mut updates: mpsc::UnboundedReceiver<JobStatus>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(250);
        loop {
            let answer = tokio::select! {
                _ = &mut shutdown => return,
                r = self.register() => r,
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "registration failed");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let Ok(id) = NodeId::parse(answer.id.clone()) else {
                tracing::error!(id = %answer.id, "cluster gave a malformed node id");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            backoff = Duration::from_millis(250);
            tracing::info!(node = %id, "registered with the cluster");
            self.state.send_replace(LinkState::Registered(id.clone()));
            match self
                .session(&id, &answer, &mut updates, &mut shutdown)
                .await
            {
                SessionEnd::Shutdown => return,
                SessionEnd::Reregister => {
                    self.state.send_replace(LinkState::Offline);
                }
            }
        }
    }

    fn mqtt_options(&self, id: &NodeId, answer: &RegistrationAnswer) -> Option<MqttOptions> {
        let host = if answer.mqtt_host.is_empty() {
            self.config
                .cluster_addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                .unwrap_or_else(|| self.config.cluster_addr.clone())
        } else {
            answer.mqtt_host.clone()
        };
        let port: u16 = answer.mqtt_broker_port.parse().ok()?;
        let will = WillMessage {
            node_id: id.to_string(),
            connected: false,
        };
        let mut opts = MqttOptions::new(format!("{id}-ne"), host, port);
        opts.set_keep_alive(self.config.keep_alive)
            .set_clean_session(true)
            .set_credentials(answer.mqtt_username.clone(), answer.mqtt_password.clone())
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_last_will(LastWill::new(
                topics::will(id),
                serde_json::to_vec(&will).unwrap_or_default(),
                QoS::AtLeastOnce,
                false,
            ));
        Some(opts)
    }

    async fn session(
        &self,
        id: &NodeId,
        answer: &RegistrationAnswer,
        updates: &mut mpsc::UnboundedReceiver<JobStatus>,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> SessionEnd {
        let Some(opts) = self.mqtt_options(id, answer) else {
            tracing::error!(port = %answer.mqtt_broker_port, "cluster gave a malformed broker port");
            return SessionEnd::Reregister;
        };
        let (client, mut events) = AsyncClient::new(opts, 1000);
        events.set_network_options(nodelay());
        let mut out = Outbox::default();
        // Sampling (containerd stats, nvidia-smi) runs in a task of its own: this loop must
        // keep polling the connection, or its keep-alive pings are late and the broker gives
        // the worker up.
        let (samples_tx, mut samples) = mpsc::channel(1);
        let sampler = tokio::spawn(self.sampler().run(self.config.report_interval, samples_tx));
        let mut latest: Option<NodeSample> = None;
        let mut node_gate = Gate::<NodeSample>::new(self.config.report_refresh);
        let mut resources_gate = Gate::<ResourcesReport>::new(self.config.report_refresh);
        let mut connected = false;
        let mut failures = 0u32;
        let mut pending_subacks = 0usize;
        let mut backoff = Duration::from_millis(100);
        let views = self.engine.net_manager().cloned().map(relay_views);
        let (logs, mut log_chunks) = LogStreams::new(crate::logs::POLL);
        let end = loop {
            tokio::select! {
                _ = shutdown.as_mut() => break SessionEnd::Shutdown,
                u = updates.recv() => {
                    match u {
                        Some(status) if connected => {
                            self.publish(&mut out, &client, topics::job(id), &status, "job");
                            if status.status == InstanceStatus::Running.as_str() {
                                span::mark(Hop::EnginePublished, &status.sname, status.instance);
                            }
                        }
                        Some(_) => {} // sent with the full status list on reconnect
                        None => break SessionEnd::Shutdown,
                    }
                }
                Some(chunk) = log_chunks.recv() => {
                    if connected {
                        self.publish(&mut out, &client, topics::log_data(id), &LogDataMessage::new(&chunk), "log_data");
                    }
                }
                Some((sample, resources)) = samples.recv() => {
                    latest = Some(sample.clone());
                    if !connected {
                        continue;
                    }
                    let now = std::time::Instant::now();
                    if node_gate.admit(&sample, now) {
                        let info = self.information(&sample);
                        self.publish(&mut out, &client, topics::information(id), &info, "information");
                    }
                    // An empty report counts as sent (none is: nothing runs to report on).
                    if resources_gate.admit(&resources, now) && !resources.services.is_empty() {
                        self.publish(&mut out, &client, topics::resources(id), &resources, "resources");
                    }
                }
                e = events.poll() => { out.flush(&client, &self.engine.metrics); match e {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        // The full status list below replaces whatever waited.
                        out.clear();
                        failures = 0;
                        backoff = Duration::from_millis(100);
                        tracing::info!(node = %id, "connected to the cluster's broker");
                        pending_subacks = 0;
                        // Streams of the last connection went with it (their readers were told).
                        logs.close_all();
                        let mut wanted = vec![
                            topics::deploy(id),
                            topics::delete(id),
                            topics::log_open(id),
                            topics::log_credit(id),
                            topics::log_close(id),
                        ];
                        if views.is_some() {
                            wanted.push(topics::net_view(id));
                        }
                        for t in wanted {
                            match client.try_subscribe(t, QoS::AtLeastOnce) {
                                Ok(()) => pending_subacks += 1,
                                Err(e) => tracing::error!(error = %e, "MQTT subscribe failed"),
                            }
                        }
                        // Reconcile: the cluster learns the state of everything held here.
                        for s in self.engine.statuses().await {
                            self.publish(&mut out, &client, topics::job(id), &s, "job");
                        }
                        // The node's information goes out now (the last sample, at most one
                        // report interval old), the first resources whatever they are.
                        node_gate = Gate::new(self.config.report_refresh);
                        resources_gate = Gate::new(self.config.report_refresh);
                        if let Some(sample) = &latest {
                            node_gate.sent(sample, std::time::Instant::now());
                            let info = self.information(sample);
                            self.publish(&mut out, &client, topics::information(id), &info, "information");
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pending_subacks = pending_subacks.saturating_sub(1);
                        if pending_subacks == 0 {
                            // Subscribed: deploys sent from now on reach this worker.
                            self.state.send_replace(LinkState::Connected(id.clone()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let engine = self.engine.clone();
                        if p.topic == topics::deploy(id) {
                            engine.metrics.mqtt_message("in", "deploy");
                            match decode_deploy(&p.payload) {
                                Ok(msg) => {
                                    span::mark(Hop::EngineReceived, &msg.job_name, msg.instance_number);
                                    tokio::spawn(async move {
                                        if let Err(r) = engine.deploy(msg).await {
                                            engine.refuse(&r);
                                        }
                                    });
                                }
                                Err(Some(r)) => engine.refuse(&r),
                                Err(None) => {}
                            }
                        } else if p.topic == topics::net_view(id) {
                            engine.metrics.mqtt_message("in", "net_view");
                            if let Some(v) = &views {
                                v.send_replace(Some(p.payload.to_vec()));
                            }
                        } else if p.topic == topics::delete(id) {
                            engine.metrics.mqtt_message("in", "delete");
                            if let Some(m) = decode_delete(&p.payload) {
                                tokio::spawn(async move { engine.delete(&m.job_name, m.instance_number).await });
                            }
                        } else if p.topic == topics::log_open(id) {
                            engine.metrics.mqtt_message("in", "log_open");
                            if let Some(m) = decode::<LogOpenMessage>(&p.payload, "log open") {
                                let file = engine.log_file(&m.job_name, m.instance_number).await;
                                logs.open(crate::logs::Request {
                                    stream: m.stream,
                                    tail_lines: m.tail,
                                    follow: m.follow,
                                    limit: m.limit,
                                    window: m.window,
                                }, file);
                            }
                        } else if p.topic == topics::log_credit(id) {
                            if let Some(c) = decode::<LogCredit>(&p.payload, "log credit") {
                                logs.credit(c.stream, c.chunks);
                            }
                        } else if p.topic == topics::log_close(id)
                            && let Some(c) = decode::<LogClose>(&p.payload, "log close")
                        {
                            logs.close(c.stream);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            self.state.send_replace(LinkState::Registered(id.clone()));
                        }
                        connected = false;
                        failures += 1;
                        let refused = matches!(
                            e,
                            ConnectionError::ConnectionRefused(
                                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
                            )
                        );
                        tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection failed");
                        if refused || failures >= REREGISTER_AFTER_FAILURES {
                            break SessionEnd::Reregister;
                        }
                        tokio::select! {
                            _ = shutdown.as_mut() => break SessionEnd::Shutdown,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }}
            }
        };
        sampler.abort();
        if connected {
            let _ = client.try_disconnect();
            // Let the DISCONNECT go out (a clean disconnect does not fire the last will).
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while events.poll().await.is_ok() {}
            })
            .await;
        }
        end
    }

    /// Queues a message for the broker and hands the MQTT client what it has room for.
    fn publish<T: serde::Serialize>(
        &self,
        out: &mut Outbox,
        client: &AsyncClient,
        topic: String,
        body: &T,
        kind: &'static str,
    ) {
        let Ok(payload) = serde_json::to_vec(body) else {
            return;
        };
        out.push(topic, payload, kind);
        out.flush(client, &self.engine.metrics);
    }

    fn sampler(&self) -> Sampler {
        let mut cpu = CpuMeter::default();
        cpu.sample();
        Sampler {
            engine: self.engine.clone(),
            data_dir: self.config.data_dir.clone(),
            offer_memory_mb: self.config.offer_memory_mb,
            cpu,
        }
    }

    /// The `information` report: Oakestra's dynamic fields plus disk use, architecture and
    /// runtimes (extra keys are ignored by clusters that do not read them).
    fn information(&self, sample: &NodeSample) -> serde_json::Value {
        let mut v = serde_json::to_value(&sample.info).unwrap_or_default();
        v["disk_info"] = serde_json::json!({ "/": sample.disk_percent });
        v["architecture"] = crate::runtime::containerd::oci::host_arch().into();
        v["virtualization"] = self.engine.virtualizations().into();
        v
    }
}

/// The memory offered to the cluster: what is available, at most `--offer-memory-mb`.
fn offered_memory_mb(cap: Option<u64>, available_mb: u64) -> u64 {
    cap.map_or(available_mb, |cap| cap.min(available_mb))
}

/// Takes the samples the reports are made of, every report interval, in a task of its own.
struct Sampler {
    engine: Arc<Engine>,
    data_dir: PathBuf,
    offer_memory_mb: Option<u64>,
    cpu: CpuMeter,
}

impl Sampler {
    /// Sends a sample every `interval` until the receiver is gone.
    async fn run(mut self, interval: Duration, to: mpsc::Sender<(NodeSample, ResourcesReport)>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let sample = (self.node().await, self.engine.resources().await);
            if to.send(sample).await.is_err() {
                return;
            }
        }
    }

    /// The node's load now.
    async fn node(&mut self) -> NodeSample {
        let (total, available) = host::memory();
        let (vgpus, gpu_usage) = host::gpus().await;
        NodeSample {
            info: NodeInformation {
                ip: host::primary_ipv4(),
                cpu_percent: self.cpu.sample(),
                vcpus: host::vcpus(),
                memory_percent: used_percent(total, available),
                memory: offered_memory_mb(self.offer_memory_mb, available >> 20),
                vgpus,
                gpu_usage,
            },
            disk_percent: host::disk_used_percent(&self.data_dir),
        }
    }
}

/// A `control/deploy` payload. A payload that does not decode is `Err`: with the refusal to
/// report when it names its instance (a detail naming the bad field), `None` when it does not
/// even do that (it is logged and dropped).
fn decode_deploy(payload: &[u8]) -> Result<DeployMessage, Option<Refused>> {
    let value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "deploy message is not JSON; dropped");
            return Err(None);
        }
    };
    canopy_daemon::json_body::<DeployMessage>(payload).map_err(|e| {
        tracing::warn!(field = %e.field, error = %e.message, "bad deploy message");
        let job = value.get("job_name").and_then(|v| v.as_str());
        let n = value
            .get("instance_number")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        job.zip(n).map(|(job, n)| Refused {
            job_name: job.to_owned(),
            instance: n,
            detail: format!("{}: {}", e.field, e.message),
        })
    })
}

/// Starts the task that hands overlay views to the net manager: the newest first, each one
/// once (a view equal to the last applied is skipped); it ends when the sender is dropped.
fn relay_views(net: crate::overlay::NetManager) -> watch::Sender<Option<Vec<u8>>> {
    let (tx, mut rx) = watch::channel::<Option<Vec<u8>>>(None);
    tokio::spawn(async move {
        let mut applied: Option<Vec<u8>> = None;
        while rx.changed().await.is_ok() {
            let Some(view) = rx.borrow_and_update().clone() else {
                continue;
            };
            if applied.as_ref() == Some(&view) {
                continue;
            }
            match net.apply_view(view.clone()).await {
                Ok(()) => applied = Some(view),
                Err(e) => {
                    tracing::warn!(error = %e, "the net manager did not take the overlay view")
                }
            }
        }
    });
    tx
}

/// A `control/delete` payload; one that does not decode is logged and dropped.
fn decode_delete(payload: &[u8]) -> Option<DeleteMessage> {
    decode(payload, "delete")
}

/// A payload of type `T`; one that does not decode is logged (as `what`) and dropped.
fn decode<T: serde::de::DeserializeOwned>(payload: &[u8], what: &str) -> Option<T> {
    canopy_daemon::json_body::<T>(payload)
        .map_err(
            |e| tracing::warn!(field = %e.field, error = %e.message, "bad {what} message dropped"),
        )
        .ok()
}

/// Small messages go out at once: with Nagle's algorithm a status sent right after another
/// waits for the broker's delayed ACK (about 40 ms).
pub fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

fn used_percent(total: u64, available: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (total.saturating_sub(available)) as f64 / total as f64 * 100.0
    }
}

/// Messages waiting for room in the MQTT client's request queue, oldest first. The client's
/// queue is drained by its event loop, which runs in the same task as the publishes: a burst of
/// statuses (hundreds of instances deployed at once) would otherwise overflow it and lose
/// them. They wait here instead and go out, in order, as the event loop makes room.
#[derive(Default)]
struct Outbox {
    waiting: std::collections::VecDeque<(String, Vec<u8>, &'static str)>,
}

impl Outbox {
    /// More than this many waiting (the broker has stopped taking messages): the oldest go.
    const MAX: usize = 100_000;

    fn push(&mut self, topic: String, payload: Vec<u8>, kind: &'static str) {
        if self.waiting.len() >= Self::MAX
            && let Some((_, _, lost)) = self.waiting.pop_front()
        {
            tracing::warn!(kind = lost, "MQTT publish dropped: too many waiting");
        }
        self.waiting.push_back((topic, payload, kind));
    }

    /// Hands the client every waiting message it has room for, oldest first.
    fn flush(&mut self, client: &AsyncClient, metrics: &crate::metrics::Metrics) {
        while let Some((topic, payload, kind)) = self.waiting.front() {
            if client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .is_err()
            {
                return;
            }
            metrics.mqtt_message("out", kind);
            self.waiting.pop_front();
        }
    }

    fn clear(&mut self) {
        self.waiting.clear();
    }
}
