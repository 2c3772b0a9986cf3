//! Domain ↔ wire. Every wire → domain conversion is a `TryFrom` that names the offending field;
//! domain → wire is infallible (`From`).

use crate::pb;
use canopy_core::job::{Constraint, EnvVar, GeoPoint, PortMapping, Protocol};
use canopy_core::link::{
    ClusterLocation, ClusterReport, Command, CommandAck, CommandAction, InstanceReport,
    InstanceUsage, NodeSummary, Registration, ResourceAggregate,
};
use canopy_core::logs::{LogChunk, LogClose, LogCredit, LogOpen};
use canopy_core::overlay::{GlobalEndpoint, GlobalPeer, GlobalService, GlobalView, Peer};
use canopy_core::probe::{Probe, ProbeCheck};
use canopy_core::{
    Architecture, ClusterId, InstanceNumber, InstanceStatus, JobName, NodeId, Resources, ServiceId,
    ServiceSpec, Virtualization,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    /// Path of the field inside the message, e.g. `spec.ports[1].host`.
    pub field: String,
    pub reason: String,
}

impl ConvertError {
    pub(crate) fn new(field: impl Into<String>, reason: impl ToString) -> Self {
        ConvertError {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Prefixes the field path with the enclosing field.
    fn inside(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| ConvertError::new(field, "is required"))
}

fn percent(v: f64, field: &str) -> Result<f64> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConvertError::new(
            field,
            format!("{v} is not within 0..100"),
        ))
    }
}

/// An IPv4 address in a text field where empty means none.
fn optional_ip(s: String, field: &str) -> Result<Option<Ipv4Addr>> {
    optional_text(s)
        .map(|t| {
            t.parse()
                .map_err(|_| ConvertError::new(field, format!("{t:?} is not an IPv4 address")))
        })
        .transpose()
}

/// A required IPv4 address in a text field.
fn ip(s: &str, field: &str) -> Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| ConvertError::new(field, format!("{s:?} is not an IPv4 address")))
}

fn optional_text(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

// ---- enums ----

impl From<InstanceStatus> for pb::InstanceStatus {
    fn from(s: InstanceStatus) -> Self {
        use pb::InstanceStatus as P;
        match s {
            InstanceStatus::Requested => P::Requested,
            InstanceStatus::ClusterScheduled => P::ClusterScheduled,
            InstanceStatus::NodeScheduled => P::NodeScheduled,
            InstanceStatus::TargetClusterNotFound => P::TargetClusterNotFound,
            InstanceStatus::TargetClusterNotActive => P::TargetClusterNotActive,
            InstanceStatus::TargetClusterNoCapacity => P::TargetClusterNoCapacity,
            InstanceStatus::NoActiveClusterWithCapacity => P::NoActiveClusterWithCapacity,
            InstanceStatus::NoWorkerCapacity => P::NoWorkerCapacity,
            InstanceStatus::NoQualifiedWorkerFound => P::NoQualifiedWorkerFound,
            InstanceStatus::NoNodeFound => P::NoNodeFound,
            InstanceStatus::Creating => P::Creating,
            InstanceStatus::Created => P::Created,
            InstanceStatus::Running => P::Running,
            InstanceStatus::Failed => P::Failed,
            InstanceStatus::Dead => P::Dead,
            InstanceStatus::Completed => P::Completed,
            InstanceStatus::Undeployed => P::Undeployed,
            InstanceStatus::Stopped => P::Stopped,
        }
    }
}

/// Decodes a wire status; unknown numbers and `UNSPECIFIED` are errors.
pub fn status_from_wire(v: i32, field: &str) -> Result<InstanceStatus> {
    use pb::InstanceStatus as P;
    let p = P::try_from(v).map_err(|_| ConvertError::new(field, format!("unknown status {v}")))?;
    InstanceStatus::ALL
        .iter()
        .copied()
        .find(|s| P::from(*s) == p)
        .ok_or_else(|| ConvertError::new(field, "is unspecified"))
}

impl From<Virtualization> for pb::Virtualization {
    fn from(v: Virtualization) -> Self {
        match v {
            Virtualization::Container => pb::Virtualization::Container,
            Virtualization::Unikernel => pb::Virtualization::Unikernel,
            Virtualization::Wasm => pb::Virtualization::Wasm,
        }
    }
}

fn virtualization_from_wire(v: i32, field: &str) -> Result<Virtualization> {
    match pb::Virtualization::try_from(v) {
        Ok(pb::Virtualization::Container) => Ok(Virtualization::Container),
        Ok(pb::Virtualization::Unikernel) => Ok(Virtualization::Unikernel),
        Ok(pb::Virtualization::Wasm) => Ok(Virtualization::Wasm),
        Ok(pb::Virtualization::Unspecified) => Err(ConvertError::new(field, "is unspecified")),
        Err(_) => Err(ConvertError::new(
            field,
            format!("unknown virtualization {v}"),
        )),
    }
}

// ---- resources and reports ----

impl From<Resources> for pb::Resources {
    fn from(r: Resources) -> Self {
        pb::Resources {
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            vgpus: r.vgpus,
        }
    }
}

impl From<pb::Resources> for Resources {
    fn from(r: pb::Resources) -> Self {
        Resources {
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            vgpus: r.vgpus,
        }
    }
}

impl From<&ResourceAggregate> for pb::ResourceAggregate {
    fn from(a: &ResourceAggregate) -> Self {
        pb::ResourceAggregate {
            active_nodes: a.active_nodes,
            free: Some(a.free.into()),
            cpu_percent: a.cpu_percent,
            memory_percent: a.memory_percent,
            virtualizations: a
                .virtualizations
                .iter()
                .map(|v| pb::Virtualization::from(*v) as i32)
                .collect(),
            supported_addons: a.supported_addons.iter().cloned().collect(),
            csi_drivers: a.csi_drivers.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::ResourceAggregate> for ResourceAggregate {
    type Error = ConvertError;
    fn try_from(a: pb::ResourceAggregate) -> Result<Self> {
        Ok(ResourceAggregate {
            active_nodes: a.active_nodes,
            free: a.free.map(Resources::from).unwrap_or_default(),
            cpu_percent: percent(a.cpu_percent, "cpu_percent")?,
            memory_percent: percent(a.memory_percent, "memory_percent")?,
            virtualizations: a
                .virtualizations
                .into_iter()
                .enumerate()
                .map(|(i, v)| virtualization_from_wire(v, &format!("virtualizations[{i}]")))
                .collect::<Result<_>>()?,
            supported_addons: a.supported_addons.into_iter().collect(),
            csi_drivers: a.csi_drivers.into_iter().collect(),
        })
    }
}

impl From<&ClusterReport> for pb::ClusterReport {
    fn from(r: &ClusterReport) -> Self {
        pb::ClusterReport {
            total: Some((&r.total).into()),
            per_architecture: r
                .per_architecture
                .iter()
                .map(|(a, agg)| (a.as_str().to_owned(), agg.into()))
                .collect(),
            nodes: r.nodes.iter().map(Into::into).collect(),
            usage: r.usage.iter().map(Into::into).collect(),
        }
    }
}

impl From<&NodeSummary> for pb::NodeSummary {
    fn from(n: &NodeSummary) -> Self {
        pb::NodeSummary {
            node_id: n.id.to_string(),
            name: n.name.clone(),
            active: n.active,
            architecture: n.architecture.as_str().to_owned(),
            virtualizations: n
                .virtualizations
                .iter()
                .map(|v| pb::Virtualization::from(*v) as i32)
                .collect(),
            cpu_percent: n.cpu_percent,
            memory_percent: n.memory_percent,
            instances: n.instances,
            subnet: n.overlay.map(|p| p.subnet.to_string()).unwrap_or_default(),
            underlay: n
                .overlay
                .map(|p| p.underlay.to_string())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::NodeSummary> for NodeSummary {
    type Error = ConvertError;
    fn try_from(n: pb::NodeSummary) -> Result<Self> {
        Ok(NodeSummary {
            id: NodeId::parse(n.node_id).map_err(|e| ConvertError::new("node_id", e))?,
            name: n.name,
            active: n.active,
            architecture: Architecture::parse(&n.architecture)
                .ok_or_else(|| ConvertError::new("architecture", "unknown architecture"))?,
            virtualizations: n
                .virtualizations
                .into_iter()
                .enumerate()
                .map(|(i, v)| virtualization_from_wire(v, &format!("virtualizations[{i}]")))
                .collect::<Result<_>>()?,
            cpu_percent: percent(n.cpu_percent, "cpu_percent")?,
            memory_percent: percent(n.memory_percent, "memory_percent")?,
            instances: n.instances,
            overlay: match (
                optional_ip(n.subnet, "subnet")?,
                optional_ip(n.underlay, "underlay")?,
            ) {
                (Some(subnet), Some(underlay)) => Some(Peer { subnet, underlay }),
                (None, None) => None,
                _ => {
                    return Err(ConvertError::new(
                        "subnet",
                        "subnet and underlay come together",
                    ));
                }
            },
        })
    }
}

impl From<&InstanceUsage> for pb::InstanceUsage {
    fn from(u: &InstanceUsage) -> Self {
        pb::InstanceUsage {
            service_id: u.service_id.to_string(),
            instance_number: u.instance.0,
            cpu_percent: u.cpu_percent,
            memory_mb: u.memory_mb,
            logs: u.logs.clone(),
        }
    }
}

impl TryFrom<pb::InstanceUsage> for InstanceUsage {
    type Error = ConvertError;
    fn try_from(u: pb::InstanceUsage) -> Result<Self> {
        Ok(InstanceUsage {
            service_id: ServiceId::parse(u.service_id)
                .map_err(|e| ConvertError::new("service_id", e))?,
            instance: InstanceNumber(u.instance_number),
            // Above 100 when an instance uses more than one core.
            cpu_percent: if u.cpu_percent.is_finite() && u.cpu_percent >= 0.0 {
                u.cpu_percent
            } else {
                return Err(ConvertError::new("cpu_percent", "must be a number >= 0"));
            },
            memory_mb: u.memory_mb,
            logs: u.logs,
        })
    }
}

impl TryFrom<pb::ClusterReport> for ClusterReport {
    type Error = ConvertError;
    fn try_from(r: pb::ClusterReport) -> Result<Self> {
        let total = ResourceAggregate::try_from(required(r.total, "total")?)
            .map_err(|e| e.inside("total"))?;
        let mut per_architecture = BTreeMap::new();
        for (name, agg) in r.per_architecture {
            let field = format!("per_architecture[{name:?}]");
            let arch = Architecture::parse(&name)
                .ok_or_else(|| ConvertError::new(&field, "unknown architecture"))?;
            per_architecture.insert(
                arch,
                ResourceAggregate::try_from(agg).map_err(|e| e.inside(&field))?,
            );
        }
        let nodes = r
            .nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| NodeSummary::try_from(n).map_err(|e| e.inside(&format!("nodes[{i}]"))))
            .collect::<Result<_>>()?;
        let usage = r
            .usage
            .into_iter()
            .enumerate()
            .map(|(i, u)| InstanceUsage::try_from(u).map_err(|e| e.inside(&format!("usage[{i}]"))))
            .collect::<Result<_>>()?;
        Ok(ClusterReport {
            total,
            per_architecture,
            nodes,
            usage,
        })
    }
}

impl From<&InstanceReport> for pb::InstanceReport {
    fn from(r: &InstanceReport) -> Self {
        pb::InstanceReport {
            seq: r.seq,
            service_id: r.service_id.to_string(),
            instance_number: r.instance.0,
            status: pb::InstanceStatus::from(r.status) as i32,
            status_detail: r.detail.clone(),
            node_id: r
                .node_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            cpu_percent: r.cpu_percent,
            memory_mb: r.memory_mb,
            ns_ip: r.ns_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ready: Some(r.ready),
        }
    }
}

impl TryFrom<pb::InstanceReport> for InstanceReport {
    type Error = ConvertError;
    fn try_from(r: pb::InstanceReport) -> Result<Self> {
        Ok(InstanceReport {
            seq: r.seq,
            service_id: ServiceId::parse(r.service_id)
                .map_err(|e| ConvertError::new("service_id", e))?,
            instance: InstanceNumber(r.instance_number),
            status: status_from_wire(r.status, "status")?,
            detail: r.status_detail,
            node_id: optional_text(r.node_id)
                .map(NodeId::parse)
                .transpose()
                .map_err(|e| ConvertError::new("node_id", e))?,
            cpu_percent: percent(r.cpu_percent, "cpu_percent")?,
            memory_mb: r.memory_mb,
            ns_ip: optional_ip(r.ns_ip, "ns_ip")?,
            ready: r.ready.unwrap_or(true),
        })
    }
}

// ---- streamed logs ----

impl From<&LogOpen> for pb::LogOpen {
    fn from(o: &LogOpen) -> Self {
        pb::LogOpen {
            stream: o.stream,
            service_id: o.service.to_string(),
            instance_number: o.instance.0,
            tail_lines: o.tail_lines,
            follow: o.follow,
            limit_bytes: o.limit_bytes,
            window: o.window,
        }
    }
}

impl TryFrom<pb::LogOpen> for LogOpen {
    type Error = ConvertError;
    fn try_from(o: pb::LogOpen) -> Result<Self> {
        if o.window == 0 {
            return Err(ConvertError::new("window", "must be at least 1"));
        }
        Ok(LogOpen {
            stream: o.stream,
            service: ServiceId::parse(o.service_id)
                .map_err(|e| ConvertError::new("service_id", e))?,
            instance: InstanceNumber(o.instance_number),
            tail_lines: o.tail_lines,
            follow: o.follow,
            limit_bytes: o.limit_bytes,
            window: o.window,
        })
    }
}

impl From<&LogCredit> for pb::LogCredit {
    fn from(c: &LogCredit) -> Self {
        pb::LogCredit {
            stream: c.stream,
            chunks: c.chunks,
        }
    }
}

impl From<pb::LogCredit> for LogCredit {
    fn from(c: pb::LogCredit) -> Self {
        LogCredit {
            stream: c.stream,
            chunks: c.chunks,
        }
    }
}

impl From<&LogClose> for pb::LogClose {
    fn from(c: &LogClose) -> Self {
        pb::LogClose { stream: c.stream }
    }
}

impl From<pb::LogClose> for LogClose {
    fn from(c: pb::LogClose) -> Self {
        LogClose { stream: c.stream }
    }
}

impl From<&LogChunk> for pb::LogChunk {
    fn from(c: &LogChunk) -> Self {
        pb::LogChunk {
            stream: c.stream,
            seq: c.seq,
            data: c.data.clone(),
            end: c.end,
            error: c.error.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::LogChunk> for LogChunk {
    fn from(c: pb::LogChunk) -> Self {
        LogChunk {
            stream: c.stream,
            seq: c.seq,
            data: c.data,
            end: c.end,
            error: optional_text(c.error),
        }
    }
}

// ---- registration ----

impl From<&ClusterLocation> for pb::Location {
    fn from(l: &ClusterLocation) -> Self {
        pb::Location {
            lat: l.point.lat,
            lon: l.point.lon,
            radius_km: l.radius_km,
        }
    }
}

impl TryFrom<pb::Location> for ClusterLocation {
    type Error = ConvertError;
    fn try_from(l: pb::Location) -> Result<Self> {
        ClusterLocation::parse(&format!("{},{},{}", l.lat, l.lon, l.radius_km))
            .map_err(|e| ConvertError::new("location", e))
    }
}

impl From<&Registration> for pb::RegisterRequest {
    fn from(r: &Registration) -> Self {
        pb::RegisterRequest {
            join_token: r.join_token.clone(),
            cluster_name: r.cluster_name.clone(),
            location: r.location.as_ref().map(Into::into),
            cluster_id: r
                .cluster_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            version: r.version.clone(),
        }
    }
}

impl TryFrom<pb::RegisterRequest> for Registration {
    type Error = ConvertError;
    fn try_from(r: pb::RegisterRequest) -> Result<Self> {
        if r.join_token.is_empty() {
            return Err(ConvertError::new("join_token", "is required"));
        }
        if !canopy_core::naming::is_cluster_name(&r.cluster_name) {
            return Err(ConvertError::new(
                "cluster_name",
                format!(
                    "{:?} must be 1 to 63 letters, digits, '-' or '_'",
                    r.cluster_name
                ),
            ));
        }
        Ok(Registration {
            join_token: r.join_token,
            cluster_name: r.cluster_name,
            location: r.location.map(ClusterLocation::try_from).transpose()?,
            cluster_id: optional_text(r.cluster_id)
                .map(ClusterId::parse)
                .transpose()
                .map_err(|e| ConvertError::new("cluster_id", e))?,
            version: r.version,
        })
    }
}

// ---- commands ----

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        let action = match &c.action {
            CommandAction::Deploy {
                service_id,
                instance,
                spec,
                instance_ip,
            } => pb::command::Action::Deploy(pb::Deploy {
                service_id: service_id.to_string(),
                instance_number: instance.0,
                spec: Some(spec.as_ref().into()),
                instance_ip: instance_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            }),
            CommandAction::Undeploy {
                service_id,
                instance,
            } => pb::command::Action::Undeploy(pb::Undeploy {
                service_id: service_id.to_string(),
                instance_number: instance.map(|n| n.0),
            }),
        };
        pb::Command {
            command_id: c.id,
            action: Some(action),
        }
    }
}

impl TryFrom<pb::Command> for Command {
    type Error = ConvertError;
    fn try_from(c: pb::Command) -> Result<Self> {
        let service =
            |s: String| ServiceId::parse(s).map_err(|e| ConvertError::new("service_id", e));
        let action = match required(c.action, "action")? {
            pb::command::Action::Deploy(d) => CommandAction::Deploy {
                service_id: service(d.service_id).map_err(|e| e.inside("deploy"))?,
                instance: InstanceNumber(d.instance_number),
                spec: Box::new(
                    ServiceSpec::try_from(required(d.spec, "deploy.spec")?)
                        .map_err(|e| e.inside("deploy.spec"))?,
                ),
                instance_ip: optional_text(d.instance_ip)
                    .map(|s| s.parse())
                    .transpose()
                    .map_err(|e| ConvertError::new("deploy.instance_ip", e))?,
            },
            pb::command::Action::Undeploy(u) => CommandAction::Undeploy {
                service_id: service(u.service_id).map_err(|e| e.inside("undeploy"))?,
                instance: u.instance_number.map(InstanceNumber),
            },
        };
        Ok(Command {
            id: c.command_id,
            action,
        })
    }
}

impl From<&CommandAck> for pb::CommandAck {
    fn from(a: &CommandAck) -> Self {
        pb::CommandAck {
            command_id: a.id,
            error: a.result.clone().err().unwrap_or_default(),
        }
    }
}

impl From<pb::CommandAck> for CommandAck {
    fn from(a: pb::CommandAck) -> Self {
        CommandAck {
            id: a.command_id,
            result: match optional_text(a.error) {
                None => Ok(()),
                Some(e) => Err(e),
            },
        }
    }
}

// ---- service spec ----

impl From<&ServiceSpec> for pb::ServiceSpec {
    fn from(s: &ServiceSpec) -> Self {
        pb::ServiceSpec {
            job_name: s.job_name.to_string(),
            virtualization: pb::Virtualization::from(s.virtualization) as i32,
            code: s.code.clone(),
            cmd: s.cmd.clone(),
            environment: s.environment.iter().map(ToString::to_string).collect(),
            resources: Some(s.resources.into()),
            ports: s
                .ports
                .iter()
                .map(|p| pb::PortMapping {
                    host: p.host.into(),
                    container: p.container.into(),
                    protocol: match p.protocol {
                        Protocol::Tcp => pb::Protocol::Tcp,
                        Protocol::Udp => pb::Protocol::Udp,
                    } as i32,
                })
                .collect(),
            one_shot: s.one_shot,
            privileged: s.privileged,
            architectures: s
                .architectures
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect(),
            constraints: s.constraints.iter().map(constraint_to_wire).collect(),
            rr_ip: s.rr_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            rr_ip_v6: s.rr_ip_v6.map(|ip| ip.to_string()).unwrap_or_default(),
            closest_ip: s.closest_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            readiness_probe: s.readiness_probe.as_ref().map(probe_to_wire),
            liveness_probe: s.liveness_probe.as_ref().map(probe_to_wire),
        }
    }
}

/// A port (1-65535) in a wider wire field.
fn port(v: u32, field: String) -> Result<u16> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ConvertError::new(field, format!("{v} is not a port (1-65535)")))
}

fn probe_to_wire(p: &Probe) -> pb::Probe {
    use pb::probe::Check;
    pb::Probe {
        check: Some(match &p.check {
            ProbeCheck::Http { path, port } => Check::Http(pb::HttpProbe {
                path: path.clone(),
                port: (*port).into(),
            }),
            ProbeCheck::Tcp { port } => Check::Tcp(pb::TcpProbe {
                port: (*port).into(),
            }),
            ProbeCheck::Exec { command } => Check::Exec(pb::ExecProbe {
                command: command.clone(),
            }),
        }),
        period_secs: p.period_secs,
        timeout_secs: p.timeout_secs,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        initial_delay_secs: p.initial_delay_secs,
    }
}

fn probe_from_wire(p: pb::Probe, field: &str) -> Result<Probe> {
    use pb::probe::Check;
    let check = match required(p.check, &format!("{field}.check"))? {
        Check::Http(h) => ProbeCheck::Http {
            port: port(h.port, format!("{field}.http.port"))?,
            path: h.path,
        },
        Check::Tcp(t) => ProbeCheck::Tcp {
            port: port(t.port, format!("{field}.tcp.port"))?,
        },
        Check::Exec(e) => ProbeCheck::Exec { command: e.command },
    };
    let probe = Probe {
        check,
        period_secs: p.period_secs,
        timeout_secs: p.timeout_secs,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        initial_delay_secs: p.initial_delay_secs,
    };
    match probe.problem() {
        Some((name, message)) => Err(ConvertError::new(format!("{field}.{name}"), message)),
        None => Ok(probe),
    }
}

fn constraint_to_wire(c: &Constraint) -> pb::Constraint {
    use pb::constraint::Kind;
    let kind = match c {
        Constraint::Direct { cluster, nodes } => Kind::Direct(pb::Direct {
            cluster: cluster.clone().unwrap_or_default(),
            nodes: nodes.clone(),
        }),
        Constraint::Clusters { allowed } => Kind::Clusters(pb::Clusters {
            allowed: allowed.clone(),
        }),
        Constraint::Geo {
            location,
            radius_km,
        } => Kind::Geo(pb::Geo {
            lat: location.lat,
            lon: location.lon,
            radius_km: *radius_km,
        }),
        Constraint::Latency { area, threshold_ms } => Kind::Latency(pb::Latency {
            area: area.clone(),
            threshold_ms: *threshold_ms,
        }),
        Constraint::Addons { needs } => Kind::Addons(pb::Addons {
            needs: needs.clone(),
        }),
    };
    pb::Constraint { kind: Some(kind) }
}

fn constraint_from_wire(c: pb::Constraint) -> Result<Constraint> {
    use pb::constraint::Kind;
    Ok(match required(c.kind, "kind")? {
        Kind::Direct(d) => Constraint::Direct {
            cluster: optional_text(d.cluster),
            nodes: d.nodes,
        },
        Kind::Clusters(c) => Constraint::Clusters { allowed: c.allowed },
        Kind::Geo(g) => Constraint::Geo {
            location: GeoPoint::parse(&format!("{},{}", g.lat, g.lon))
                .map_err(|e| ConvertError::new("geo", e))?,
            radius_km: g.radius_km,
        },
        Kind::Latency(l) => Constraint::Latency {
            area: l.area,
            threshold_ms: l.threshold_ms,
        },
        Kind::Addons(a) => Constraint::Addons { needs: a.needs },
    })
}

impl TryFrom<pb::ServiceSpec> for ServiceSpec {
    type Error = ConvertError;
    fn try_from(s: pb::ServiceSpec) -> Result<Self> {
        let ports = s
            .ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(PortMapping {
                    host: port(p.host, format!("ports[{i}].host"))?,
                    container: port(p.container, format!("ports[{i}].container"))?,
                    protocol: match pb::Protocol::try_from(p.protocol) {
                        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
                        Ok(pb::Protocol::Udp) => Protocol::Udp,
                        Err(_) => {
                            return Err(ConvertError::new(
                                format!("ports[{i}].protocol"),
                                format!("unknown protocol {}", p.protocol),
                            ));
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if s.code.trim().is_empty() {
            return Err(ConvertError::new("code", "must not be empty"));
        }
        Ok(ServiceSpec {
            job_name: s
                .job_name
                .parse::<JobName>()
                .map_err(|e| ConvertError::new("job_name", e))?,
            virtualization: virtualization_from_wire(s.virtualization, "virtualization")?,
            code: s.code,
            cmd: s.cmd,
            environment: s
                .environment
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    EnvVar::parse(e).map_err(|r| ConvertError::new(format!("environment[{i}]"), r))
                })
                .collect::<Result<_>>()?,
            resources: s.resources.map(Resources::from).unwrap_or_default(),
            ports,
            one_shot: s.one_shot,
            privileged: s.privileged,
            architectures: s
                .architectures
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    Architecture::parse(a).ok_or_else(|| {
                        ConvertError::new(
                            format!("architectures[{i}]"),
                            format!("unknown architecture {a:?}"),
                        )
                    })
                })
                .collect::<Result<_>>()?,
            constraints: s
                .constraints
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    constraint_from_wire(c).map_err(|e| e.inside(&format!("constraints[{i}]")))
                })
                .collect::<Result<_>>()?,
            rr_ip: optional_text(s.rr_ip)
                .map(|ip| ip.parse())
                .transpose()
                .map_err(|e| ConvertError::new("rr_ip", e))?,
            rr_ip_v6: optional_text(s.rr_ip_v6)
                .map(|ip| ip.parse())
                .transpose()
                .map_err(|e| ConvertError::new("rr_ip_v6", e))?,
            closest_ip: optional_ip(s.closest_ip, "closest_ip")?,
            readiness_probe: s
                .readiness_probe
                .map(|p| probe_from_wire(p, "readiness_probe"))
                .transpose()?,
            liveness_probe: s
                .liveness_probe
                .map(|p| probe_from_wire(p, "liveness_probe"))
                .transpose()?,
        })
    }
}

// ---- overlay ----

impl From<&GlobalView> for pb::OverlayView {
    fn from(v: &GlobalView) -> Self {
        pb::OverlayView {
            peers: v
                .peers
                .iter()
                .map(|p| pb::OverlayPeer {
                    cluster_id: p.cluster.to_string(),
                    node_id: p.node.to_string(),
                    subnet: p.peer.subnet.to_string(),
                    underlay: p.peer.underlay.to_string(),
                })
                .collect(),
            services: v
                .services
                .iter()
                .map(|s| pb::OverlayService {
                    service_id: s.id.to_string(),
                    name: s.name.clone(),
                    rr_ip: s.rr_ip.to_string(),
                    closest_ip: s.closest_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    instances: s
                        .instances
                        .iter()
                        .map(|e| pb::OverlayEndpoint {
                            instance_number: e.instance.0,
                            instance_ip: e.instance_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                            address: e.address.to_string(),
                            cluster_id: e.cluster.to_string(),
                            node_id: e.node.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::OverlayView> for GlobalView {
    type Error = ConvertError;
    fn try_from(v: pb::OverlayView) -> Result<Self> {
        let peers = v
            .peers
            .into_iter()
            .enumerate()
            .map(|(i, p)| overlay_peer(p).map_err(|e| e.inside(&format!("peers[{i}]"))))
            .collect::<Result<_>>()?;
        let services = v
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| overlay_service(s).map_err(|e| e.inside(&format!("services[{i}]"))))
            .collect::<Result<_>>()?;
        Ok(GlobalView { peers, services })
    }
}

fn overlay_peer(p: pb::OverlayPeer) -> Result<GlobalPeer> {
    Ok(GlobalPeer {
        cluster: ClusterId::parse(p.cluster_id).map_err(|e| ConvertError::new("cluster_id", e))?,
        node: NodeId::parse(p.node_id).map_err(|e| ConvertError::new("node_id", e))?,
        peer: Peer {
            subnet: ip(&p.subnet, "subnet")?,
            underlay: ip(&p.underlay, "underlay")?,
        },
    })
}

fn overlay_service(s: pb::OverlayService) -> Result<GlobalService> {
    Ok(GlobalService {
        id: ServiceId::parse(s.service_id).map_err(|e| ConvertError::new("service_id", e))?,
        name: s.name,
        rr_ip: ip(&s.rr_ip, "rr_ip")?,
        closest_ip: optional_ip(s.closest_ip, "closest_ip")?,
        instances: s
            .instances
            .into_iter()
            .enumerate()
            .map(|(j, e)| overlay_endpoint(e).map_err(|e| e.inside(&format!("instances[{j}]"))))
            .collect::<Result<_>>()?,
    })
}

fn overlay_endpoint(e: pb::OverlayEndpoint) -> Result<GlobalEndpoint> {
    Ok(GlobalEndpoint {
        instance: InstanceNumber(e.instance_number),
        instance_ip: optional_ip(e.instance_ip, "instance_ip")?,
        address: ip(&e.address, "address")?,
        cluster: ClusterId::parse(e.cluster_id).map_err(|e| ConvertError::new("cluster_id", e))?,
        node: NodeId::parse(e.node_id).map_err(|e| ConvertError::new("node_id", e))?,
    })
}
