//! QMP, QEMU's control socket, for one command at a time. Used only to stop a VM: connecting
//! to a QEMU whose guest is shutting down by itself can wedge it (seen with QEMU 10 under
//! load), so nothing polls it.

use super::super::{Result, RuntimeError};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A negotiated QMP connection.
pub struct Session {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Session {
    /// Connects to the socket at `socket` and negotiates capabilities.
    pub async fn connect(socket: &Path) -> Result<Session> {
        Session::negotiate(dial(socket).await?).await
    }

    /// Negotiates capabilities on a connected socket.
    pub async fn negotiate(stream: UnixStream) -> Result<Session> {
        let (r, w) = stream.into_split();
        let mut s = Session {
            lines: BufReader::new(r).lines(),
            w,
        };
        tokio::time::timeout(TIMEOUT, async {
            s.reply("greeting", "QMP").await?;
            s.execute("qmp_capabilities").await
        })
        .await
        .map_err(|_| RuntimeError::Backend("QMP greeting: no answer".into()))??;
        Ok(s)
    }

    /// Runs `command`; returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        let msg = serde_json::json!({ "execute": command }).to_string() + "\n";
        self.w.write_all(msg.as_bytes()).await?;
        self.reply(command, "return").await
    }

    /// The next message holding `key` (events are skipped); an `error` answer is an error.
    async fn reply(&mut self, what: &str, key: &str) -> Result<serde_json::Value> {
        while let Some(line) = self.lines.next_line().await? {
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
}

/// Connects to the socket at `socket`.
pub async fn dial(socket: &Path) -> Result<UnixStream> {
    tokio::time::timeout(TIMEOUT, UnixStream::connect(socket))
        .await
        .map_err(|_| RuntimeError::Backend("QMP connect: no answer".into()))?
        .map_err(RuntimeError::from)
}

/// Runs one `command` on the QMP socket at `socket`.
pub async fn execute(socket: &Path, command: &str) -> Result<serde_json::Value> {
    tokio::time::timeout(TIMEOUT, async {
        let mut s = Session::connect(socket).await?;
        s.execute(command).await
    })
    .await
    .map_err(|_| RuntimeError::Backend(format!("QMP {command}: no answer")))?
}
