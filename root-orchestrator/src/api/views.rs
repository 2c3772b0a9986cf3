//! The REST API's bodies, in Oakestra's shapes, are the types of `canopy-api` (shared with the
//! CLI; the OpenAPI document is generated from them). Here: how the root's documents become them.

use crate::control::ClusterView;
use crate::model::{Application, Organization, Service, User};
pub use canopy_api::*;
use canopy_core::link::NodeSummary;

/// A view built from two of the root's documents (a trait, as the view types are foreign here).
pub trait NewView<A, B> {
    fn new(a: A, b: B) -> Self;
}

impl NewView<&User, Vec<Role>> for UserView {
    fn new(u: &User, roles: Vec<Role>) -> Self {
        UserView {
            _id: Oid::new(&u.id),
            name: u.name.clone(),
            email: u.email.clone(),
            created_at: u.created_at.clone(),
            roles,
        }
    }
}

impl From<&Organization> for OrganizationView {
    fn from(o: &Organization) -> Self {
        OrganizationView {
            _id: Oid::new(&o.id),
            name: o.name.clone(),
            member: o.members.clone(),
        }
    }
}

impl From<&Application> for ApplicationView {
    fn from(a: &Application) -> Self {
        ApplicationView {
            _id: Oid::new(&a.id),
            applicationID: a.id.clone(),
            application_name: a.name.clone(),
            application_namespace: a.namespace.clone(),
            application_desc: a.description.clone(),
            microservices: a.services.clone(),
            userId: a.owner.clone(),
        }
    }
}

/// A `200` with `body`, already JSON.
pub fn json_body(body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = axum::http::HeaderValue::from_static("application/json");
    ([(axum::http::header::CONTENT_TYPE, json)], body).into_response()
}

impl From<&ClusterView> for ClusterInfo {
    fn from(v: &ClusterView) -> Self {
        let location = v
            .doc
            .location
            .map(|l| format!("{},{},{}", l.point.lat, l.point.lon, l.radius_km))
            .unwrap_or_default();
        let report = v.report.clone().unwrap_or_default();
        let total = AggregateView::from(&report.total);
        ClusterInfo {
            _id: Oid::new(v.doc.id.as_str()),
            cluster_name: v.doc.name.clone(),
            candidate_name: v.doc.name.clone(),
            cluster_location: location.clone(),
            candidate_location: location,
            active: v.active,
            last_modified_timestamp: v.last_report,
            aggregated_cpu_percent: total.cpu_percent,
            memory_in_mb: total.memory,
            total_cpu_cores: total.vcpus,
            total_gpu_cores: total.vgpus,
            total,
            aggregation_per_architecture: report
                .per_architecture
                .iter()
                .map(|(a, agg)| (a.as_str().to_owned(), AggregateView::from(agg)))
                .collect(),
        }
    }
}

impl NewView<&ClusterView, &NodeSummary> for NodeView {
    fn new(c: &ClusterView, n: &NodeSummary) -> Self {
        NodeView {
            node_id: n.id.to_string(),
            name: n.name.clone(),
            cluster_id: c.doc.id.to_string(),
            cluster_name: c.doc.name.clone(),
            active: n.active && c.active,
            architecture: n.architecture.as_str().to_owned(),
            virtualizations: n
                .virtualizations
                .iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
            cpu_percent: n.cpu_percent,
            memory_percent: n.memory_percent,
            instances: n.instances,
        }
    }
}

/// A service's latest rollout as the API shows it; `changed`: what the `PUT` did.
pub fn rollout_view(s: &Service, changed: bool) -> RolloutView {
    let live = || {
        s.instances
            .values()
            .filter(|i| i.status != canopy_core::InstanceStatus::Stopped)
    };
    let updated = live()
        .filter(|i| i.revision == s.revision && i.status == canopy_core::InstanceStatus::Running)
        .count() as u32;
    let old = live().filter(|i| i.revision != s.revision).count() as u32;
    let r = s.rollout.as_ref();
    RolloutView {
        service_id: s.id.clone(),
        revision: s.revision,
        state: r.map_or("none", |r| r.state.as_str()).to_owned(),
        changed,
        replicas: r.map_or(live().count() as u32, |r| r.replicas),
        updated,
        old,
        reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
        started_at: r.map(|r| r.started_at),
        finished_at: r.and_then(|r| r.finished_at),
    }
}
