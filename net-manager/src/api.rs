//! The net manager's local API, HTTP over a unix socket (the node engine is its client):
//!
//! | method, path | body | answer |
//! |---|---|---|
//! | `POST /instances` | `{"name": "<job>.instance.<n>", "ports": [{"host": 8080, "container": 80, "protocol": "tcp"}]}` | 200 the attachment (`name`, `address`, `netns`, `host_if`, `ports`); 400 bad input; 409 subnet full or a port another instance publishes |
//! | `DELETE /instances/{name}` | — | 204 (also for one that is not attached) |
//! | `GET /instances` | — | every attachment |
//! | `PUT /translations` | `{"targets": {"10.30.55.55": ["10.18.0.2", …], …}}` | 204; 400 naming the bad field |
//! | `GET /metrics`, `GET /health` | — | Prometheus text; 200 |
//!
//! Errors are `{"message": …, "field": …}`.

use crate::manager::{Error, Manager};
use crate::nft::Translations;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

pub fn router(m: Arc<Manager>) -> Router {
    Router::new()
        .route("/instances", post(attach).get(list))
        .route("/instances/{name}", delete(detach))
        .route("/translations", put(translations))
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
        let status = match e {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Exhausted(_) | Error::PortTaken { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
        }
        ApiError(status, e.to_string(), None)
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

async fn translations(State(m): State<Arc<Manager>>, bytes: Bytes) -> Result<StatusCode, ApiError> {
    let t: Translations = body(&bytes)?;
    m.set_translations(t).await?;
    Ok(StatusCode::NO_CONTENT)
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
