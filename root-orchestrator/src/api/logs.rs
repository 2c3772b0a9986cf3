//! `GET /api/service/{id}/instance/{n}/logs` (a Canopy extension): an instance's log streamed
//! from its worker through its cluster (`text/plain`, chunked). `tail=N` starts N lines before
//! the end; `follow=true` keeps the stream open with what the instance writes until it is
//! removed. The status says whether the worker answered: 200 and the log, or 404/409 naming
//! why there is none. A stream that breaks off later (the worker lost, the size cap reached)
//! ends without the final chunk, so a client can tell it did not get everything.

use super::views::ErrorBody;
use super::{ApiError, ApiResult, ApiState};
use crate::control::Caller;
use crate::control::logs::{LogQuery, Next};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;

/// How long the worker has to answer the open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// `true`: keep streaming what the instance writes.
    pub follow: Option<String>,
    /// Start this many lines before the end (default: the whole log).
    pub tail: Option<String>,
}

fn parse_params(p: &LogParams) -> ApiResult<LogQuery> {
    let follow = match p.follow.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "follow",
                format!("{other:?} is not true or false"),
            ));
        }
    };
    let tail_lines = p
        .tail
        .as_deref()
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "tail",
                    format!("{t:?} is not a number of lines"),
                )
            })
        })
        .transpose()?;
    Ok(LogQuery { tail_lines, follow })
}

/// An instance's log, streamed from its worker.
#[utoipa::path(get, path = "/api/service/{id}/instance/{n}/logs", tag = "services",
    params(("id" = String, Path), ("n" = u32, Path, description = "instance number"), LogParams),
    responses((status = 200, description = "the log as text/plain, streamed; with follow, open until the instance is removed", content_type = "text/plain", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the instance is on no worker, or its cluster is not connected", body = ErrorBody),
        (status = 504, description = "the worker did not answer in time", body = ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn stream(
    State(s): State<ApiState>,
    caller: Caller,
    Path((id, n)): Path<(String, String)>,
    Query(p): Query<LogParams>,
) -> ApiResult<Response> {
    let n = super::apps::instance_number(&n)?;
    let q = parse_params(&p)?;
    let mut log = s.root.open_log(&caller, &id, n, q).await?;
    match tokio::time::timeout(OPEN_TIMEOUT, log.opened()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the instance's worker did not answer in time",
            ));
        }
        Ok(Err(why)) => return Err(ApiError::field(StatusCode::CONFLICT, "instance", why)),
        Ok(Ok(())) => {}
    }
    let closing = s.root.feed.closing();
    let body = futures::stream::unfold(Some((log, closing)), |state| async move {
        let (mut log, mut closing) = state?;
        let next = tokio::select! {
            n = log.next() => n,
            _ = closing.wait_for(|c| *c) => Next::Failed("the root is shutting down".into()),
        };
        match next {
            Next::Data(d) => Some((Ok(Bytes::from(d)), Some((log, closing)))),
            Next::End => None,
            Next::Failed(why) => {
                tracing::info!(stream = %why, "log stream broke off");
                Some((Err(std::io::Error::other(why)), None))
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::HeaderName::from_static("x-content-type-options"),
                "nosniff",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
