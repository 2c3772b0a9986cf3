//! The REST API's request and response bodies, in Oakestra's shapes: the root serves them
//! (and generates its OpenAPI document from them), the CLI reads its answers into them.
//!
//! Unknown fields are ignored when reading, as Oakestra's clients send and expect extras.

use canopy_core::link::ResourceAggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Oakestra's roles. Only `Admin` grants anything beyond owning one's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Role {
    Admin,
    #[serde(rename = "Organization_Admin")]
    OrganizationAdmin,
    #[serde(rename = "Application_Provider")]
    ApplicationProvider,
    #[serde(rename = "Infrastructure_Provider")]
    InfrastructureProvider,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::OrganizationAdmin,
        Role::ApplicationProvider,
        Role::InfrastructureProvider,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub roles: Vec<Role>,
}

/// An error: a message, the field at fault when there is one, and every SLA problem for 422.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
}

/// One SLA problem: its JSON path and what is wrong.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProblemView {
    pub path: String,
    pub message: String,
}

/// A plain acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageBody {
    pub message: String,
}

impl MessageBody {
    pub fn new(m: impl Into<String>) -> Self {
        MessageBody { message: m.into() }
    }
}

/// MongoDB's id form, which Oakestra's dashboard expects: `{"$oid": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Oid {
    #[serde(rename = "$oid")]
    pub oid: String,
}

impl Oid {
    pub fn new(id: &str) -> Self {
        Oid { oid: id.to_owned() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// Organisation to log in to (default `root`). Oakestra's schema calls it `organization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    pub token: String,
    pub refresh_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessToken {
    pub token: String,
}

/// A new user (admin only), added to the caller's organisation with `roles`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(pattern = r"^[a-zA-Z0-9_-]{1,63}$")]
    pub name: String,
    #[schema(min_length = 4, max_length = 1024)]
    pub password: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    pub old_password: String,
    #[schema(min_length = 4, max_length = 1024)]
    pub new_password: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateUserRequest {
    #[serde(default)]
    pub email: Option<String>,
    /// Replaces the user's roles in the caller's organisation.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub _id: Oid,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PermissionView {
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct OrganizationRequest {
    #[schema(pattern = r"^[a-zA-Z0-9_-]{1,63}$")]
    pub name: String,
    #[serde(default)]
    pub member: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrganizationView {
    pub _id: Oid,
    pub name: String,
    pub member: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ApplicationView {
    pub _id: Oid,
    pub applicationID: String,
    pub application_name: String,
    pub application_namespace: String,
    pub application_desc: String,
    /// Service ids.
    pub microservices: Vec<String>,
    /// The owner's user name.
    pub userId: String,
}

/// Changes to an application. Services are added with `POST /api/service/` and removed with
/// `DELETE /api/service/<id>`, so `microservices`, if sent, must list the current ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct UpdateApplicationRequest {
    #[serde(default)]
    #[schema(pattern = "^[a-zA-Z0-9]{1,30}$")]
    pub application_name: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^[a-zA-Z0-9]{1,30}$")]
    pub application_namespace: Option<String>,
    #[serde(default)]
    pub application_desc: Option<String>,
    /// The application's current service ids, in order: each an id or an object with
    /// `microserviceID` (as `GET` answers them).
    #[serde(default)]
    #[schema(schema_with = service_refs)]
    pub microservices: Option<Vec<serde_json::Value>>,
}

/// The schema of [`UpdateApplicationRequest::microservices`]: null, or a list whose items are
/// service ids or objects carrying one as `microserviceID`.
fn service_refs() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{
        ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
    };
    let by_id = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("a service id"));
    let by_object = ObjectBuilder::new()
        .property(
            "microserviceID",
            ObjectBuilder::new().schema_type(Type::String),
        )
        .required("microserviceID");
    let item = OneOfBuilder::new().item(by_id).item(by_object);
    Schema::Array(
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .items(item)
            .build(),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub instance_number: u32,
    pub status: String,
    pub status_detail: String,
    pub cluster_id: Option<String>,
    pub worker_id: Option<String>,
    pub instance_ip: String,
    pub cpu_percent: f64,
    /// Memory in use, MB.
    pub memory: u64,
    /// The last lines of its output (at most 1024 bytes), from its worker's last report.
    pub logs: String,
    pub last_modified_timestamp: f64,
    /// The revision of its service's spec it runs (a Canopy extension; 0 until the service
    /// is updated).
    #[serde(default)]
    pub revision: u32,
    /// Its readiness probe passes (a Canopy extension; true for a service without one). A
    /// rolling update counts only ready instances.
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

/// A service (Oakestra's job document): the microservice as submitted, plus these fields.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[allow(non_snake_case)]
pub struct ServiceView {
    pub _id: Oid,
    pub microserviceID: String,
    pub applicationID: String,
    pub job_name: String,
    pub app_name: String,
    pub app_ns: String,
    pub service_name: String,
    pub service_ns: String,
    pub image: String,
    pub RR_ip: String,
    pub next_instance_progressive_number: u32,
    pub status: String,
    pub status_detail: String,
    pub instance_list: Vec<InstanceView>,
    /// The remaining SLA fields of the microservice, as submitted.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub sla: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceCreated {
    pub service_name: String,
    pub status: String,
}

/// Answer to `POST /api/service/`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddServicesView {
    /// The last service created.
    pub job_id: String,
    pub deployed_services: Vec<ServiceCreated>,
    pub failed_services: Vec<ServiceCreated>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScaleUpView {
    pub message: String,
    pub instance_number: u32,
}

/// Resources of a set of workers as a cluster reports them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AggregateView {
    pub active_nodes: u32,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Free vcpus, summed.
    pub vcpus: u32,
    /// Free memory, MB, summed.
    pub memory: u64,
    pub vgpus: u32,
    pub virtualization: Vec<String>,
    pub supported_addons: Vec<String>,
    pub csi_drivers: Vec<String>,
}

impl From<&ResourceAggregate> for AggregateView {
    fn from(a: &ResourceAggregate) -> Self {
        AggregateView {
            active_nodes: a.active_nodes,
            cpu_percent: a.cpu_percent,
            memory_percent: a.memory_percent,
            vcpus: a.free.vcpus,
            memory: a.free.memory_mb,
            vgpus: a.free.vgpus,
            virtualization: a
                .virtualizations
                .iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
            supported_addons: a.supported_addons.iter().cloned().collect(),
            csi_drivers: a.csi_drivers.iter().cloned().collect(),
        }
    }
}

/// A cluster, with Oakestra's compatibility aliases.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub _id: Oid,
    pub cluster_name: String,
    pub candidate_name: String,
    /// `LAT,LON,RADIUS_KM`, empty when unknown.
    pub cluster_location: String,
    pub candidate_location: String,
    pub active: bool,
    /// Unix seconds of the last report (0: none since the root started).
    pub last_modified_timestamp: f64,
    pub aggregated_cpu_percent: f64,
    pub memory_in_mb: u64,
    pub total_cpu_cores: u32,
    pub total_gpu_cores: u32,
    #[serde(flatten)]
    pub total: AggregateView,
    pub aggregation_per_architecture: std::collections::BTreeMap<String, AggregateView>,
}

/// A worker, from its cluster's last report (a Canopy addition to Oakestra's API).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    pub name: String,
    pub cluster_id: String,
    pub cluster_name: String,
    /// The worker reports to its cluster and the cluster to the root.
    pub active: bool,
    pub architecture: String,
    pub virtualizations: Vec<String>,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Instances placed on it.
    pub instances: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_with_unknown_fields_still_read() {
        let agg = json!({"active_nodes": 2, "cpu_percent": 1.5, "memory_percent": 2.0, "vcpus": 8,
            "memory": 16000, "vgpus": 0, "virtualization": ["container"], "supported_addons": [],
            "csi_drivers": []});
        let mut cluster = json!({"_id": {"$oid": "c1"}, "cluster_name": "local",
            "candidate_name": "local", "cluster_location": "", "candidate_location": "",
            "active": true, "last_modified_timestamp": 0.0, "aggregated_cpu_percent": 1.5,
            "memory_in_mb": 16000, "total_cpu_cores": 8, "total_gpu_cores": 0,
            "aggregation_per_architecture": {"amd64": agg.clone()}, "from_oakestra": 1});
        for (k, v) in agg.as_object().into_iter().flatten() {
            cluster[k] = v.clone();
        }
        let c: ClusterInfo = serde_json::from_value(cluster).expect("a cluster");
        assert_eq!((c._id.oid.as_str(), c.total.active_nodes), ("c1", 2));

        let e: ErrorBody =
            serde_json::from_value(json!({"message": "m", "code": 400})).expect("an error body");
        assert_eq!(
            (e.message.as_str(), e.field, e.problems.len()),
            ("m", None, 0)
        );
    }

    #[test]
    fn a_login_request_sends_only_what_is_set() {
        let r = LoginRequest {
            username: "Admin".into(),
            password: "pw".into(),
            organization_name: None,
            organization: None,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("JSON"),
            r#"{"username":"Admin","password":"pw"}"#
        );
    }
}

/// What a user may hold at most (a Canopy extension): applications, services, instances
/// (every instance of every service), and the vCPUs and memory those instances ask for.
/// A missing field has no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

impl Quota {
    /// No limit at all.
    pub const UNLIMITED: Quota = Quota {
        applications: None,
        services: None,
        instances: None,
        vcpus: None,
        memory_mb: None,
    };
}

/// What a user holds now, counted as [`Quota`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub applications: u64,
    pub services: u64,
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mb: u64,
}

/// `GET /api/user/<name>/quota`: the quota that applies, whether it is the root's default
/// (none set for this user), and the usage it is checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub quota: Quota,
    pub default: bool,
    pub usage: Usage,
}

/// `POST /api/service/<id>/instance/<n>/{stop,start,restart}`: the instance's status after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    pub instance_number: u32,
    pub status: String,
}

/// A service's latest rolling update (a Canopy extension): the answer to
/// `PUT /api/service/<id>` and `GET /api/service/<id>/rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub service_id: String,
    /// The revision of the service's spec now current (0 when created).
    pub revision: u32,
    /// `none` (never updated), `progressing`, `rolling_back`, `complete`, `rolled_back` or
    /// `failed`.
    pub state: String,
    /// In the answer to `PUT`: whether it changed anything (`false`: the service was as
    /// asked already, and nothing happens).
    pub changed: bool,
    /// Instances the service keeps throughout.
    pub replicas: u32,
    /// Instances of the current revision that are RUNNING.
    pub updated: u32,
    /// Instances of another revision still there.
    pub old: u32,
    /// Why it rolled back or failed.
    pub reason: String,
    /// Unix seconds.
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// One thing done to a service (a Canopy extension): when, what, why, and how it ended.
/// `GET /api/service/<id>/events` lists the latest, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceEvent {
    /// Increases by one per event of the service.
    pub seq: u64,
    /// Unix seconds.
    pub at: f64,
    /// The instance it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    pub what: String,
    pub why: String,
    pub outcome: String,
}

/// One change, as `GET /api/events` streams it (the SSE `data`; its `id` is the SSE id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FeedItem {
    pub id: u64,
    /// `application`, `service`, `instance`, `cluster` or `node`.
    pub kind: String,
    /// `put` (created or changed) or `delete`.
    pub action: String,
    /// The application's, service's, cluster's or node's id; for an instance, its service's.
    pub object_id: String,
    /// The user who owns it (none for clusters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    /// The application's name, the service's job name, the cluster's or node's name.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl FeedItem {
    /// An unnumbered item of `kind` with only its action and object id set.
    pub fn new(kind: &str, action: &str, object_id: impl Into<String>) -> FeedItem {
        FeedItem {
            id: 0,
            kind: kind.into(),
            action: action.into(),
            object_id: object_id.into(),
            owner: None,
            application_id: None,
            service_id: None,
            instance: None,
            name: String::new(),
            status: None,
            detail: None,
        }
    }
}
