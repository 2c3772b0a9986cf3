//! The change feed behind `GET /api/events`: every committed change to an application, a
//! service, an instance or a cluster, and every worker that joins, leaves or changes activity
//! in a cluster's report, becomes one [`FeedItem`] with the next id. The latest
//! `--events-kept` items are kept, so a client that reconnects with `Last-Event-ID` gets
//! exactly what it missed, or learns that the gap is too old and it must list again.
//!
//! Items are made from the staged change before it is applied (a deleted object's owner is
//! still known then) and published after the commit, under one lock with the subscription,
//! so a subscriber sees each item once: from the backlog or from the live channel, never both.

use canopy_api::FeedItem;
use canopy_core::link::NodeSummary;
use canopy_core::{ClusterId, NodeId};
use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// The workers of `cluster` that joined, left or changed activity between two of its
/// reports, as feed items of kind `node` (usage figures alone are no change).
pub fn node_changes(
    cluster: &ClusterId,
    before: &[NodeSummary],
    after: &[NodeSummary],
) -> Vec<FeedItem> {
    let item = |n: &NodeSummary, action: &str| {
        let mut f = FeedItem::new("node", action, n.id.to_string());
        f.name = format!("{} (cluster {cluster})", n.name);
        f.status = Some(if n.active { "active" } else { "inactive" }.into());
        f
    };
    let was: HashMap<&NodeId, &NodeSummary> = before.iter().map(|n| (&n.id, n)).collect();
    let now: HashSet<&NodeId> = after.iter().map(|n| &n.id).collect();
    let mut out: Vec<FeedItem> = after
        .iter()
        .filter(|n| {
            was.get(&n.id)
                .is_none_or(|b| b.active != n.active || b.name != n.name)
        })
        .map(|n| item(n, "put"))
        .collect();
    out.extend(
        before
            .iter()
            .filter(|b| !now.contains(&b.id))
            .map(|b| item(b, "delete")),
    );
    out
}

/// Who may see an item: its owner and admins; items without an owner (clusters) everyone.
pub fn visible(item: &FeedItem, user: &str, admin: bool) -> bool {
    admin || item.owner.as_deref().is_none_or(|o| o == user)
}

/// What a subscriber asked for (`?kind=…&application=…&service=…`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kinds: Vec<String>,
    pub application: Option<String>,
    pub service: Option<String>,
}

impl Filter {
    pub fn matches(&self, item: &FeedItem) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&item.kind))
            && self
                .application
                .as_ref()
                .is_none_or(|a| item.application_id.as_ref() == Some(a))
            && self
                .service
                .as_ref()
                .is_none_or(|s| item.service_id.as_ref() == Some(s))
    }
}

/// A subscription: the kept items after the one asked for, whether some in between are no
/// longer kept, and the live channel from there on.
pub struct Subscription {
    pub backlog: Vec<Arc<FeedItem>>,
    pub gap: bool,
    pub live: broadcast::Receiver<Arc<FeedItem>>,
    /// Turns true when the root shuts down: streams end then (a server drains its
    /// connections before it stops, and an event stream would never end by itself).
    pub closed: watch::Receiver<bool>,
}

struct Kept {
    items: VecDeque<Arc<FeedItem>>,
    next_id: u64,
}

pub struct Feed {
    kept: Mutex<Kept>,
    capacity: usize,
    live: broadcast::Sender<Arc<FeedItem>>,
    closed: watch::Sender<bool>,
}

impl Feed {
    /// A feed keeping the latest `capacity` items, numbered from `first_id` (the root takes
    /// the clock in microseconds, so ids grow across restarts too).
    pub fn new(capacity: usize, first_id: u64) -> Feed {
        Feed {
            kept: Mutex::new(Kept {
                items: VecDeque::new(),
                next_id: first_id.max(1),
            }),
            capacity: capacity.max(1),
            live: broadcast::channel(1024).0,
            closed: watch::channel(false).0,
        }
    }

    /// Ends every subscription's stream (the root is shutting down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Turns true when the root shuts down: every long-lived response (this feed's streams,
    /// followed logs) ends then, so the server can stop.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers, keeps and sends `items`.
    pub fn publish(&self, items: Vec<FeedItem>) {
        if items.is_empty() {
            return;
        }
        let mut k = self.lock();
        for mut item in items {
            item.id = k.next_id;
            k.next_id += 1;
            let item = Arc::new(item);
            k.items.push_back(item.clone());
            if k.items.len() > self.capacity {
                k.items.pop_front();
            }
            let _ = self.live.send(item);
        }
    }

    /// Subscribes after item `after` (`None`: only what comes from now on).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let k = self.lock();
        let live = self.live.subscribe();
        let closed = self.closed.subscribe();
        let Some(after) = after else {
            return Subscription {
                backlog: Vec::new(),
                gap: false,
                live,
                closed,
            };
        };
        let oldest = k.items.front().map_or(k.next_id, |i| i.id);
        Subscription {
            backlog: k.items.iter().filter(|i| i.id > after).cloned().collect(),
            // Items after `after` were published and are gone (an id from before a restart
            // of the root is a gap too: nothing of that time is kept).
            gap: after + 1 < oldest,
            live,
            closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &str, owner: Option<&str>) -> FeedItem {
        let mut f = FeedItem::new(kind, "put", "x");
        f.owner = owner.map(str::to_owned);
        f.application_id = Some("a1".into());
        f
    }

    #[tokio::test]
    async fn resuming_gets_exactly_what_was_missed_or_says_it_is_gone() {
        let feed = Feed::new(3, 10);
        feed.publish(vec![
            item("service", Some("alice")),
            item("instance", Some("alice")),
        ]);
        let ids = |s: &Subscription| s.backlog.iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(&feed.subscribe(Some(10))), [11]);
        assert!(!feed.subscribe(Some(10)).gap);
        let mut sub = feed.subscribe(Some(11));
        assert!(sub.backlog.is_empty() && !sub.gap);
        feed.publish(vec![item("cluster", None)]);
        assert_eq!(sub.live.recv().await.unwrap().id, 12);
        // Two more: item 10 is no longer kept.
        feed.publish(vec![item("app", Some("bob")), item("app", Some("bob"))]);
        let s = feed.subscribe(Some(9));
        assert!(s.gap);
        assert_eq!(ids(&s), [12, 13, 14]);
        assert!(!feed.subscribe(Some(11)).gap);
        assert!(feed.subscribe(None).backlog.is_empty());
    }

    #[test]
    fn workers_that_join_leave_or_change_activity_are_node_items() {
        use canopy_core::Architecture;
        let node = |id: &str, active: bool, cpu: f64| NodeSummary {
            id: NodeId::parse(id).unwrap(),
            name: id.into(),
            active,
            architecture: Architecture::Amd64,
            virtualizations: Vec::new(),
            cpu_percent: cpu,
            memory_percent: 0.0,
            instances: 0,
            overlay: None,
        };
        let c = ClusterId::parse("c1").unwrap();
        let before = [node("w1", true, 1.0), node("w2", true, 1.0)];
        // Usage alone: nothing.
        assert!(
            node_changes(
                &c,
                &before,
                &[node("w1", true, 50.0), node("w2", true, 9.0)]
            )
            .is_empty()
        );
        let after = [node("w1", false, 1.0), node("w3", true, 0.0)];
        let got: Vec<(String, String, Option<String>)> = node_changes(&c, &before, &after)
            .into_iter()
            .map(|i| (i.object_id, i.action, i.status))
            .collect();
        assert_eq!(
            got,
            [
                ("w1".into(), "put".into(), Some("inactive".into())),
                ("w3".into(), "put".into(), Some("active".into())),
                ("w2".into(), "delete".into(), Some("active".into())),
            ]
        );
    }

    #[test]
    fn users_see_their_own_and_unowned_items_admins_all() {
        let mine = item("service", Some("alice"));
        let cluster = item("cluster", None);
        assert!(visible(&mine, "alice", false) && !visible(&mine, "bob", false));
        assert!(visible(&mine, "bob", true) && visible(&cluster, "bob", false));
        let f = Filter {
            kinds: vec!["instance".into()],
            ..Filter::default()
        };
        assert!(!f.matches(&mine) && f.matches(&item("instance", None)));
        let f = Filter {
            application: Some("a2".into()),
            ..Filter::default()
        };
        assert!(!f.matches(&mine));
    }
}
