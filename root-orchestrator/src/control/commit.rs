//! Group commit: changes staged one after the other under the state lock are written to the
//! store together, in one [`canopy_store::Store::write_batch`], by one task.
//!
//! [`Root::enqueue`] applies a staged change to memory and queues its writes, its commands for
//! clusters and its feed items; it returns a [`Durable`] that resolves once the writes are
//! on disk. The committer takes every change queued by then, writes them as one batch (later
//! writes of a key win, as in [`canopy_store::Tx::append`]), and only then delivers their
//! commands and feed items, in order, and resolves each one's `Durable`. A caller answers
//! (acknowledges) only after its `Durable` resolved, and it waits for it after releasing the
//! lock ([`Root::settle`]), so the next change can be staged while this one is written: under
//! load many changes share one sync to disk.
//!
//! A change is in memory before it is on disk, so a reader may briefly see what is not
//! acknowledged yet; nothing is sent, published or acknowledged before it is durable. When a
//! write fails, memory holds changes the store does not: every change queued until then fails
//! (its caller gets the error), and the state is loaded again from the store under the lock
//! before anything else is staged ([`Root::recover`]) — memory is then as the store has it, as
//! after a restart (what is never stored, the clusters' liveness and last reports, is kept).

use super::state::{Change, State};
use super::{Delivery, Now, Outbound, Result, Root};
use canopy_api::FeedItem;
use canopy_store::{StoreError, Tx};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use tokio::sync::{MutexGuard, mpsc, oneshot};

/// A change applied to memory, waiting for its writes.
pub(super) struct Queued {
    /// [`Root::recover`]s before it was staged: one staged before the last recovery was
    /// staged on memory the store never had.
    epoch: u64,
    tx: Tx<Delivery>,
    feed: Vec<FeedItem>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Resolves when a change's writes are durable (or failed).
#[must_use = "a change is acknowledged only once its writes are durable"]
pub(super) struct Durable(oneshot::Receiver<Result<(), String>>);

impl Durable {
    async fn wait(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Backend(e)),
            Err(_) => Err(StoreError::Backend("the root is shutting down".into())),
        }
    }
}

/// Changes taken from the queue at once, at most.
const GROUP: usize = 1024;

impl Root {
    /// Applies `change` to memory and queues its writes; see the module docs.
    pub(super) fn enqueue(&self, st: &mut State, change: Change) -> Durable {
        let (tx, apply) = change.split();
        let feed = apply.feed(st);
        st.apply(apply);
        let (done, durable) = oneshot::channel();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let queued = Queued {
            epoch,
            tx,
            feed,
            done,
        };
        if let Err(mpsc::error::SendError(q)) = self.commits.send(queued) {
            let _ = q.done.send(Err("the root is shutting down".into()));
        }
        Durable(durable)
    }

    /// Writes a staged change and waits for it while holding the lock; only then is it
    /// acknowledged (its commands are sent by then). On `Err` memory is as the store has it.
    pub(super) async fn commit(&self, st: &mut State, change: Change) -> Result<()> {
        let durable = self.enqueue(st, change);
        match durable.wait().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.recover(st).await;
                Err(e.into())
            }
        }
    }

    /// Releases the lock, then waits for `durable` (the last change this caller queued: they
    /// are written in order, and a failure fails every later one). On `Err` the state is
    /// loaded again before the error is returned.
    pub(super) async fn settle(&self, st: MutexGuard<'_, State>, durable: Durable) -> Result<()> {
        drop(st);
        match durable.wait().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut st = self.state.lock().await;
                self.recover(&mut st).await;
                Err(e.into())
            }
        }
    }

    /// After a failed write: loads the state from the store, unless that was done since.
    async fn recover(&self, st: &mut State) {
        if !self.write_failed.load(Ordering::SeqCst) {
            return;
        }
        match State::load(&self.store, Now::read()).await {
            Ok(mut loaded) => {
                // What is never stored (clusters' liveness and last reports) stays.
                for (id, old) in std::mem::take(&mut st.clusters) {
                    if let Some(e) = loaded.clusters.get_mut(&id) {
                        e.report = old.report;
                        e.nodes = old.nodes;
                        e.last_seen = old.last_seen;
                        e.last_report_unix = old.last_report_unix;
                    }
                }
                *st = loaded;
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.write_failed.store(false, Ordering::SeqCst);
                tracing::warn!("state loaded again from the store after a failed write");
            }
            Err(e) => tracing::error!(error = %e, "cannot load the state after a failed write"),
        }
    }
}

/// The committer task: runs until the root is dropped.
pub(super) async fn run(root: Weak<Root>, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let mut group = Vec::with_capacity(GROUP);
    while queue.recv_many(&mut group, GROUP).await > 0 {
        let Some(root) = root.upgrade() else {
            return;
        };
        write(&root, std::mem::take(&mut group)).await;
    }
}

async fn write(root: &Root, group: Vec<Queued>) {
    let fail = |group: Vec<Queued>, why: String| {
        for q in group {
            let _ = q.done.send(Err(why.clone()));
        }
    };
    // Staged on top of memory that a failed write left ahead of the store: refused (the
    // state is loaded again from the store).
    let epoch = root.epoch.load(Ordering::SeqCst);
    let (group, stale): (Vec<Queued>, Vec<Queued>) = group
        .into_iter()
        .partition(|q| q.epoch == epoch && !root.write_failed.load(Ordering::SeqCst));
    fail(
        stale,
        "an earlier write failed; the state was loaded again".into(),
    );
    if group.is_empty() {
        return;
    }
    let mut tx = Tx::new();
    let mut rest = Vec::with_capacity(group.len());
    for q in group {
        tx.append(q.tx);
        rest.push((q.feed, q.done));
    }
    let sends = match tx.commit(&*root.store).await {
        Ok(sends) => sends,
        Err(e) => {
            root.write_failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, "a store write failed");
            for (_, done) in rest {
                let _ = done.send(Err(e.to_string()));
            }
            return;
        }
    };
    for (feed, _) in &mut rest {
        root.feed.publish(std::mem::take(feed));
    }
    root.overlay_changed();
    if !sends.is_empty() {
        let sessions = root.sessions_lock();
        for (cluster, command) in sends {
            if let Some(s) = sessions.get(&cluster) {
                let _ = s.tx.send(Outbound::Command(command));
            }
        }
    }
    for (_, done) in rest {
        let _ = done.send(Ok(()));
    }
}
