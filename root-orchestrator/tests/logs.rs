//! Streamed logs at the root (`GET /api/service/{id}/instance/{n}/logs`) against a test cluster
//! on the real gRPC link: the open goes to the instance's cluster with the reader's tail and
//! follow; chunks reach the reader in order and credit goes back as it reads; a reader that
//! goes away closes the stream at the cluster; a chunk out of order, a lost cluster session or
//! the size cap break the stream off (the body ends without its final chunk); who may read
//! which log; the errors before a stream opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use canopy_core::InstanceStatus;
use canopy_core::logs::{LogChunk, LogOpen, WINDOW};
use common::{RootLog, TestCluster, TestRoot};
use reqwest::StatusCode;
use std::time::Duration;

fn chunk(stream: u64, seq: u64, data: &str) -> LogChunk {
    LogChunk {
        stream,
        seq,
        data: data.as_bytes().to_vec(),
        end: false,
        error: None,
    }
}

fn end(stream: u64, seq: u64) -> LogChunk {
    LogChunk {
        end: true,
        ..chunk(stream, seq, "")
    }
}

/// The next open (credit and closes of earlier streams are passed over).
async fn opened(cluster: &mut TestCluster) -> LogOpen {
    loop {
        if let RootLog::Open(o) = cluster.log_message().await {
            return o;
        }
    }
}

/// A root, a cluster, alice's service with instance 0 RUNNING on the cluster.
async fn running() -> (TestRoot, common::Api, TestCluster, String) {
    let root = TestRoot::start_with(|c| c.max_log_bytes = 1000).await;
    let alice = root.user("alice").await;
    let (cluster, id) = common::running_instance(&root, &alice, "logs").await;
    (root, alice, cluster, id)
}

fn get(api: &common::Api, path: &str) -> reqwest::RequestBuilder {
    api.http
        .get(format!("{}{path}", api.base))
        .bearer_auth(api.token.clone().unwrap())
}

#[tokio::test]
async fn chunks_reach_the_reader_in_order_and_credit_goes_back_as_it_reads() {
    let (root, alice, mut cluster, id) = running().await;
    let path = format!("/api/service/{id}/instance/0/logs?tail=20&follow=true");
    let request = tokio::spawn(get(&alice, &path).send());
    let open = opened(&mut cluster).await;
    assert_eq!(open.service.as_str(), id);
    assert_eq!(open.instance.0, 0);
    assert_eq!((open.tail_lines, open.follow), (Some(20), true));
    assert_eq!(open.window, WINDOW);
    assert_eq!(open.limit_bytes, 1000, "the root's --max-log-bytes");
    let s = open.stream;
    // The opening chunk: the answer is 200 with the log to come.
    cluster.log_chunk(&chunk(s, 0, "")).await;
    let mut resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let mut credited = 0;
    let mut text = String::new();
    for seq in 1..=20u64 {
        cluster
            .log_chunk(&chunk(s, seq, &format!("line {seq}\n")))
            .await;
        let got = resp.chunk().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&got).unwrap());
        // Credit comes back in batches as the reader takes chunks.
        while let Ok(m) = cluster.logs.try_recv() {
            match m {
                RootLog::Credit(c) => {
                    assert_eq!(c.stream, s);
                    credited += c.chunks;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let want: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, want);
    // 21 chunks taken (the opening one too), credited in batches of WINDOW / 2.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(RootLog::Credit(c)) = cluster.logs.try_recv() {
        credited += c.chunks;
    }
    assert_eq!(credited, 21 / (WINDOW / 2) * (WINDOW / 2));

    // The reader goes away: the stream is closed at the cluster.
    drop(resp);
    loop {
        match cluster.log_message().await {
            RootLog::Close(c) => {
                assert_eq!(c.stream, s);
                break;
            }
            RootLog::Credit(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // A late chunk of the closed stream reaches no one and breaks nothing.
    cluster.log_chunk(&chunk(s, 21, "late\n")).await;
    alice.ok(&format!("/api/service/{id}")).await;
    root.stop().await;
}

#[tokio::test]
async fn a_whole_log_ends_the_body_and_a_broken_stream_aborts_it() {
    let (root, alice, mut cluster, id) = running().await;
    let path = format!("/api/service/{id}/instance/0/logs");

    // The whole log: the body ends at the end chunk.
    let request = tokio::spawn(get(&alice, &path).send());
    let open = opened(&mut cluster).await;
    assert_eq!((open.tail_lines, open.follow), (None, false));
    let s = open.stream;
    cluster.log_chunk(&chunk(s, 0, "")).await;
    cluster.log_chunk(&chunk(s, 1, "a\nb\n")).await;
    cluster.log_chunk(&end(s, 2)).await;
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "a\nb\n");

    // A chunk out of order: the reader gets what came before, then the body breaks off, and
    // the stream is closed at the cluster.
    let request = tokio::spawn(get(&alice, &path).send());
    let s = opened(&mut cluster).await.stream;
    cluster.log_chunk(&chunk(s, 0, "")).await;
    cluster.log_chunk(&chunk(s, 1, "one\n")).await;
    let mut resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"one\n");
    cluster.log_chunk(&chunk(s, 3, "three\n")).await;
    let rest = resp.chunk().await;
    assert!(
        rest.is_err(),
        "a broken stream must not look complete: {rest:?}"
    );
    assert!(matches!(cluster.log_message().await, RootLog::Close(c) if c.stream == s));

    // More than --max-log-bytes (1000 here): the reader gets 1000 bytes, then the break.
    let request = tokio::spawn(get(&alice, &path).send());
    let s = opened(&mut cluster).await.stream;
    cluster.log_chunk(&chunk(s, 0, "")).await;
    let mut resp = request.await.unwrap().unwrap();
    let mut got = 0;
    let line = "x".repeat(99) + "\n";
    let mut seq = 1;
    let broke = loop {
        cluster.log_chunk(&chunk(s, seq, &line)).await;
        seq += 1;
        match resp.chunk().await {
            Ok(Some(b)) => got += b.len(),
            Ok(None) => panic!("the body ended as if complete after {got} bytes"),
            Err(_) => break true,
        }
        assert!(seq < 50, "no break after {got} bytes");
    };
    assert!(broke);
    assert_eq!(got, 1000);

    // The cluster's session ends mid-stream: the body breaks off.
    let request = tokio::spawn(get(&alice, &path).send());
    let s = opened(&mut cluster).await.stream;
    cluster.log_chunk(&chunk(s, 0, "")).await;
    cluster.log_chunk(&chunk(s, 1, "before\n")).await;
    let mut resp = request.await.unwrap().unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"before\n");
    cluster.kill();
    let rest = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the body ends when the cluster's session does");
    assert!(rest.is_err(), "{rest:?}");
    root.stop().await;
}

#[tokio::test]
async fn only_the_owner_reads_and_errors_come_before_any_log() {
    let (root, alice, mut cluster, id) = running().await;
    let bob = root.user("bob").await;
    let path = format!("/api/service/{id}/instance/0/logs");

    // Someone else's instance is not found; nothing goes to the cluster.
    let (status, body) = bob.get(&path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Bad parameters name themselves.
    for (query, field) in [("?tail=many", "tail"), ("?follow=maybe", "follow")] {
        let (status, body) = alice.get(&format!("{path}{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], field, "{body}");
    }
    let (status, body) = alice
        .get(&format!("/api/service/{id}/instance/x/logs"))
        .await;
    assert_eq!(
        (status, body["field"].clone()),
        (StatusCode::BAD_REQUEST, "instance_number".into())
    );
    let (status, _) = alice
        .get(&format!("/api/service/{id}/instance/7/logs"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(cluster.logs.try_recv().is_err(), "nothing was opened");

    // The worker says there is no such instance: 409 with its reason.
    let request = tokio::spawn({
        let alice = alice.clone();
        let path = path.clone();
        async move { alice.get(&path).await }
    });
    let s = opened(&mut cluster).await.stream;
    cluster
        .log_chunk(&LogChunk::failed(s, 0, "no instance x on this worker"))
        .await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no instance x"),
        "{body}"
    );

    // An instance on no worker has no log.
    cluster.report(&id, 0, InstanceStatus::Failed).await;
    let (status, body) = alice
        .call(
            reqwest::Method::POST,
            &format!("/api/service/{id}/instance/0/stop"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["field"], "instance");
    root.stop().await;
}
