//! The cluster's HTTP API on `--api-addr` (Oakestra's port 10100): node registration with the
//! node join token, the cluster's status, health and `/metrics`.

use crate::control::{self, Cluster};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use canopy_proto::worker::{NodeRegistration, RegistrationAnswer};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct ApiState {
    pub cluster: Arc<Cluster>,
    pub node_token: String,
    pub name: String,
    pub root_connected: Arc<AtomicBool>,
    /// Broker host and port workers are told to use (empty host: the cluster's address).
    pub mqtt_host: String,
    pub mqtt_port: u16,
}

fn error(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Response {
    let message = message.into();
    let body = match field {
        Some(f) => json!({"message": format!("{f}: {message}"), "field": f}),
        None => json!({ "message": message }),
    };
    (status, Json(body)).into_response()
}

async fn register(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let reg: NodeRegistration = match canopy_daemon::json_body(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, Some(&e.field), e.message),
    };
    if !canopy_store::secrets::constant_time_eq(&reg.token, &s.node_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            Some("token"),
            "wrong node join token",
        );
    }
    match s.cluster.register_worker(&reg).await {
        Ok(control::Registered {
            id,
            password,
            subnet,
        }) => Json(RegistrationAnswer {
            subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
            id: id.to_string(),
            mqtt_broker_port: s.mqtt_port.to_string(),
            mqtt_host: s.mqtt_host.clone(),
            mqtt_username: id.to_string(),
            mqtt_password: password,
        })
        .into_response(),
        Err(control::Error::Invalid { field, message }) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, Some(&field), message)
        }
        Err(e @ control::Error::AddressPlan(_)) => {
            tracing::warn!(error = %e, host = %reg.host, "worker not registered");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("overlay_address"),
                e.to_string(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "node registration failed");
            error(StatusCode::SERVICE_UNAVAILABLE, None, e.to_string())
        }
    }
}

/// `DELETE /api/node/<id>` with `Authorization: Bearer <node join token>`: the worker is
/// removed (its instances move, its overlay subnet is returned).
async fn remove(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !canopy_store::secrets::constant_time_eq(token, &s.node_token) {
        return error(
            StatusCode::UNAUTHORIZED,
            Some("authorization"),
            "give the node join token as a bearer token",
        );
    }
    let Ok(node) = canopy_core::NodeId::parse(id) else {
        return error(StatusCode::BAD_REQUEST, Some("id"), "not a node id");
    };
    match s.cluster.remove_worker(&node).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            Some("id"),
            format!("no worker {node}"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "removing a worker failed");
            error(StatusCode::SERVICE_UNAVAILABLE, None, e.to_string())
        }
    }
}

async fn status(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let id = s.cluster.cluster_id().await;
    Json(json!({
        "cluster_name": s.name,
        "cluster_id": id.map(|i| i.to_string()),
        "connected_to_root": s.root_connected.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(s): State<ApiState>) -> Response {
    s.cluster.refresh_metrics().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            canopy_daemon::metrics::CONTENT_TYPE,
        )],
        s.cluster.metrics.render(),
    )
        .into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/node/register", post(register))
        .route("/api/node/register/", post(register))
        .route("/api/node/{id}", axum::routing::delete(remove))
        .route("/api/cluster/status", get(status))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, None, "no such endpoint") })
        .with_state(state)
}
