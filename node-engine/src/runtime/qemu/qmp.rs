//! A QMP client for one command at a time: connect, negotiate, execute, close.

use super::super::{Result, RuntimeError};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `command` on the QMP socket at `socket`; returns its `return` value.
pub async fn execute(socket: &Path, command: &str) -> Result<serde_json::Value> {
    tokio::time::timeout(TIMEOUT, run(socket, command))
        .await
        .map_err(|_| RuntimeError::Backend(format!("QMP {command}: no answer")))?
}

async fn run(socket: &Path, command: &str) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    // The greeting, then capabilities negotiation, then the command.
    next_reply(&mut lines, "greeting", "QMP").await?;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await?;
    next_reply(&mut lines, "qmp_capabilities", "return").await?;
    w.write_all(
        serde_json::json!({ "execute": command })
            .to_string()
            .as_bytes(),
    )
    .await?;
    w.write_all(b"\n").await?;
    next_reply(&mut lines, command, "return").await
}

/// The next message holding `key` (events are skipped); an `error` answer is an error.
async fn next_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    what: &str,
    key: &str,
) -> Result<serde_json::Value> {
    while let Some(line) = lines.next_line().await? {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(e) = v.get("error") {
            return Err(RuntimeError::Backend(format!("QMP {what}: {e}")));
        }
        if let Some(r) = v.get(key) {
            return Ok(r.clone());
        }
    }
    Err(RuntimeError::Backend(format!(
        "QMP {what}: connection closed"
    )))
}
