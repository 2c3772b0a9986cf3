//! The [`Root`] as a whole over an embedded store, on tokio's paused clock: failover after the
//! grace period, bursts of reports and concurrent changes sharing commits, a failed commit that
//! must leave memory as the store has it, autoscaling from reported
//! use (`autoscale.rs`, with the pure step's cases).

mod autoscale;
mod plan;

use super::state::Change;
use super::*;
use crate::model::Service;
use canopy_core::link::{
    ClusterReport, CommandAction, InstanceReport, Registration, ResourceAggregate,
};
use canopy_core::{
    Architecture, InstanceNumber, JobName, Resources, ServiceId, ServiceSpec, Virtualization,
};
use canopy_store::{Document, EmbeddedStore, Store};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// An embedded store whose writes fail while `broken` is set; it counts the commits (batches).
struct Flaky {
    inner: EmbeddedStore,
    broken: AtomicBool,
    batches: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn put(&self, c: &str, k: &str, doc: &Document) -> canopy_store::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("the disk is gone".into()));
        }
        self.inner.put(c, k, doc).await
    }
    async fn create(&self, c: &str, k: &str, doc: &Document) -> canopy_store::Result<()> {
        self.inner.create(c, k, doc).await
    }
    async fn get(&self, c: &str, k: &str) -> canopy_store::Result<Option<Document>> {
        self.inner.get(c, k).await
    }
    async fn delete(&self, c: &str, k: &str) -> canopy_store::Result<bool> {
        self.inner.delete(c, k).await
    }
    async fn list(&self, c: &str) -> canopy_store::Result<Vec<(String, Document)>> {
        self.inner.list(c).await
    }
    async fn write_batch(&self, batch: &canopy_store::Batch) -> canopy_store::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("the disk is gone".into()));
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.write_batch(batch).await
    }
    fn backend(&self) -> &'static str {
        "flaky"
    }
}

const GRACE: Duration = Duration::from_secs(1);

async fn root(dir: &tempfile::TempDir) -> (Arc<Root>, Arc<Flaky>) {
    let store = Arc::new(Flaky {
        inner: EmbeddedStore::open(dir.path()).await.unwrap(),
        broken: AtomicBool::new(false),
        batches: AtomicUsize::new(0),
    });
    let settings = Settings {
        cluster_grace: GRACE,
        tick: Duration::from_millis(500),
        ..Settings::default()
    };
    let root = Root::open(store.clone(), settings).await.unwrap();
    (root, store)
}

fn admin() -> Caller {
    Caller {
        name: "Admin".into(),
        admin: true,
        organization: String::new(),
    }
}

/// A one-worker cluster's report with `vcpus` free (0: full).
pub(super) fn report(vcpus: u32) -> ClusterReport {
    let agg = ResourceAggregate {
        active_nodes: 1,
        free: Resources {
            vcpus,
            memory_mb: 1000,
            vgpus: 0,
        },
        cpu_percent: 10.0,
        memory_percent: 10.0,
        virtualizations: [Virtualization::Container].into(),
        supported_addons: Default::default(),
        csi_drivers: Default::default(),
    };
    ClusterReport {
        total: agg.clone(),
        per_architecture: [(Architecture::Amd64, agg)].into(),
        ..Default::default()
    }
}

async fn cluster(root: &Root, name: &str, vcpus: u32) -> ClusterId {
    let reg = Registration {
        join_token: String::new(),
        cluster_name: name.into(),
        location: None,
        cluster_id: None,
        version: String::new(),
    };
    let id = root.register_cluster(&reg).await.unwrap().id;
    root.cluster_report(&id, report(vcpus)).await;
    id
}

/// Stores a service straight through a change (as creating an SLA would).
async fn service(root: &Root) -> ServiceId {
    service_with(root, None).await
}

/// [`service`] with an autoscaling policy.
async fn service_with(
    root: &Root,
    autoscale: Option<canopy_core::autoscale::Autoscale>,
) -> ServiceId {
    let id = ServiceId::parse("svc").unwrap();
    let mut spec = ServiceSpec::new(
        JobName::new("a", "b", "c", "d").unwrap(),
        Virtualization::Container,
        "img",
    );
    spec.resources.vcpus = 1;
    let s = Service {
        id: id.to_string(),
        application_id: "app".into(),
        owner: "Admin".into(),
        sla: serde_json::json!({}),
        spec,
        rr_ip: std::net::Ipv4Addr::new(10, 30, 0, 1),
        next_instance: 0,
        revision: 0,
        rollout: None,
        autoscale,
        instances: BTreeMap::new(),
    };
    let mut st = root.state.lock().await;
    let mut change = Change::new(&st);
    change.reserve(&st, s.rr_ip).unwrap();
    change.put_service(id.clone(), s).unwrap();
    root.commit(&mut st, change).await.unwrap();
    id
}

async fn placed_on(root: &Root, id: &ServiceId) -> Option<ClusterId> {
    let s = root.service(&admin(), id.as_str()).await.unwrap();
    s.instances[&InstanceNumber(0)].cluster_id.clone()
}

#[tokio::test(start_paused = true)]
async fn a_silent_cluster_loses_its_instance_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = root(&dir).await;
    let a = cluster(&root, "a", 8).await;
    let b = cluster(&root, "b", 2).await;
    let id = service(&root).await;
    root.scale_up(&admin(), id.as_str()).await.unwrap();
    assert_eq!(placed_on(&root, &id).await, Some(a.clone()));

    // b keeps reporting, a falls silent. Within the grace period nothing moves.
    tokio::time::advance(GRACE / 2).await;
    root.cluster_report(&b, report(2)).await;
    root.tick().await.unwrap();
    assert_eq!(placed_on(&root, &id).await, Some(a.clone()));

    tokio::time::advance(GRACE).await;
    root.cluster_report(&b, report(2)).await;
    root.tick().await.unwrap();
    assert_eq!(placed_on(&root, &id).await, Some(b.clone()));
    let actions: Vec<(ClusterId, bool)> = root
        .pending_commands()
        .await
        .into_iter()
        .map(|p| {
            let deploy = matches!(p.command.action, CommandAction::Deploy { .. });
            (p.cluster_id, deploy)
        })
        .collect();
    assert_eq!(
        actions,
        vec![(a.clone(), true), (a.clone(), false), (b.clone(), true)]
    );
    // The move is an event of the service: why, and where it went.
    let events = root.service_events(&admin(), id.as_str()).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.what, "failover");
    assert_eq!(last.why, format!("cluster {a} stopped reporting"));
    assert_eq!(last.outcome, format!("CLUSTER_SCHEDULED on cluster {b}"));
    assert_eq!(last.instance, Some(0));
}

pub(super) fn status_report(
    seq: u64,
    id: &ServiceId,
    n: u32,
    status: InstanceStatus,
) -> InstanceReport {
    InstanceReport {
        seq,
        service_id: id.clone(),
        instance: InstanceNumber(n),
        status,
        detail: String::new(),
        node_id: None,
        cpu_percent: 0.0,
        memory_mb: 0,
        ns_ip: None,
        ready: true,
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_reports_is_staged_in_order_and_committed_together() {
    use InstanceStatus::{NodeScheduled, Running};
    let dir = tempfile::tempdir().unwrap();
    let (root, store) = root(&dir).await;
    let a = cluster(&root, "a", 8).await;
    let id = service(&root).await;
    for _ in 0..3 {
        root.scale_up(&admin(), id.as_str()).await.unwrap();
    }
    let commits = || store.batches.load(Ordering::SeqCst);
    let before = commits();
    let burst = vec![
        status_report(1, &id, 0, NodeScheduled),
        status_report(2, &id, 1, Running),
        status_report(3, &id, 2, NodeScheduled),
        // Instance 0 again: staged on top of the first report, in a second change.
        status_report(4, &id, 0, Running),
        status_report(5, &id, 2, Running),
    ];
    assert_eq!(root.instance_reports(&a, burst).await.unwrap(), 5);
    // Two changes (instance 0 twice), written together: staged one after the other under the
    // lock, with nothing in between on this one-thread runtime.
    assert_eq!(commits() - before, 1, "the burst is one commit");
    let s = root.service(&admin(), id.as_str()).await.unwrap();
    let statuses: Vec<InstanceStatus> = s.instances.values().map(|i| i.status).collect();
    assert_eq!(statuses, vec![Running; 3]);

    // Old news changes nothing and commits nothing.
    let before = commits();
    let stale = vec![status_report(2, &id, 1, NodeScheduled)];
    assert_eq!(root.instance_reports(&a, stale).await.unwrap(), 5);
    assert_eq!(commits(), before);
    let s = root.service(&admin(), id.as_str()).await.unwrap();
    assert_eq!(s.instances[&InstanceNumber(1)].status, Running);

    // What was acknowledged is stored: a root opened anew on the store has it.
    drop(root);
    let reopened = Root::open(store.clone(), Settings::default())
        .await
        .unwrap();
    let s = reopened.service(&admin(), id.as_str()).await.unwrap();
    assert!(s.instances.values().all(|i| i.status == Running));
    assert_eq!(reopened.clusters(false).await[0].doc.last_acked_seq, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_staged_while_one_is_written_share_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (root, store) = root(&dir).await;
    cluster(&root, "a", 1000).await;
    let id = service(&root).await;
    let before = store.batches.load(Ordering::SeqCst);
    let adds: Vec<_> = (0..64)
        .map(|_| {
            let (root, id) = (root.clone(), id.clone());
            tokio::spawn(async move { root.scale_up(&admin(), id.as_str()).await.unwrap() })
        })
        .collect();
    let mut numbers = Vec::new();
    for a in adds {
        numbers.push(a.await.unwrap().0);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (0..64).collect::<Vec<u32>>());
    let commits = store.batches.load(Ordering::SeqCst) - before;
    assert!(commits < 64, "64 changes in {commits} commits");
    // Every acknowledged instance is stored.
    drop(root);
    let reopened = Root::open(store.clone(), Settings::default())
        .await
        .unwrap();
    let s = reopened.service(&admin(), id.as_str()).await.unwrap();
    assert_eq!(s.instances.len(), 64);
    assert_eq!(s.next_instance, 64);
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_leaves_memory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (root, store) = root(&dir).await;
    cluster(&root, "a", 8).await;
    let id = service(&root).await;
    let addresses = root.state.lock().await.pool.in_use();

    store.broken.store(true, Ordering::SeqCst);
    assert!(root.scale_up(&admin(), id.as_str()).await.is_err());
    let s = root.service(&admin(), id.as_str()).await.unwrap();
    assert_eq!((s.next_instance, s.instances.len()), (0, 0));
    assert_eq!(root.state.lock().await.pool.in_use(), addresses);
    assert!(root.pending_commands().await.is_empty());

    store.broken.store(false, Ordering::SeqCst);
    assert_eq!(
        root.scale_up(&admin(), id.as_str()).await.unwrap(),
        InstanceNumber(0)
    );
    assert_eq!(root.pending_commands().await.len(), 1);
}

#[tokio::test]
async fn worker_subnets_are_kept_per_worker_across_restarts_and_returned() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = root(&dir).await;
    let reg = Registration {
        join_token: String::new(),
        cluster_name: "edge".into(),
        location: None,
        cluster_id: None,
        version: String::new(),
    };
    let r = root.register_cluster(&reg).await.unwrap();
    let (c, token) = (r.id, r.session_token);
    let n = |s: &str| canopy_core::NodeId::parse(s).unwrap();
    let a = root.allocate_subnet(&c, &token, &n("wa")).await.unwrap();
    let b = root.allocate_subnet(&c, &token, &n("wb")).await.unwrap();
    assert_eq!(a.to_string(), "10.18.0.0");
    assert_eq!(b.to_string(), "10.18.0.64");
    assert_eq!(
        root.allocate_subnet(&c, &token, &n("wa")).await.unwrap(),
        a,
        "the same worker, the same subnet"
    );
    assert!(matches!(
        root.allocate_subnet(&c, "wrong", &n("wc")).await,
        Err(Error::BadCredentials)
    ));
    // A restarted root hands out what it stored, and nothing twice.
    drop(root);
    let (root, _) = super::tests::root(&dir).await;
    assert_eq!(root.allocate_subnet(&c, &token, &n("wb")).await.unwrap(), b);
    root.release_subnet(&c, &token, &n("wa")).await.unwrap();
    root.release_subnet(&c, &token, &n("wa")).await.unwrap();
    let c2 = root.allocate_subnet(&c, &token, &n("wc")).await.unwrap();
    assert_ne!(c2, b);
    // The view the clusters get names the workers their reports list on the overlay.
    let mut rep = report(1);
    rep.nodes = vec![canopy_core::link::NodeSummary {
        id: n("wb"),
        name: "wb".into(),
        active: true,
        architecture: Architecture::Amd64,
        virtualizations: vec![Virtualization::Container],
        cpu_percent: 0.0,
        memory_percent: 0.0,
        instances: 0,
        overlay: Some(canopy_core::overlay::Peer {
            subnet: b,
            underlay: "192.0.2.9".parse().unwrap(),
        }),
    }];
    root.cluster_report(&c, rep).await;
    let view = super::overlay::global_view(&*root.state.lock().await);
    assert_eq!(view.peers.len(), 1);
    assert_eq!(view.peers[0].peer.subnet, b);
}

/// Every change of an instance in memory gives it a stamp larger than before (what the API's
/// job documents are rewritten by); a report that changes nothing leaves it.
#[tokio::test(start_paused = true)]
async fn every_change_of_an_instance_gives_it_a_new_stamp() {
    use canopy_core::link::InstanceUsage;
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = root(&dir).await;
    let a = cluster(&root, "a", 8).await;
    let id = service(&root).await;
    root.scale_up(&admin(), id.as_str()).await.unwrap();
    let stamp = || async {
        let s = root.service(&admin(), id.as_str()).await.unwrap();
        s.instances[&InstanceNumber(0)].stamp.0
    };
    let placed = stamp().await;
    assert!(placed > 0);
    let r = status_report(1, &id, 0, InstanceStatus::Running);
    root.instance_report(&a, r).await.unwrap();
    let running = stamp().await;
    assert!(running > placed);
    let usage = |cpu_percent| {
        let mut rep = report(8);
        rep.usage = vec![InstanceUsage {
            service_id: id.clone(),
            instance: InstanceNumber(0),
            cpu_percent,
            memory_mb: 10,
            logs: "up".into(),
        }];
        rep
    };
    root.cluster_report(&a, usage(40.0)).await;
    let busy = stamp().await;
    assert!(busy > running, "live figures changed in place are stamped");
    root.cluster_report(&a, usage(40.0)).await;
    assert_eq!(stamp().await, busy, "the same figures again change nothing");
    root.cluster_report(&a, usage(41.0)).await;
    assert!(stamp().await > busy);
}

/// A burst of deploys between two reports is spread over equal clusters, not all sent to the
/// one whose last report was best; a report starts the count again.
#[tokio::test(start_paused = true)]
async fn a_burst_of_deploys_is_spread_over_equal_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = root(&dir).await;
    let a = cluster(&root, "a", 8).await;
    let b = cluster(&root, "b", 8).await;
    let id = service(&root).await;
    for _ in 0..6 {
        root.scale_up(&admin(), id.as_str()).await.unwrap();
    }
    let on = |c: &ClusterId, s: &Service| {
        s.instances
            .values()
            .filter(|i| i.cluster_id.as_ref() == Some(c))
            .count()
    };
    let s = root.service(&admin(), id.as_str()).await.unwrap();
    assert_eq!((on(&a, &s), on(&b, &s)), (3, 3));
    let unreported = |c: ClusterId| {
        let root = root.clone();
        async move { root.state.lock().await.clusters[&c].unreported }
    };
    assert_eq!(unreported(a.clone()).await, 3);
    root.cluster_report(&a, report(8)).await;
    assert_eq!(unreported(a).await, 0);
    assert_eq!(unreported(b).await, 3);
}
