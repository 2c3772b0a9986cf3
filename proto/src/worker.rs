//! The contract between a cluster and its workers: the registration body (HTTP, port 10100) and
//! the MQTT topics and JSON payloads (port 10003), with Oakestra's topic strings and keys
//! (spec §5). Canopy adds a last-will topic, per-node MQTT credentials in the registration
//! answer, `_id` in delete messages, `instance_ip` and the health probes
//! (`readiness_probe`, `liveness_probe`) in deploy messages, `ns_ip` and `ready` in job
//! statuses; Oakestra's node engine ignores what it does not know.
//!
//! Numbers are read leniently (Oakestra's resource reports send them as strings). Turning a
//! payload into domain values happens here, once, naming the bad field on failure.

use crate::convert::ConvertError;
use canopy_core::job::{EnvVar, PortMapping};
use canopy_core::probe::Probe;
use canopy_core::{
    Architecture, InstanceNumber, InstanceStatus, JobName, NodeId, Resources, ServiceId,
    ServiceSpec, Virtualization,
};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// MQTT topics.
pub mod topics {
    use canopy_core::NodeId;

    /// Node → cluster every 2 s: [`super::NodeInformation`] (the heartbeat).
    pub fn information(node: &NodeId) -> String {
        format!("nodes/{node}/information")
    }
    /// Node → cluster on every instance state change: [`super::JobStatus`].
    pub fn job(node: &NodeId) -> String {
        format!("nodes/{node}/job")
    }
    /// Node → cluster every 2 s: [`super::ResourcesReport`].
    pub fn resources(node: &NodeId) -> String {
        format!("nodes/{node}/jobs/resources")
    }
    /// Cluster → node: [`super::DeployMessage`].
    pub fn deploy(node: &NodeId) -> String {
        format!("nodes/{node}/control/deploy")
    }
    /// Cluster → node: [`super::DeleteMessage`].
    pub fn delete(node: &NodeId) -> String {
        format!("nodes/{node}/control/delete")
    }
    /// Cluster → node: the overlay view its net manager applies
    /// ([`canopy_core::overlay::WorkerView`], the net manager's `PUT /view` body).
    pub fn net_view(node: &NodeId) -> String {
        format!("nodes/{node}/net/view")
    }
    /// The node's last will, published by the broker when its connection dies:
    /// [`super::WillMessage`].
    pub fn will(node: &NodeId) -> String {
        format!("nodes/{node}/will")
    }
    /// Cluster → node: stream an instance's log ([`super::LogOpenMessage`]).
    pub fn log_open(node: &NodeId) -> String {
        format!("nodes/{node}/logs/open")
    }
    /// Cluster → node: more chunks may be sent ([`canopy_core::logs::LogCredit`]).
    pub fn log_credit(node: &NodeId) -> String {
        format!("nodes/{node}/logs/credit")
    }
    /// Cluster → node: the reader went away ([`canopy_core::logs::LogClose`]).
    pub fn log_close(node: &NodeId) -> String {
        format!("nodes/{node}/logs/close")
    }
    /// Node → cluster: part of a streamed log ([`super::LogDataMessage`]).
    pub fn log_data(node: &NodeId) -> String {
        format!("nodes/{node}/logs/data")
    }

    /// What the cluster subscribes to.
    pub const CLUSTER_FILTERS: [&str; 5] = [
        "nodes/+/information",
        "nodes/+/job",
        "nodes/+/jobs/resources",
        "nodes/+/will",
        "nodes/+/logs/data",
    ];

    /// What a node publishes and subscribes under: `nodes/<id>/#`.
    pub fn node_prefix(node: &NodeId) -> String {
        format!("nodes/{node}/#")
    }

    /// A topic the cluster receives, parsed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Incoming {
        Information(NodeId),
        Job(NodeId),
        Resources(NodeId),
        Will(NodeId),
        LogData(NodeId),
    }

    pub fn parse(topic: &str) -> Option<Incoming> {
        let rest = topic.strip_prefix("nodes/")?;
        let (node, kind) = rest.split_once('/')?;
        let node = NodeId::parse(node).ok()?;
        Some(match kind {
            "information" => Incoming::Information(node),
            "job" => Incoming::Job(node),
            "jobs/resources" => Incoming::Resources(node),
            "will" => Incoming::Will(node),
            "logs/data" => Incoming::LogData(node),
            _ => return None,
        })
    }
}

mod lenient {
    //! Numbers that may arrive as JSON numbers or as strings.
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
        Null(()),
    }

    fn to_f64(n: Num) -> Result<f64, String> {
        match n {
            Num::F(f) => Ok(f),
            Num::S(s) if s.trim().is_empty() => Ok(0.0),
            Num::S(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a number")),
            Num::Null(()) => Ok(0.0),
        }
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = to_f64(Num::deserialize(d)?).map_err(serde::de::Error::custom)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(serde::de::Error::custom("not a finite number"))
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = f64(d)?;
        if v < 0.0 || v > u64::MAX as f64 || v.fract() != 0.0 {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a whole number >= 0"
            )));
        }
        Ok(v as u64)
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = u64(d)?;
        u32::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is too large")))
    }
}

fn strings_are<T>(
    list: &[String],
    field: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            parse(s).ok_or_else(|| {
                ConvertError::new(format!("{field}[{i}]"), format!("{s:?} is not known"))
            })
        })
        .collect()
}

/// `POST /api/node/register`: Oakestra's `Node` document (the fields Canopy uses; others are
/// accepted and ignored) plus the node join token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// The node's host name; the same name registers as the same node.
    pub host: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, deserialize_with = "lenient::u32")]
    pub vcpus: u32,
    /// Available memory, MB.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub memory: u64,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub cpu_percent: f64,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub memory_percent: f64,
    #[serde(default, deserialize_with = "lenient::u32")]
    pub vgpus: u32,
    /// Runtimes the node offers (`docker`/`container`, `wasm`, `unikernel`).
    #[serde(default)]
    pub virtualization: Vec<String>,
    #[serde(default)]
    pub supported_addons: Vec<String>,
    /// The node join token.
    #[serde(default)]
    pub token: String,
    /// Canopy: the LAN address the worker's overlay tunnel runs over; empty when the worker
    /// is not on the overlay (`node-engine --no-overlay`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub overlay_address: String,
}

/// What a node offers, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOffer {
    pub architecture: Architecture,
    pub virtualizations: Vec<Virtualization>,
    pub capacity: Resources,
    /// Its tunnel's LAN address, when it is on the overlay.
    pub overlay_address: Option<Ipv4Addr>,
}

impl NodeRegistration {
    /// Checks the fields the cluster relies on.
    pub fn offer(&self) -> Result<NodeOffer, ConvertError> {
        if !canopy_core::naming::is_cluster_name(&self.host) {
            return Err(ConvertError::new(
                "host",
                "must be 1 to 63 letters, digits, '-' or '_'",
            ));
        }
        let architecture = Architecture::parse(&self.architecture).ok_or_else(|| {
            ConvertError::new(
                "architecture",
                format!("{:?} is not a known GOARCH name", self.architecture),
            )
        })?;
        let mut virtualizations = Vec::new();
        for (i, v) in self.virtualization.iter().enumerate() {
            // Runtimes Canopy does not run (crosvm, other containerd runtimes) are skipped.
            match Virtualization::parse(v) {
                Some(v) if !virtualizations.contains(&v) => virtualizations.push(v),
                Some(_) => {}
                None if v.is_empty() => {
                    return Err(ConvertError::new(
                        format!("virtualization[{i}]"),
                        "must not be empty",
                    ));
                }
                None => {}
            }
        }
        if virtualizations.is_empty() {
            return Err(ConvertError::new(
                "virtualization",
                "lists no runtime Canopy can use (container, wasm, unikernel)",
            ));
        }
        let overlay_address = if self.overlay_address.is_empty() {
            None
        } else {
            Some(self.overlay_address.parse().map_err(|_| {
                ConvertError::new(
                    "overlay_address",
                    format!("{:?} is not an IPv4 address", self.overlay_address),
                )
            })?)
        };
        Ok(NodeOffer {
            overlay_address,
            architecture,
            virtualizations,
            capacity: Resources {
                vcpus: self.vcpus,
                memory_mb: self.memory,
                vgpus: self.vgpus,
            },
        })
    }
}

/// The answer to a registration: the node's id and how to reach the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationAnswer {
    pub id: String,
    /// Oakestra's key; the broker host is the cluster's address.
    #[serde(rename = "MQTT_BROKER_PORT")]
    pub mqtt_broker_port: String,
    /// Broker host as the cluster knows it (may be empty: use the cluster's address).
    pub mqtt_host: String,
    pub mqtt_username: String,
    pub mqtt_password: String,
    /// Canopy: the worker's `/26` overlay subnet (network address), when it asked to be on
    /// the overlay.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
}

/// `nodes/<id>/information`: the node's current load (the heartbeat).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInformation {
    #[serde(default)]
    pub ip: String,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub cpu_percent: f64,
    #[serde(default, deserialize_with = "lenient::u32")]
    pub vcpus: u32,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub memory_percent: f64,
    /// Available memory, MB.
    #[serde(default, deserialize_with = "lenient::u64")]
    pub memory: u64,
    #[serde(default, deserialize_with = "lenient::u32")]
    pub vgpus: u32,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub gpu_usage: f64,
}

impl NodeInformation {
    pub fn check(&self) -> Result<(), ConvertError> {
        for (field, v) in [
            ("cpu_percent", self.cpu_percent),
            ("memory_percent", self.memory_percent),
            ("gpu_usage", self.gpu_usage),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(ConvertError::new(
                    field,
                    format!("{v} is not within 0..100"),
                ));
            }
        }
        Ok(())
    }
}

/// `nodes/<id>/job`: one instance changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job name `app.appns.svc.svcns`.
    pub sname: String,
    #[serde(deserialize_with = "lenient::u32")]
    pub instance: u32,
    pub status: String,
    #[serde(default)]
    pub status_detail: String,
    #[serde(default)]
    pub publicip: String,
    /// Canopy: the instance's address on the overlay (its namespace's), when it is on it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ns_ip: String,
    /// Canopy: false while the instance's readiness probe has not passed. Absent (a worker
    /// from before probes, Oakestra's): ready.
    #[serde(default = "canopy_core::probe::ready_by_default")]
    pub ready: bool,
}

/// What a [`JobStatus`] says, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatusEvent {
    pub job: JobName,
    pub instance: InstanceNumber,
    pub status: InstanceStatus,
    /// The worker's explanation (may be empty).
    pub detail: String,
    pub ns_ip: Option<Ipv4Addr>,
    /// Its readiness probe passes (always true without one).
    pub ready: bool,
}

impl JobStatus {
    pub fn parse(&self) -> Result<JobStatusEvent, ConvertError> {
        let job: JobName = self
            .sname
            .parse()
            .map_err(|e: canopy_core::naming::NameError| ConvertError::new("sname", e))?;
        let status: InstanceStatus = self.status.parse().map_err(|_| {
            ConvertError::new("status", format!("{:?} is not a status", self.status))
        })?;
        let ns_ip = if self.ns_ip.is_empty() {
            None
        } else {
            Some(self.ns_ip.parse().map_err(|_| {
                ConvertError::new("ns_ip", format!("{:?} is not an IPv4 address", self.ns_ip))
            })?)
        };
        Ok(JobStatusEvent {
            job,
            instance: InstanceNumber(self.instance),
            status,
            detail: self.status_detail.clone(),
            ns_ip,
            ready: self.ready,
        })
    }
}

/// One entry of `nodes/<id>/jobs/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceResources {
    pub job_name: String,
    #[serde(deserialize_with = "lenient::u32")]
    pub instance: u32,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub cpu_percent: f64,
    #[serde(default, deserialize_with = "lenient::f64")]
    pub memory_percent: f64,
    /// Memory in use, MB (Canopy's addition).
    #[serde(default, deserialize_with = "lenient::u64")]
    pub memory: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub disk: u64,
    /// The tail of the instance's log.
    #[serde(default)]
    pub logs: String,
    #[serde(default)]
    pub virtualization: String,
}

/// `nodes/<id>/jobs/resources`: the running instances and their use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesReport {
    #[serde(default)]
    pub services: Vec<ServiceResources>,
}

/// `nodes/<id>/control/deploy`: start one instance. Oakestra's job document keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployMessage {
    /// The service id.
    #[serde(rename = "_id")]
    pub id: String,
    pub job_name: String,
    pub instance_number: u32,
    /// Image, archive, module or kernel reference (the SLA's `code`).
    pub image: String,
    pub virtualization: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub environment: Vec<String>,
    /// `HOST:CONTAINER/PROTO` entries joined by `;`.
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub vcpus: u32,
    /// Memory limit, MB.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub vgpus: u32,
    #[serde(default)]
    pub one_shot: bool,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub arch: Vec<String>,
    /// The instance's overlay address, when assigned.
    #[serde(default)]
    pub instance_ip: String,
    #[serde(default)]
    pub status: String,
    /// Canopy: the service's health probes ([`Probe`]'s JSON form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
}

/// What a [`DeployMessage`] asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployOrder {
    pub service: ServiceId,
    pub instance: InstanceNumber,
    /// The spec without placement constraints.
    pub spec: ServiceSpec,
    pub instance_ip: Option<Ipv4Addr>,
}

impl DeployMessage {
    pub fn new(
        service: &ServiceId,
        instance: InstanceNumber,
        spec: &ServiceSpec,
        instance_ip: Option<Ipv4Addr>,
    ) -> Self {
        DeployMessage {
            id: service.to_string(),
            job_name: spec.job_name.to_string(),
            instance_number: instance.0,
            image: spec.code.clone(),
            virtualization: spec.virtualization.as_str().to_owned(),
            cmd: spec.cmd.clone(),
            environment: spec.environment.iter().map(ToString::to_string).collect(),
            port: spec
                .ports
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";"),
            vcpus: spec.resources.vcpus,
            memory: spec.resources.memory_mb,
            vgpus: spec.resources.vgpus,
            one_shot: spec.one_shot,
            privileged: spec.privileged,
            arch: spec
                .architectures
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            instance_ip: instance_ip.map(|i| i.to_string()).unwrap_or_default(),
            status: InstanceStatus::NodeScheduled.as_str().to_owned(),
            readiness_probe: spec.readiness_probe.clone(),
            liveness_probe: spec.liveness_probe.clone(),
        }
    }

    /// Checks the message and says what it asks for.
    pub fn parse(&self) -> Result<DeployOrder, ConvertError> {
        let service = ServiceId::parse(self.id.clone()).map_err(|e| ConvertError::new("_id", e))?;
        let job: JobName = self
            .job_name
            .parse()
            .map_err(|e: canopy_core::naming::NameError| ConvertError::new("job_name", e))?;
        let virtualization = Virtualization::parse(&self.virtualization).ok_or_else(|| {
            ConvertError::new(
                "virtualization",
                format!("{:?} is not a runtime Canopy runs", self.virtualization),
            )
        })?;
        if self.image.trim().is_empty() {
            return Err(ConvertError::new("image", "must not be empty"));
        }
        let mut spec = ServiceSpec::new(job, virtualization, self.image.clone());
        spec.cmd = self.cmd.clone();
        spec.environment = self
            .environment
            .iter()
            .enumerate()
            .map(|(i, e)| {
                EnvVar::parse(e).map_err(|m| ConvertError::new(format!("environment[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;
        spec.ports =
            PortMapping::parse_list(&self.port).map_err(|m| ConvertError::new("port", m))?;
        spec.resources = Resources {
            vcpus: self.vcpus,
            memory_mb: self.memory,
            vgpus: self.vgpus,
        };
        spec.one_shot = self.one_shot;
        spec.privileged = self.privileged;
        spec.architectures = strings_are(&self.arch, "arch", Architecture::parse)?;
        for (field, probe) in [
            ("readiness_probe", &self.readiness_probe),
            ("liveness_probe", &self.liveness_probe),
        ] {
            if let Some((name, message)) = probe.as_ref().and_then(Probe::problem) {
                return Err(ConvertError::new(format!("{field}.{name}"), message));
            }
        }
        spec.readiness_probe = self.readiness_probe.clone();
        spec.liveness_probe = self.liveness_probe.clone();
        let instance_ip = if self.instance_ip.is_empty() {
            None
        } else {
            Some(
                self.instance_ip
                    .parse()
                    .map_err(|_| ConvertError::new("instance_ip", "is not an IPv4 address"))?,
            )
        };
        Ok(DeployOrder {
            service,
            instance: InstanceNumber(self.instance_number),
            spec,
            instance_ip,
        })
    }
}

/// `nodes/<id>/control/delete`: stop and remove one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteMessage {
    /// The service id (Canopy's addition).
    #[serde(rename = "_id", default)]
    pub id: String,
    pub job_name: String,
    #[serde(default)]
    pub virtualization: String,
    #[serde(deserialize_with = "lenient::u32")]
    pub instance_number: u32,
}

/// `nodes/<id>/will`: published by the broker when the node's connection dies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WillMessage {
    pub node_id: String,
    pub connected: bool,
}

/// `nodes/<id>/logs/open`: stream one instance's log (Canopy's addition; see
/// [`canopy_core::logs`]). The cluster names the instance by its job name, as in deploys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOpenMessage {
    pub stream: u64,
    pub job_name: String,
    pub instance_number: u32,
    /// Lines before the end to start at; absent: the whole log.
    #[serde(default)]
    pub tail: Option<u32>,
    #[serde(default)]
    pub follow: bool,
    /// Bytes to send at most.
    pub limit: u64,
    /// Chunks to send before the first credit.
    pub window: u32,
}

/// `nodes/<id>/logs/data`: part of a streamed log. `data` is text: a chunk ends at a line or
/// a whole character; bytes that are not UTF-8 arrive as U+FFFD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogDataMessage {
    pub stream: u64,
    pub seq: u64,
    #[serde(default)]
    pub data: String,
    #[serde(default)]
    pub end: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LogDataMessage {
    pub fn new(c: &canopy_core::logs::LogChunk) -> LogDataMessage {
        LogDataMessage {
            stream: c.stream,
            seq: c.seq,
            data: String::from_utf8_lossy(&c.data).into_owned(),
            end: c.end,
            error: c.error.clone(),
        }
    }

    pub fn chunk(self) -> canopy_core::logs::LogChunk {
        canopy_core::logs::LogChunk {
            stream: self.stream,
            seq: self.seq,
            data: self.data.into_bytes(),
            end: self.end,
            error: self.error,
        }
    }
}

/// Checks a node id from a topic against the registry's form.
pub fn node_id(s: &str) -> Result<NodeId, ConvertError> {
    NodeId::parse(s).map_err(|e| ConvertError::new("node_id", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::job::Protocol;

    #[test]
    fn topics_round_trip() {
        let n = NodeId::parse("64f1c0ffee").unwrap();
        assert_eq!(
            topics::parse(&topics::information(&n)),
            Some(topics::Incoming::Information(n.clone()))
        );
        assert_eq!(
            topics::parse(&topics::resources(&n)),
            Some(topics::Incoming::Resources(n.clone()))
        );
        assert_eq!(
            topics::parse(&topics::will(&n)),
            Some(topics::Incoming::Will(n.clone()))
        );
        assert_eq!(
            topics::parse(&topics::log_data(&n)),
            Some(topics::Incoming::LogData(n.clone()))
        );
        assert_eq!(topics::parse(&topics::log_open(&n)), None);
        assert_eq!(topics::parse(&topics::deploy(&n)), None);
        assert_eq!(topics::parse("nodes/x y/job"), None);
        assert_eq!(topics::parse("other/x/job"), None);
    }

    #[test]
    fn oakestra_payloads_parse() {
        // Numbers as strings, as Oakestra's node engine sends them.
        let r: ResourcesReport = serde_json::from_str(
            r#"{"services":[{"cpu_percent":"12.5","memory_percent":"3","disk":"100","logs":"hi","job_name":"a.b.c.d","virtualization":"docker","instance":"0"}]}"#,
        )
        .unwrap();
        assert_eq!(r.services[0].cpu_percent, 12.5);
        assert_eq!(r.services[0].instance, 0);
        let j: JobStatus = serde_json::from_str(
            r#"{"sname":"a.b.c.d","status":"RUNNING","status_detail":"","instance":2,"publicip":"10.0.0.1"}"#,
        )
        .unwrap();
        let JobStatusEvent {
            job,
            instance: n,
            status,
            ready,
            ..
        } = j.parse().unwrap();
        assert_eq!(
            (job.to_string().as_str(), n.0, status, ready),
            ("a.b.c.d", 2, InstanceStatus::Running, true),
            "a status without `ready` (Oakestra's worker) is ready"
        );
        let bad: JobStatus =
            serde_json::from_str(r#"{"sname":"a.b.c.d","status":"SLEEPING","instance":2}"#)
                .unwrap();
        assert_eq!(bad.parse().unwrap_err().field, "status");
        assert!(serde_json::from_str::<NodeInformation>(r#"{"cpu_percent":"lots"}"#).is_err());
        let info: NodeInformation =
            serde_json::from_str(r#"{"cpu_percent":150,"memory":"2048"}"#).unwrap();
        assert_eq!(info.check().unwrap_err().field, "cpu_percent");
    }

    #[test]
    fn registration_is_checked() {
        let mut reg: NodeRegistration = serde_json::from_str(
            r#"{"host":"worker-1","architecture":"amd64","vcpus":4,"memory":"8000","virtualization":["docker","crosvm","wasm"],"token":"t"}"#,
        )
        .unwrap();
        let offer = reg.offer().unwrap();
        assert_eq!(
            offer.virtualizations,
            vec![Virtualization::Container, Virtualization::Wasm]
        );
        assert_eq!(offer.capacity.memory_mb, 8000);
        reg.architecture = "z80".into();
        assert_eq!(reg.offer().unwrap_err().field, "architecture");
        reg.architecture = "arm64".into();
        reg.virtualization = vec!["crosvm".into()];
        assert_eq!(reg.offer().unwrap_err().field, "virtualization");
        reg.host = "bad host".into();
        assert_eq!(reg.offer().unwrap_err().field, "host");
    }

    #[test]
    fn deploy_messages_round_trip() {
        let mut spec = ServiceSpec::new(
            "app.ns.web.ns".parse().unwrap(),
            Virtualization::Container,
            "localhost:5000/busybox:latest",
        );
        spec.cmd = vec!["httpd".into(), "-f".into()];
        spec.environment = vec![EnvVar::parse("A=1").unwrap()];
        spec.ports = vec![PortMapping {
            host: 8080,
            container: 80,
            protocol: Protocol::Tcp,
        }];
        spec.resources.memory_mb = 64;
        spec.one_shot = true;
        spec.architectures = vec![Architecture::Amd64];
        spec.readiness_probe = Some(Probe::new(canopy_core::probe::ProbeCheck::Http {
            path: "/".into(),
            port: 80,
        }));
        spec.liveness_probe = Some(Probe::new(canopy_core::probe::ProbeCheck::Tcp { port: 80 }));
        let sid = ServiceId::parse("svc1").unwrap();
        let ip = "10.30.0.7".parse().ok();
        let m = DeployMessage::new(&sid, InstanceNumber(3), &spec, ip);
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""_id":"svc1""#) && text.contains(r#""image":"#));
        let back: DeployMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.parse().unwrap(),
            DeployOrder {
                service: sid,
                instance: InstanceNumber(3),
                spec,
                instance_ip: ip
            }
        );
        let mut bad = m.clone();
        bad.port = "80:99999".into();
        assert_eq!(bad.parse().unwrap_err().field, "port");
        let mut bad = m.clone();
        bad.liveness_probe.as_mut().unwrap().period_secs = 0;
        assert_eq!(bad.parse().unwrap_err().field, "liveness_probe.period_secs");
        let mut bad = m;
        bad.virtualization = "crosvm".into();
        assert_eq!(bad.parse().unwrap_err().field, "virtualization");
    }
}
