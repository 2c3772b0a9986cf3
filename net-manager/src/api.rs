//! The net manager's local API, HTTP over a unix socket (the node engine is its client, and
//! relays what the cluster sends: the node configuration and the overlay view):
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `PUT /node` | `{"subnet": "10.18.0.64", "underlay": "192.0.2.2"}` | 204 (also when nothing changes); 400 naming the field; 409 naming the field when another subnet or underlay would replace the current one while instances are attached |
//! | `GET /node` | — | 200 the configuration; 404 when there is none |
//! | `PUT /view` | `{"peers": [{"subnet", "underlay"}], "services": [{"name", "rr_ip", "closest_ip"?, "instances": [{"instance_ip"?, "address", "underlay", "same_cluster"}]}]}` (see [`crate::view`]) | 204; 400 naming the field (`services[3].rr_ip`), nothing changed; 409 not configured |
//! | `GET /view` | — | 200 what is applied: `{"translations": {"targets": {vip: [address, …]}}, "names": {name: rr_ip}, "peers": [{"subnet", "underlay", "rtt_ms"}]}` |
//! | `POST /instances` | `{"name": "<job>.instance.<n>", "ports": [{"host": 8080, "container": 80, "protocol": "tcp"}]}` | 200 the attachment (`name`, `address`, `netns`, `host_if`, `ports`, `dns`: the name server for the instance); 400 bad input; 409 not configured, subnet full, or a port another instance publishes |
//! | `DELETE /instances/{name}` | — | 204 (also for one that is not attached) |
//! | `GET /instances` | — | every attachment |
//! | `GET /metrics`, `GET /health` | — | Prometheus text; 200 |
//!
//! Errors are `{"message": …, "field": …}` (`field` is `null` when no one field is at fault).

use crate::manager::{Error, Manager, NodeConfig};
use crate::view::View;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

pub fn router(m: Arc<Manager>) -> Router {
    Router::new()
        .route("/node", get(get_node).put(put_node))
        .route("/view", get(get_view).put(put_view))
        .route("/instances", post(attach).get(list))
        .route("/instances/{name}", delete(detach))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(m)
}

struct ApiError(StatusCode, String, Option<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"message": self.1, "field": self.2});
        (self.0, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, field) = match &e {
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, None),
            Error::Field { field, .. } => (StatusCode::BAD_REQUEST, Some(field.clone())),
            Error::Conflict { field, .. } => (StatusCode::CONFLICT, Some(field.clone())),
            Error::NotConfigured(_) | Error::Exhausted(_) | Error::PortTaken { .. } => {
                (StatusCode::CONFLICT, None)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(status, e.to_string(), field)
    }
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    canopy_daemon::json_body(bytes).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", e.field, e.message),
            Some(e.field),
        )
    })
}

async fn put_node(State(m): State<Arc<Manager>>, bytes: Bytes) -> Result<StatusCode, ApiError> {
    let config: NodeConfig = body(&bytes)?;
    m.configure(config).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_node(State(m): State<Arc<Manager>>) -> Result<Response, ApiError> {
    match m.node().await {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not configured: no PUT /node yet".to_owned(),
            None,
        )),
    }
}

async fn put_view(State(m): State<Arc<Manager>>, bytes: Bytes) -> Result<StatusCode, ApiError> {
    let view: View = body(&bytes).inspect_err(|_| m.metrics.view_rejected())?;
    m.set_view(view).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_view(State(m): State<Arc<Manager>>) -> Response {
    Json(m.applied().await).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    name: String,
    /// Ports to publish on the worker: `{"host": 8080, "container": 80, "protocol": "tcp"}`.
    #[serde(default)]
    ports: Vec<canopy_core::job::PortMapping>,
}

async fn attach(State(m): State<Arc<Manager>>, bytes: Bytes) -> Result<Response, ApiError> {
    let req: AttachRequest = body(&bytes)?;
    Ok(Json(m.attach(&req.name, &req.ports).await?).into_response())
}

async fn detach(
    State(m): State<Arc<Manager>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    m.detach(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list(State(m): State<Arc<Manager>>) -> Response {
    Json(m.attached().await).into_response()
}

async fn metrics(State(m): State<Arc<Manager>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            canopy_daemon::metrics::CONTENT_TYPE,
        )],
        m.metrics.render(),
    )
        .into_response()
}
