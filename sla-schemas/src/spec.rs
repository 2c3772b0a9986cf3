//! From an accepted SLA to the domain's [`ServiceSpec`] (what the root stores and deploys) and
//! [`Autoscale`](canopy_core::autoscale::Autoscale) policy (what only the root keeps).

use crate::types::{self, Application, ConstraintType, Microservice};
use canopy_core::autoscale::{self, Windows};
use canopy_core::job::{Constraint, EnvVar, GeoPoint, PortMapping, ServiceSpec};
use canopy_core::probe::{Probe, ProbeCheck};
use canopy_core::{JobName, Resources};

/// Builds the service spec of `ms` in `app`. The SLA must have passed [`crate::parse`]; the error
/// case names the field for SLAs built by hand that did not.
pub fn service_spec(app: &Application, ms: &Microservice) -> Result<ServiceSpec, String> {
    let job_name = JobName::new(
        &app.application_name,
        &app.application_namespace,
        &ms.microservice_name,
        &ms.microservice_namespace,
    )
    .map_err(|e| e.to_string())?;
    let environment = ms
        .environment
        .iter()
        .map(|e| EnvVar::parse(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("environment: {e}"))?;
    let ports = PortMapping::parse_list(&ms.port).map_err(|e| format!("port: {e}"))?;
    let rr_ip = ms
        .addresses
        .rr_ip
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("addresses.rr_ip: {s:?} is not an IPv4 address"))
        })
        .transpose()?;
    let closest_ip = ms
        .addresses
        .closest_ip
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("addresses.closest_ip: {s:?} is not an IPv4 address"))
        })
        .transpose()?;
    let rr_ip_v6 = ms
        .addresses
        .rr_ip_v6
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("addresses.rr_ip_v6: {s:?} is not an IPv6 address"))
        })
        .transpose()?;
    let constraints = ms
        .constraints
        .iter()
        .map(|c| {
            Ok(match c.kind {
                ConstraintType::Direct => Constraint::Direct {
                    cluster: c.cluster.clone().filter(|s| !s.trim().is_empty()),
                    nodes: c
                        .node
                        .as_deref()
                        .unwrap_or_default()
                        .split(';')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                },
                ConstraintType::Clusters => Constraint::Clusters {
                    allowed: c.allowed.clone(),
                },
                ConstraintType::Geo => Constraint::Geo {
                    location: GeoPoint::parse(c.location.as_deref().unwrap_or_default())
                        .map_err(|e| format!("constraints: {e}"))?,
                    radius_km: c.threshold.unwrap_or_default(),
                },
                ConstraintType::Latency => Constraint::Latency {
                    area: c.area.clone().unwrap_or_default(),
                    threshold_ms: c.threshold.unwrap_or_default(),
                },
                ConstraintType::Addons => Constraint::Addons {
                    needs: c.needs.clone(),
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ServiceSpec {
        job_name,
        virtualization: ms.virtualization,
        code: ms.code.trim().to_owned(),
        cmd: ms.cmd.clone(),
        environment,
        resources: Resources {
            vcpus: ms.vcpus,
            memory_mb: ms.memory,
            vgpus: ms.vgpus,
        },
        ports,
        one_shot: ms.one_shot,
        privileged: ms.privileged,
        architectures: ms.arch.clone(),
        constraints,
        rr_ip,
        rr_ip_v6,
        closest_ip,
        readiness_probe: ms.readiness_probe.as_ref().map(probe).transpose()?,
        liveness_probe: ms.liveness_probe.as_ref().map(probe).transpose()?,
    })
}

/// A probe as the spec carries it, defaults filled in.
fn probe(p: &types::Probe) -> Result<Probe, String> {
    let port = |p: u32| u16::try_from(p).map_err(|_| format!("probe port {p} is not 1-65535"));
    let check = match (&p.http, &p.tcp, &p.exec) {
        (Some(h), None, None) => ProbeCheck::Http {
            path: h.path.clone(),
            port: port(h.port)?,
        },
        (None, Some(t), None) => ProbeCheck::Tcp {
            port: port(t.port)?,
        },
        (None, None, Some(command)) => ProbeCheck::Exec {
            command: command.clone(),
        },
        _ => return Err("a probe needs exactly one of http, tcp or exec".into()),
    };
    let mut out = Probe::new(check);
    out.period_secs = p.period_secs.unwrap_or(out.period_secs);
    out.timeout_secs = p.timeout_secs.unwrap_or(out.timeout_secs);
    out.failure_threshold = p.failure_threshold.unwrap_or(out.failure_threshold);
    out.success_threshold = p.success_threshold.unwrap_or(out.success_threshold);
    out.initial_delay_secs = p.initial_delay_secs.unwrap_or(0);
    match out.problem() {
        Some((field, message)) => Err(format!("probe {field}: {message}")),
        None => Ok(out),
    }
}

/// The autoscaling policy of `ms`, if it has one (kept by the root, not part of the spec the
/// clusters get).
pub fn autoscale(ms: &Microservice) -> Option<autoscale::Autoscale> {
    ms.autoscale.as_ref().map(|a| autoscale::Autoscale {
        min: a.min,
        max: a.max,
        target_cpu_percent: a.target_cpu_percent,
        target_memory_percent: a.target_memory_percent,
        windows: Windows {
            up_secs: a.up_window_secs,
            down_secs: a.down_window_secs,
            cooldown_secs: a.cooldown_secs,
        },
    })
}
