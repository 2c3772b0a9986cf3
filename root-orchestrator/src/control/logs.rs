//! Streamed instance logs at the root ([`canopy_core::logs`]): a reader opens a stream of an
//! instance it may see; the open goes down the session of the instance's cluster, which relays
//! it to the worker; chunks come back through [`Root::log_chunk`] and are handed to the reader
//! in order. The reader grants credit as it takes chunks ([`LogStream::next`]), so the worker
//! never runs further ahead than the window; when the reader goes away ([`LogStream`] dropped)
//! the stream is closed at the worker. Nothing here is stored.

use super::apps::owned_service;
use super::{Caller, Error, Outbound, Result, Root, not_found};
use canopy_core::logs::{LogChunk, LogClose, LogCredit, LogOpen, WINDOW};
use canopy_core::{ClusterId, InstanceNumber};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a reader asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogQuery {
    pub tail_lines: Option<u32>,
    pub follow: bool,
}

/// The streams open at the root, by stream id.
#[derive(Default)]
pub(super) struct LogStreams {
    open: HashMap<u64, Open>,
    next_id: u64,
}

struct Open {
    cluster: ClusterId,
    tx: mpsc::Sender<LogChunk>,
    next_seq: u64,
}

/// One open stream, as its reader holds it.
pub struct LogStream {
    root: Arc<Root>,
    id: u64,
    cluster: ClusterId,
    rx: mpsc::Receiver<LogChunk>,
    /// Chunks taken and not yet credited back.
    taken: u32,
    /// How the stream ended, once it has (said again at every later call).
    done: Option<Next>,
    /// Read by [`LogStream::opened`], not handed out yet.
    peeked: Option<Next>,
    /// Bytes the reader may still get ([`super::Settings::max_log_bytes`]).
    left: u64,
}

/// How a stream went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Data(Vec<u8>),
    /// The whole log (or all of it until the instance was removed) was sent.
    End,
    /// The stream broke off: the reader did not get everything.
    Failed(String),
}

impl Root {
    fn log_streams(&self) -> std::sync::MutexGuard<'_, LogStreams> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a stream of the log of instance `n` of service `id`: not found unless `caller`
    /// may see it; a conflict when it is on no worker or its cluster is not connected.
    pub async fn open_log(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        n: u32,
        q: LogQuery,
    ) -> Result<LogStream> {
        let (service, cluster) = {
            let st = self.state.lock().await;
            let (key, s) = owned_service(&st, caller, id)?;
            let inst = s
                .instances
                .get(&InstanceNumber(n))
                .ok_or_else(|| not_found("instance", &n.to_string()))?;
            match (&inst.cluster_id, inst.node_id.is_some()) {
                (Some(c), true) => (key, c.clone()),
                _ => {
                    return Err(Error::Conflict {
                        field: "instance".into(),
                        message: format!(
                            "instance {n} is {} and on no worker: it has no log to stream",
                            inst.status
                        ),
                    });
                }
            }
        };
        // The window, and room for the reasons a cluster or the root may add.
        let (tx, rx) = mpsc::channel(WINDOW as usize + 2);
        let id = {
            let mut streams = self.log_streams();
            streams.next_id += 1;
            let id = streams.next_id;
            streams.open.insert(
                id,
                Open {
                    cluster: cluster.clone(),
                    tx,
                    next_seq: 0,
                },
            );
            id
        };
        let stream = LogStream {
            root: self.clone(),
            id,
            cluster: cluster.clone(),
            rx,
            taken: 0,
            done: None,
            peeked: None,
            left: self.settings.max_log_bytes,
        };
        let open = LogOpen {
            stream: id,
            service,
            instance: InstanceNumber(n),
            tail_lines: q.tail_lines,
            follow: q.follow,
            limit_bytes: self.settings.max_log_bytes,
            window: WINDOW,
        };
        if !self.send_to(&cluster, Outbound::LogOpen(open)) {
            return Err(Error::Conflict {
                field: "instance".into(),
                message: format!("its cluster {cluster} is not connected to the root"),
            });
        }
        Ok(stream)
    }

    /// Sends `what` down the session of `cluster`; `false` when it has none.
    fn send_to(&self, cluster: &ClusterId, what: Outbound) -> bool {
        self.sessions_lock()
            .get(cluster)
            .is_some_and(|s| s.tx.send(what).is_ok())
    }

    /// A chunk from `cluster`: handed to its reader, in order. A chunk out of order, or more
    /// than the window allows, ends the stream for its reader with the reason.
    pub fn log_chunk(&self, cluster: &ClusterId, chunk: LogChunk) {
        let mut streams = self.log_streams();
        let Some(open) = streams.open.get_mut(&chunk.stream) else {
            return;
        };
        if &open.cluster != cluster {
            tracing::warn!(%cluster, stream = chunk.stream, "log chunk for another cluster's stream dropped");
            return;
        }
        let problem = if chunk.seq != open.next_seq {
            Some(format!(
                "log chunks arrived out of order (got {}, expected {}): part of the log was lost on the way",
                chunk.seq, open.next_seq
            ))
        } else {
            None
        };
        open.next_seq += 1;
        let stream = chunk.stream;
        let end = chunk.end;
        let delivered = match problem {
            None => open.tx.try_send(chunk).map_err(|_| {
                "the worker sent more than the window allows; the stream was stopped".to_owned()
            }),
            Some(why) => Err(why),
        };
        if let Err(why) = delivered {
            let tx = open.tx.clone();
            streams.open.remove(&stream);
            drop(streams);
            // Room was made for this one: the reader reads its chunks, then the reason.
            let _ = tx.try_send(LogChunk::failed(stream, u64::MAX, why));
            self.send_to(cluster, Outbound::LogClose(LogClose { stream }));
        } else if end {
            streams.open.remove(&stream);
        }
    }

    /// A cluster's session ended: its streams end for their readers.
    pub(super) fn end_logs_of(&self, cluster: &ClusterId) {
        let mut streams = self.log_streams();
        let ids: Vec<u64> = streams
            .open
            .iter()
            .filter(|(_, o)| &o.cluster == cluster)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(o) = streams.open.remove(&id) {
                let why = format!("the root lost the session of cluster {cluster}");
                let _ = o.tx.try_send(LogChunk::failed(id, u64::MAX, why));
            }
        }
    }
}

impl LogStream {
    /// Waits for the worker's answer to the open; `Err` says why there is no log to stream.
    pub async fn opened(&mut self) -> std::result::Result<(), String> {
        match self.take().await {
            Next::Failed(why) => Err(why),
            next => {
                self.peeked = Some(next);
                Ok(())
            }
        }
    }

    /// The next part of the log (never empty), the end, or why it broke off.
    pub async fn next(&mut self) -> Next {
        loop {
            let next = match self.peeked.take() {
                Some(n) => n,
                None => self.take().await,
            };
            match next {
                Next::Data(d) if d.is_empty() => continue,
                other => return other,
            }
        }
    }

    /// One chunk, as what it means to the reader. Credit for what was taken goes back to the
    /// worker in batches of half the window.
    async fn take(&mut self) -> Next {
        if let Some(done) = &self.done {
            return done.clone();
        }
        let Some(chunk) = self.rx.recv().await else {
            let closed = Next::Failed("the stream was closed on the way".into());
            self.done = Some(closed.clone());
            return closed;
        };
        self.taken += 1;
        if self.taken >= WINDOW / 2 {
            let credit = LogCredit {
                stream: self.id,
                chunks: std::mem::take(&mut self.taken),
            };
            self.root
                .send_to(&self.cluster, Outbound::LogCredit(credit));
        }
        let mut data = chunk.data;
        if data.len() as u64 > self.left {
            // The worker went past the limit it was given: cut here.
            data.truncate(self.left as usize);
            self.done = Some(Next::Failed(format!(
                "the log goes on: a request gets at most {} bytes (--max-log-bytes)",
                self.root.settings.max_log_bytes
            )));
        } else if let Some(why) = chunk.error {
            self.done = Some(Next::Failed(why));
        } else if chunk.end {
            self.done = Some(Next::End);
        }
        self.left -= data.len() as u64;
        match &self.done {
            Some(done) if data.is_empty() => done.clone(),
            _ => Next::Data(data),
        }
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        let open = self.root.log_streams().open.remove(&self.id).is_some();
        if open {
            self.root.send_to(
                &self.cluster,
                Outbound::LogClose(LogClose { stream: self.id }),
            );
        }
    }
}
