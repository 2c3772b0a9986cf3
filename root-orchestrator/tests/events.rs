//! `GET /api/events` over HTTP on loopback: the change feed as server-sent events. A user's
//! stream carries their changes and not another user's; a client that reconnects with
//! `Last-Event-ID` gets exactly what it missed (no loss, no duplicate); when the gap is older
//! than what the root keeps it is told so; filters and bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestRoot, sla};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// An open event stream.
struct Stream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buf: String,
}

impl Stream {
    async fn open(api: &common::Api, query: &str, last: Option<u64>) -> Stream {
        let mut req = api
            .http
            .get(format!("{}/api/events{query}", api.base))
            .bearer_auth(api.token.as_ref().unwrap());
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Stream {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or `None` after `within`.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut e = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        e.id = v.trim().parse().ok();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        e.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data = serde_json::from_str(v.trim()).unwrap();
                        any = true;
                    }
                }
                if any {
                    return Some(e);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    }

    /// Events until none comes for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }
}

fn kinds(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {}", e.event, e.data["action"].as_str().unwrap_or("")))
        .collect()
}

/// The instance events only (a scale up also changes its service's document).
fn instances(events: &[Sse]) -> Vec<Sse> {
    events
        .iter()
        .filter(|e| e.event == "instance")
        .cloned()
        .collect()
}

const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn the_event_stream_resumes_without_loss_and_shows_users_only_their_own() {
    let root = TestRoot::start().await;
    let alice = root.user("alice").await;
    let bob = root.user("bob").await;
    let admin = root.admin().await;
    let mut a = Stream::open(&alice, "", None).await;
    let mut b = Stream::open(&bob, "", None).await;
    let mut all = Stream::open(&admin, "", None).await;

    let app = alice.create_app(sla("shop", "web")).await.remove(0);
    let sid = alice.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.scale_up(&sid).await;
    let seen = a.drain(QUIET).await;
    assert_eq!(
        kinds(&seen),
        [
            "service put",
            "application put",
            "service put",
            "instance put"
        ],
        "{seen:?}"
    );
    let inst = &seen[3].data;
    assert_eq!(inst["service_id"], sid.as_str());
    assert_eq!(inst["instance"], 0);
    assert_eq!(inst["owner"], "alice");
    assert_eq!(inst["status"], "NoActiveClusterWithCapacity");
    let ids: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(seen[0].data["id"], ids[0]);
    // Bob sees none of it; the admin sees it all.
    assert!(b.drain(QUIET).await.is_empty());
    assert_eq!(all.drain(QUIET).await.len(), 4);

    // Alice's connection drops; three changes happen; she resumes from her last id.
    drop(a);
    alice.scale_up(&sid).await;
    alice.scale_up(&sid).await;
    let (s, _) = alice
        .call(
            Method::DELETE,
            &format!("/api/service/{sid}/instance/0"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut a = Stream::open(&alice, "", Some(*ids.last().unwrap())).await;
    let all_missed = a.drain(QUIET).await;
    let missed = instances(&all_missed);
    assert_eq!(
        kinds(&missed),
        ["instance put", "instance put", "instance delete"],
        "{all_missed:?}"
    );
    assert_eq!(
        missed
            .iter()
            .map(|e| e.data["instance"].clone())
            .collect::<Vec<_>>(),
        [1, 2, 0]
    );
    let ids: Vec<u64> = all_missed.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // Then live, with no duplicate of what the backlog gave.
    alice.scale_up(&sid).await;
    let live = a.drain(QUIET).await;
    assert_eq!(kinds(&live), ["service put", "instance put"], "{live:?}");
    assert!(live[0].id.unwrap() > *ids.last().unwrap());

    // Filters: only instances of this service.
    let mut only = Stream::open(&alice, &format!("?kind=instance&service={sid}"), None).await;
    let (s, _) = alice
        .call(Method::DELETE, &format!("/api/service/{sid}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = only.drain(QUIET).await;
    assert!(
        !got.is_empty() && got.iter().all(|e| e.event == "instance"),
        "{got:?}"
    );

    // Bad input: 400 naming the field.
    let (s, body) = alice.call(Method::GET, "/api/events?kind=pods", None).await;
    assert_eq!(
        (s, body["field"].clone()),
        (StatusCode::BAD_REQUEST, "kind".into())
    );
    let resp = alice
        .http
        .get(format!("{}/api/events", alice.base))
        .bearer_auth(alice.token.as_ref().unwrap())
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        root.anonymous().get("/api/events").await.0,
        StatusCode::UNAUTHORIZED
    );
    root.stop().await;
}

#[tokio::test]
async fn a_gap_older_than_what_is_kept_is_said_so() {
    let root = TestRoot::start_with(|c| c.events_kept = 3).await;
    let alice = root.user("alice").await;
    let mut a = Stream::open(&alice, "", None).await;
    let app = alice.create_app(sla("shop", "web")).await.remove(0);
    let sid = alice.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = a.drain(QUIET).await;
    let last = first.last().unwrap().id.unwrap();
    drop(a);
    for _ in 0..4 {
        alice.scale_up(&sid).await;
    }
    let mut a = Stream::open(&alice, "", Some(last)).await;
    let got = a.drain(QUIET).await;
    assert_eq!(got[0].event, "gap", "{got:?}");
    assert!(
        got[0].data["message"]
            .as_str()
            .unwrap()
            .contains("list again")
    );
    // The three kept changes follow (the last scale up: its service's document and its
    // instance; the one before: its instance).
    assert_eq!(
        kinds(&got[1..]),
        ["instance put", "service put", "instance put"],
        "{got:?}"
    );
    root.stop().await;
}
