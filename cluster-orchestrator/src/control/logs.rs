//! Streamed logs relayed between the root and the workers ([`canopy_core::logs`]): the root's
//! `LogOpen` names an instance, the relay finds its worker and job name, and from then on the
//! stream's credits and close go down to that worker and its chunks come up to the session
//! that opened it. Nothing here is stored: a stream lives as long as the root session, the
//! worker and the reader do.
//!
//! A worker can only answer its own streams, in order: a chunk for a stream of another worker
//! is dropped, and one out of order ends the stream with an error for the reader. When the
//! worker is lost its streams end with that reason; when the root session ends its streams are
//! closed at their workers.

use super::Cluster;
use super::state::InstanceKey;
use crate::control::Publish;
use canopy_core::NodeId;
use canopy_core::logs::{LogChunk, LogClose, LogCredit, LogOpen};
use canopy_proto::worker::{LogOpenMessage, topics};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// The streams open through this cluster.
#[derive(Default)]
pub(super) struct LogRelay {
    streams: HashMap<u64, Relayed>,
    /// Where chunks go: the current root session.
    up: Option<mpsc::UnboundedSender<LogChunk>>,
}

struct Relayed {
    node: NodeId,
    next_seq: u64,
}

impl Cluster {
    fn relay(&self) -> std::sync::MutexGuard<'_, LogRelay> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, topic: String, body: &impl serde::Serialize) {
        if let Ok(payload) = serde_json::to_vec(body) {
            let _ = self.outgoing.send(Publish { topic, payload });
        }
    }

    /// A root session opened: chunks go to the returned channel from now on. The streams of
    /// the session before are closed at their workers (their readers went with it).
    pub fn attach_log_uplink(&self) -> mpsc::UnboundedReceiver<LogChunk> {
        let (tx, rx) = mpsc::unbounded_channel();
        let old = {
            let mut relay = self.relay();
            relay.up = Some(tx);
            std::mem::take(&mut relay.streams)
        };
        for (stream, r) in old {
            self.publish(topics::log_close(&r.node), &LogClose { stream });
        }
        rx
    }

    /// The root asks for an instance's log: the open goes to its worker, or the reason it
    /// cannot comes back as the stream's only chunk.
    pub async fn open_log(&self, open: LogOpen) {
        let target = {
            let st = self.state.lock().await;
            let key = InstanceKey {
                service: open.service.clone(),
                number: open.instance,
            };
            let placed = st.instances.get(&key).and_then(|i| i.node.clone());
            let job = st
                .services
                .get(&open.service)
                .map(|s| s.spec.job_name.to_string());
            match (placed, job) {
                (Some(node), Some(job)) => Ok((node, job)),
                _ => Err(format!(
                    "instance {} of service {} is on no worker of this cluster",
                    open.instance.0, open.service
                )),
            }
        };
        let (node, job) = match target {
            Ok(t) => t,
            Err(why) => return self.up(LogChunk::failed(open.stream, 0, why)),
        };
        self.relay().streams.insert(
            open.stream,
            Relayed {
                node: node.clone(),
                next_seq: 0,
            },
        );
        let msg = LogOpenMessage {
            stream: open.stream,
            job_name: job,
            instance_number: open.instance.0,
            tail: open.tail_lines,
            follow: open.follow,
            limit: open.limit_bytes,
            window: open.window,
        };
        self.publish(topics::log_open(&node), &msg);
    }

    pub fn log_credit(&self, credit: LogCredit) {
        let node = self
            .relay()
            .streams
            .get(&credit.stream)
            .map(|r| r.node.clone());
        if let Some(node) = node {
            self.publish(topics::log_credit(&node), &credit);
        }
    }

    pub fn log_close(&self, close: LogClose) {
        let node = self.relay().streams.remove(&close.stream).map(|r| r.node);
        if let Some(node) = node {
            self.publish(topics::log_close(&node), &close);
        }
    }

    /// `nodes/<id>/logs/data`: a chunk from worker `node`.
    pub fn on_log_data(&self, node: &NodeId, chunk: LogChunk) {
        let mut relay = self.relay();
        let Some(r) = relay.streams.get_mut(&chunk.stream) else {
            return;
        };
        if &r.node != node {
            tracing::warn!(%node, stream = chunk.stream, "log chunk for another worker's stream dropped");
            return;
        }
        let stream = chunk.stream;
        let forward = if chunk.seq == r.next_seq {
            r.next_seq += 1;
            chunk
        } else {
            let why = format!(
                "the worker's log chunks arrived out of order (got {}, expected {}): part of the log was lost on the way",
                chunk.seq, r.next_seq
            );
            let seq = r.next_seq;
            drop(relay);
            self.log_close(LogClose { stream });
            self.up(LogChunk::failed(stream, seq, why));
            return;
        };
        if forward.end {
            relay.streams.remove(&stream);
        }
        if let Some(up) = &relay.up {
            let _ = up.send(forward);
        }
    }

    /// Worker `node` is lost: its streams end with `why`.
    pub(super) fn end_logs_of(&self, node: &NodeId, why: &str) {
        let ended: Vec<(u64, u64)> = {
            let mut relay = self.relay();
            let ids: Vec<u64> = relay
                .streams
                .iter()
                .filter(|(_, r)| &r.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| relay.streams.remove(&id).map(|r| (id, r.next_seq)))
                .collect()
        };
        for (stream, seq) in ended {
            self.up(LogChunk::failed(
                stream,
                seq,
                format!("worker {node} lost: {why}"),
            ));
        }
    }

    /// Sends a chunk to the root session, if there is one.
    fn up(&self, chunk: LogChunk) {
        if let Some(up) = &self.relay().up {
            let _ = up.send(chunk);
        }
    }
}
