//! `GET /api/events`: the change feed as server-sent events (a Canopy extension). Each event's
//! SSE `id` is the change's id, its `event` the kind (`application`, `service`, `instance`,
//! `cluster`, `node`), its `data` the [`FeedItem`] as JSON. A client that reconnects with
//! `Last-Event-ID` gets every change after that id; when some are no longer kept, the first
//! event is `gap` (list again, then follow). A subscriber too slow for the live channel gets
//! `gap` and the stream ends. Users see their own objects and the clusters; admins all.

use super::{ApiError, ApiResult, ApiState};
use crate::control::Caller;
use crate::control::feed::{Filter, visible};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use canopy_api::FeedItem;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

const KINDS: [&str; 5] = ["application", "service", "instance", "cluster", "node"];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only these kinds, comma-separated: application, service, instance, cluster, node.
    pub kind: Option<String>,
    /// Only changes of this application (its services and instances too).
    pub application: Option<String>,
    /// Only changes of this service (and its instances).
    pub service: Option<String>,
}

fn to_event(i: &FeedItem) -> Event {
    Event::default()
        .id(i.id.to_string())
        .event(i.kind.as_str())
        .data(serde_json::to_string(i).unwrap_or_default())
}

fn gap(message: &str) -> Event {
    Event::default()
        .event("gap")
        .data(serde_json::json!({ "message": message }).to_string())
}

/// The change feed, streamed (server-sent events).
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", body = String,
            description = "Server-sent events: `event` is the kind, `id` the change's id, `data` a FeedItem \
                (components.schemas.FeedItem) as JSON; or `event: gap`, `data: {\"message\"}`"),
        (status = 400, description = "kind or Last-Event-ID is not valid", body = super::views::ErrorBody)),
    security(("bearerAuth" = [])))]
pub async fn stream(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::field(
                        StatusCode::BAD_REQUEST,
                        "Last-Event-ID",
                        "must be the id of an event (a number)",
                    )
                })?,
        ),
    };
    let kinds: Vec<String> = q
        .kind
        .iter()
        .flat_map(|k| k.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "kind",
            format!("{bad:?} is not one of {}", KINDS.join(", ")),
        ));
    }
    let filter = Filter {
        kinds,
        application: q.application,
        service: q.service,
    };
    let sub = s.root.feed.subscribe(after);
    let keep = move |i: &FeedItem| visible(i, &caller.name, caller.admin) && filter.matches(i);
    let seen = sub.backlog.last().map(|i| i.id).or(after).unwrap_or(0);
    let first = sub
        .gap
        .then(|| gap("changes after Last-Event-ID are no longer kept: list again, then follow"));
    let backlog: Vec<Event> = sub
        .backlog
        .iter()
        .filter(|i| keep(i))
        .map(|i| to_event(i))
        .collect();
    // The live channel from the subscription on; ids up to `seen` came in the backlog.
    let live = stream::unfold(Some((sub.live, sub.closed, seen)), move |state| {
        let keep = keep.clone();
        async move {
            let (mut rx, mut closed, mut seen) = state?;
            loop {
                let got = tokio::select! {
                    got = rx.recv() => got,
                    _ = closed.wait_for(|c| *c) => return None,
                };
                match got {
                    Ok(i) if i.id > seen && keep(&i) => {
                        seen = i.id;
                        return Some((to_event(&i), Some((rx, closed, seen))));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let e = gap("this stream fell behind: reconnect with Last-Event-ID");
                        return Some((e, None));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    let events = stream::iter(first.into_iter().chain(backlog))
        .chain(live)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
