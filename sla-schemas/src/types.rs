//! The SLA v2.0 document as Rust types. These types are the single definition: the JSON Schema
//! under `sla-schemas/schemas/` is generated from them, and structural validation runs that schema.
//!
//! Field names and meaning follow Oakestra's SLA (see `ARCHITECTURE.md`, glossary "SLA").
//! Unknown fields are accepted (Oakestra accepts them) and reported as warnings.

use canopy_core::naming::NAME_PATTERN;
use canopy_core::{Architecture, Virtualization};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only SLA version this crate accepts.
pub const SLA_VERSION: &str = "v2.0";

/// A deployment descriptor: one or more applications, each with its services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Canopy SLA v2.0 (Oakestra-compatible deployment descriptor)")]
pub struct Sla {
    /// Must be `"v2.0"`.
    #[schemars(schema_with = "sla_version_schema")]
    pub sla_version: String,
    /// Kept for compatibility; the server uses the caller's identity instead.
    #[serde(rename = "customerID")]
    pub customer_id: String,
    pub applications: Vec<Application>,
    /// Unused; kept for compatibility.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// A named group of services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Application {
    /// Empty for a new application; the existing id when adding a service to one.
    #[serde(
        rename = "applicationID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub application_id: String,
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub application_name: String,
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub application_namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application_desc: String,
    pub microservices: Vec<Microservice>,
}

/// One service ("microservice" in Oakestra's words).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Microservice {
    /// Must be empty or absent: the server assigns ids.
    #[serde(
        rename = "microserviceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    #[schemars(length(max = 0))]
    pub microservice_id: String,
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub microservice_name: String,
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub microservice_namespace: String,
    /// `container` (also `docker`), `unikernel` or `wasm`.
    #[schemars(schema_with = "virtualization_schema")]
    pub virtualization: Virtualization,
    /// Container: image reference or `docker-archive:`/`oci-archive:` path. Wasm: URL or path of a
    /// `.wasm`/`.wat` module. Unikernel: comma-separated kernel tarball URLs, one per `arch` entry.
    #[schemars(length(min = 1))]
    pub code: String,
    /// Memory limit in MB.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default)]
    pub vgpus: u32,
    #[serde(default)]
    pub vtpus: u32,
    #[serde(default)]
    pub bandwidth_in: u64,
    #[serde(default)]
    pub bandwidth_out: u64,
    #[serde(default)]
    pub storage: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_files: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sla_violation_strategy: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_node: String,
    /// Published ports: `HOST[:CONTAINER][/tcp|/udp]` entries joined by `;`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
    /// Exit code 0 ends the instance (`COMPLETED`) instead of restarting it.
    #[serde(default)]
    pub one_shot: bool,
    #[serde(default)]
    pub privileged: bool,
    /// Replaces the image's command; module arguments for wasm; kernel arguments for unikernels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<String>,
    #[serde(default, skip_serializing_if = "Addresses::is_empty")]
    pub addresses: Addresses,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<ConstraintSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connectivity: Vec<Connectivity>,
    /// Architectures (Go names: `amd64`, `arm64`, …) the code is built for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "arch_list_schema")]
    pub arch: Vec<Architecture>,
    /// Image platform for containerd pulls, e.g. `linux/arm64`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Canopy extension (Oakestra's clients ignore it): the root adds and removes instances
    /// from the use workers report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Autoscale")]
    pub autoscale: Option<Autoscale>,
    /// Canopy extension (Oakestra's clients ignore it): until this probe passes, an instance
    /// is not ready — out of its service IP's table, not counted by a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Probe")]
    pub readiness_probe: Option<Probe>,
    /// Canopy extension: when this probe fails, the instance is restarted (with the crash
    /// back-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Probe")]
    pub liveness_probe: Option<Probe>,
}

/// `readiness_probe` / `liveness_probe`: one check — exactly one of `http`, `tcp` or `exec`
/// (a command in the container; containers only) — tried every `period_secs`, each try bounded by
/// `timeout_secs`; `failure_threshold` failures in a row fail the probe, `success_threshold`
/// successes in a row pass it again; the first try comes `initial_delay_secs` after the
/// start. Ports are the ones the process listens on in the instance. Not for `wasm` (no
/// sockets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Probe {
    /// `GET http://<instance>:<port><path>`; a 2xx or 3xx answer passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "HttpProbe")]
    pub http: Option<HttpProbe>,
    /// A TCP connection to `<instance>:<port>` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "TcpProbe")]
    pub tcp: Option<TcpProbe>,
    /// A command run in the instance; exit 0 passes. Not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub exec: Option<Vec<String>>,
    /// Seconds between tries (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_secs: Option<u32>,
    /// Seconds one try may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_secs: Option<u32>,
    /// Failures in a row that fail the probe (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<u32>,
    /// Successes in a row that pass a failing probe (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub success_threshold: Option<u32>,
    /// Seconds after the start before the first try (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub initial_delay_secs: Option<u32>,
}

/// An HTTP GET probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpProbe {
    /// Request path (default `/`).
    #[serde(default = "root_path")]
    #[schemars(length(min = 1))]
    pub path: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

fn root_path() -> String {
    "/".to_owned()
}

/// A TCP connect probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TcpProbe {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
}

/// `autoscale`: keep a deployed service between `min` and `max` instances, adding one when
/// the running instances' average use stays above a target for `up_window_secs`, removing one
/// when it would stay below every target with one instance fewer for `down_window_secs`, and
/// changing nothing for `cooldown_secs` after a change. At least one target is needed; unset
/// windows take the root's defaults (`--autoscale-*-secs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Autoscale {
    /// Fewest instances once the service is deployed.
    #[schemars(range(min = 1))]
    pub min: u32,
    /// Most instances; at least `min`.
    #[schemars(range(min = 1))]
    pub max: u32,
    /// Average CPU of the running instances, in percent of their worker machine (as workers
    /// report it: one busy core of a 4-core worker is 25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_percent: Option<u32>,
    /// Average memory of the running instances, in percent of the service's `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_percent: Option<u32>,
    /// Seconds above a target before an instance is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub up_window_secs: Option<u64>,
    /// Seconds below every target before an instance is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub down_window_secs: Option<u64>,
    /// Seconds after a change during which nothing else changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub cooldown_secs: Option<u64>,
}

/// Addresses the user asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Addresses {
    /// Round-robin service IPv4 address (Canopy serves `10.30.0.0/16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr_ip_v6: Option<String>,
    /// Accepted for compatibility; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<String>,
    /// Accepted for compatibility; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip_v6: Option<String>,
    /// Accepted for compatibility; not used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<AddressRange>,
}

impl Addresses {
    pub fn is_empty(&self) -> bool {
        *self == Addresses::default()
    }
}

/// Oakestra's `addresses.instances` entry; accepted for compatibility, not used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AddressRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Value>,
}

/// A CSI volume mounted into the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Volume {
    #[schemars(length(min = 1))]
    pub volume_id: String,
    #[schemars(length(min = 1))]
    pub csi_driver: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
}

/// The kinds of placement constraint: `direct` pins to `cluster` and/or the `;`-separated `node`
/// list; `clusters` allows only the clusters in `allowed`; `geo` places within `threshold` km of
/// `location` (`"LAT,LON"`); `latency` keeps latency to `area` below `threshold` ms; `addons`
/// needs the addons in `needs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintType {
    Direct,
    Clusters,
    Geo,
    Latency,
    Addons,
}

/// A placement constraint as written in the SLA. Which fields are needed depends on `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConstraintSpec {
    #[serde(rename = "type")]
    pub kind: ConstraintType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `;`-separated node names (`direct`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `"LAT,LON"` (`geo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Kilometres for `geo`, milliseconds for `latency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// 0..1: how strictly the constraint holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rigidness: Option<f64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub convergence_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

/// Desired connectivity to another service. Accepted and stored; not enforced yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Connectivity {
    pub target_microservice_id: String,
    pub con_constraints: Vec<ConConstraint>,
}

/// One connectivity constraint; all four fields are required (as in Oakestra).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConConstraint {
    #[serde(rename = "type")]
    pub kind: String,
    pub threshold: f64,
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rigidness: f64,
    #[schemars(range(min = 0.0))]
    pub convergence_time: f64,
}

fn sla_version_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "const": SLA_VERSION })
}

fn virtualization_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "string", "enum": Virtualization::ACCEPTED_SPELLINGS })
}

fn arch_list_schema(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = Architecture::ALL.iter().map(|a| a.as_str()).collect();
    json_schema!({ "type": "array", "items": { "type": "string", "enum": names } })
}
