//! The engine's local HTTP API (loopback by default): `/health`, `/metrics`, the instances it
//! holds, and their full logs (`?tail=BYTES` for the end only).

use crate::engine::Engine;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct LogQuery {
    tail: Option<u64>,
}

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/instances", get(instances))
        .route("/instances/{name}/logs", get(logs))
        .with_state(engine)
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    engine
        .metrics
        .set_instances(&engine.count_by_status().await);
    (
        [(header::CONTENT_TYPE, canopy_daemon::metrics::CONTENT_TYPE)],
        engine.metrics.render(),
    )
        .into_response()
}

async fn instances(State(engine): State<Arc<Engine>>) -> Response {
    Json(engine.instances().await).into_response()
}

async fn logs(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    match engine.logs(&name, q.tail).await {
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"message": format!("no instance {name} on this worker")})),
        )
            .into_response(),
        Some(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response()
        }
        Some(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}
