//! Streamed logs (issue 16): `canopy logs` reads an instance's log from its worker through the
//! cluster and the root, with the real binaries and containerd.
//!
//! - `canopy logs -f`, started before the instance prints 10,000 lines quickly, shows all of
//!   them, in order, and no other line;
//! - `--tail 3` is exactly the last three lines; without `-f` the command ends at the end;
//! - a followed log ends (exit 0) when the instance is removed;
//! - a stopped instance has no log to stream: a clear error, no 5xx.
//!
//! (Who may read which log, flow control and broken streams: `root-orchestrator/tests/logs.rs`.)
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, demo_image, sla};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

const LINES: u32 = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_from_the_worker_in_order_and_follow_until_the_instance_goes() {
    let image = demo_image(&work());
    let stack = Stack::up(1).await;
    // A few seconds' pause, so the follower is attached before the burst.
    let script = format!(
        "echo ready; sleep 4; i=0; while [ $i -lt {LINES} ]; do echo \"line $i\"; i=$((i+1)); done; echo done; sleep 3600"
    );
    let svc = container("chatty", &image, &["sh", "-c", &script]);
    let id = stack.deploy(&sla("logs", vec![svc])).await.remove(0);
    stack.wait_all(&id, 1, "RUNNING").await;

    // Follow from the start, while the burst has not begun.
    let mut follow = stack.cli_spawn(&["logs", "logs.chatty", "-f"]);
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got.last().map(String::as_str) != Some("done") {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("only {} lines in time: {:?}", got.len(), got.last()))
            .unwrap()
            .unwrap_or_else(|| panic!("canopy logs -f ended after {} lines", got.len()));
        got.push(line);
    }
    let want: Vec<String> = std::iter::once("ready".to_owned())
        .chain((0..LINES).map(|i| format!("line {i}")))
        .chain(std::iter::once("done".to_owned()))
        .collect();
    assert_eq!(got.len(), want.len(), "every line, once");
    assert!(got == want, "in order: first difference at {:?}", {
        got.iter().zip(&want).position(|(a, b)| a != b)
    });

    // The end of the log, and the whole log without following.
    let tail = stack.cli_ok(&["logs", "logs.chatty", "--tail", "3"]).await;
    assert_eq!(
        tail,
        format!("line {}\nline {}\ndone\n", LINES - 2, LINES - 1)
    );
    let all = stack.cli_ok(&["logs", "logs.chatty"]).await;
    assert_eq!(all.lines().count(), want.len());

    // A stopped instance has no log to stream.
    stack
        .cli_ok(&["stop", "logs.chatty", "--instance", "0"])
        .await;
    stack.wait_all(&id, 1, "STOPPED").await;
    let (status, body) = stack
        .call("GET", &format!("/api/service/{id}/instance/0/logs"), None)
        .await;
    assert_eq!(status.as_u16(), 409, "{body}");
    assert_eq!(body["field"], "instance", "{body}");
    let out = stack.cli(&["logs", "logs.chatty"]).await;
    assert!(!out.ok && out.stderr.contains("on no worker"), "{out:?}");

    // Started again: a followed log ends when the instance is removed.
    stack
        .cli_ok(&["start", "logs.chatty", "--instance", "0"])
        .await;
    stack.wait_all(&id, 1, "RUNNING").await;
    let mut follow = stack.cli_spawn(&["logs", "logs.chatty", "-f"]);
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.is_some(), "the log of the new task");
    stack.cli_ok(&["scale", "logs.chatty", "0"]).await;
    // Read on (the new task prints its burst again) until the output ends.
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while lines.next_line().await.unwrap().is_some() {}
    });
    drained
        .await
        .expect("canopy logs -f ends when the instance is removed");
    let status = tokio::time::timeout(Duration::from_secs(10), follow.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    drop(stack);
}
