//! The façade end to end on an embedded store, without MQTT: what the root sees, worker
//! timeouts and crash back-off on paused time.

use super::*;
use canopy_core::link::{Command, CommandAction};
use canopy_core::{Architecture, InstanceNumber, Resources, ServiceId};
use canopy_proto::worker::NodeRegistration;
use std::time::Duration;

struct AllowAll;

#[async_trait]
impl NodeAuth for AllowAll {
    async fn allow(&self, _: &NodeId, _: &str) -> Result<(), String> {
        Ok(())
    }
}

fn registration(
    host: &str,
    arch: &str,
    vcpus: u32,
    memory: u64,
    addons: &[&str],
) -> NodeRegistration {
    serde_json::from_value(serde_json::json!({
        "host": host, "architecture": arch, "vcpus": vcpus, "memory": memory,
        "cpu_percent": 20.0, "memory_percent": 40.0,
        "virtualization": ["docker"], "supported_addons": addons, "token": "t"
    }))
    .unwrap()
}

#[tokio::test]
async fn the_root_sees_sums_averages_and_architectures_after_placements() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(canopy_store::EmbeddedStore::open(dir.path()).await.unwrap());
    let (cluster, mut out) = Cluster::open(store, Settings::default(), Arc::new(AllowAll))
        .await
        .unwrap();
    cluster
        .register_worker(&registration("a", "amd64", 4, 4000, &["gpu-share"]))
        .await
        .unwrap();
    cluster
        .register_worker(&registration("b", "arm64", 2, 1000, &[]))
        .await
        .unwrap();
    let r = cluster.resource_report().await;
    assert_eq!(r.total.active_nodes, 2);
    assert_eq!((r.total.free.vcpus, r.total.free.memory_mb), (6, 5000));
    assert_eq!((r.total.cpu_percent, r.total.memory_percent), (20.0, 40.0));
    assert!(r.total.supported_addons.contains("gpu-share"));
    assert_eq!(
        r.per_architecture[&Architecture::Arm64].free.memory_mb,
        1000
    );

    // One instance asking for 3 vcpus and 3000 MB fits only on "a"; afterwards "a" offers
    // what is left.
    let mut spec = canopy_core::ServiceSpec::new(
        "app.ns.web.ns".parse().unwrap(),
        canopy_core::Virtualization::Container,
        "img",
    );
    spec.resources = Resources {
        vcpus: 3,
        memory_mb: 3000,
        vgpus: 0,
    };
    let cmd = Command {
        id: 1,
        action: CommandAction::Deploy {
            service_id: ServiceId::parse("svc").unwrap(),
            instance: InstanceNumber(0),
            spec: Box::new(spec),
            instance_ip: None,
        },
    };
    cluster.apply_command(&cmd).await.unwrap();
    cluster.apply_command(&cmd).await.unwrap(); // idempotent
    let deploys: Vec<Publish> = std::iter::from_fn(|| out.try_recv().ok()).collect();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    let r = cluster.resource_report().await;
    assert_eq!(r.per_architecture[&Architecture::Amd64].free.vcpus, 1);
    assert_eq!(r.total.free.memory_mb, 2000);
    let reports = cluster.pending_reports().await;
    assert_eq!(
        reports.last().unwrap().status,
        InstanceStatus::NodeScheduled
    );
    assert_eq!(
        reports.len(),
        1,
        "only the newest report per instance is kept"
    );
}

// ---------------------------------------------------------------- paused time, failing store

/// An embedded store whose writes fail while `failing` is set; it counts the commits
/// (batches).
struct Flaky {
    inner: canopy_store::EmbeddedStore,
    failing: std::sync::atomic::AtomicBool,
    batches: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl canopy_store::Store for Flaky {
    async fn put(
        &self,
        collection: &str,
        key: &str,
        doc: &canopy_store::Document,
    ) -> canopy_store::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.inner.put(collection, key, doc).await
    }
    async fn create(
        &self,
        collection: &str,
        key: &str,
        doc: &canopy_store::Document,
    ) -> canopy_store::Result<()> {
        self.inner.create(collection, key, doc).await
    }
    async fn get(
        &self,
        collection: &str,
        key: &str,
    ) -> canopy_store::Result<Option<canopy_store::Document>> {
        self.inner.get(collection, key).await
    }
    async fn delete(&self, collection: &str, key: &str) -> canopy_store::Result<bool> {
        self.inner.delete(collection, key).await
    }
    async fn list(
        &self,
        collection: &str,
    ) -> canopy_store::Result<Vec<(String, canopy_store::Document)>> {
        self.inner.list(collection).await
    }
    async fn write_batch(&self, batch: &canopy_store::Batch) -> canopy_store::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Backend("disk full".into()));
        }
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.write_batch(batch).await
    }
    fn backend(&self) -> &'static str {
        "flaky"
    }
}

struct Fixture {
    cluster: Arc<Cluster>,
    out: mpsc::UnboundedReceiver<Publish>,
    store: Arc<Flaky>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        inner: canopy_store::EmbeddedStore::open(dir.path()).await.unwrap(),
        failing: false.into(),
        batches: 0.into(),
    });
    let shared: SharedStore = store.clone();
    let (cluster, out) = Cluster::open(shared, Settings::default(), Arc::new(AllowAll))
        .await
        .unwrap();
    Fixture {
        cluster,
        out,
        store,
        _dir: dir,
    }
}

impl Fixture {
    /// Registers an amd64 worker with 4 vcpus and 4000 MB.
    async fn join(&self, host: &str) -> NodeId {
        self.cluster
            .register_worker(&registration(host, "amd64", 4, 4000, &[]))
            .await
            .unwrap()
            .id
    }
}

const JOB: &str = "app.ns.web.ns";

fn deploy(service: &str) -> Command {
    let spec = canopy_core::ServiceSpec::new(
        JOB.parse().unwrap(),
        canopy_core::Virtualization::Container,
        "img",
    );
    Command {
        id: 1,
        action: CommandAction::Deploy {
            service_id: ServiceId::parse(service).unwrap(),
            instance: InstanceNumber(0),
            spec: Box::new(spec),
            instance_ip: None,
        },
    }
}

fn status(s: InstanceStatus) -> canopy_proto::worker::JobStatusEvent {
    status_of(0, s)
}

fn status_of(n: u32, s: InstanceStatus) -> canopy_proto::worker::JobStatusEvent {
    canopy_proto::worker::JobStatusEvent {
        job: JOB.parse().unwrap(),
        instance: InstanceNumber(n),
        status: s,
        detail: String::new(),
        ns_ip: None,
        ready: true,
    }
}

/// Topics published since the last call.
fn published(out: &mut mpsc::UnboundedReceiver<Publish>) -> Vec<String> {
    std::iter::from_fn(|| out.try_recv().ok())
        .map(|p| p.topic)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_lost_after_the_timeout_and_its_instance_moves() {
    let mut f = fixture().await;
    let a = f.join("a").await;
    let b = f.join("b").await;
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    let first = f.cluster.instances().await[0].node.clone().unwrap();
    let other = if first == a { b } else { a };
    published(&mut f.out);

    // `other` reports within the timeout; `first` is silent for half a second longer.
    let timeout = Settings::default().worker_timeout;
    tokio::time::advance(timeout - Duration::from_secs(1)).await;
    f.cluster
        .on_information(&other, canopy_proto::worker::NodeInformation::default())
        .await;
    tokio::time::advance(Duration::from_millis(900)).await;
    f.cluster.tick().await;
    assert!(
        published(&mut f.out).is_empty(),
        "not lost before the timeout"
    );
    tokio::time::advance(Duration::from_millis(600)).await;
    f.cluster.tick().await;

    let active: Vec<NodeId> = f
        .cluster
        .workers()
        .await
        .into_iter()
        .filter(|w| w.active)
        .map(|w| w.doc.id)
        .collect();
    assert_eq!(active, std::slice::from_ref(&other));
    let i = &f.cluster.instances().await[0];
    assert_eq!(i.node.as_ref(), Some(&other));
    assert_eq!(i.status, InstanceStatus::NodeScheduled);
    assert_eq!(
        published(&mut f.out),
        [canopy_proto::worker::topics::deploy(&other)]
    );
}

#[tokio::test(start_paused = true)]
async fn commands_and_statuses_that_arrive_together_are_one_commit_each() {
    use InstanceStatus::{Creating, NodeScheduled, Running};
    let mut f = fixture().await;
    let w = f.join("a").await;
    let commits = || f.store.batches.load(std::sync::atomic::Ordering::SeqCst);
    let cmds: Vec<Command> = (0..3)
        .map(|n| {
            let mut c = deploy("svc");
            c.id = u64::from(n) + 1;
            if let CommandAction::Deploy { instance, .. } = &mut c.action {
                *instance = InstanceNumber(n);
            }
            c
        })
        .collect();
    let before = commits();
    f.cluster.apply_commands(&cmds).await.unwrap();
    assert_eq!(commits() - before, 1);
    assert_eq!(
        published(&mut f.out).len(),
        3,
        "each new instance is placed"
    );

    // Two statuses of one instance and one of another, in one batch: staged in order.
    let before = commits();
    let batch = vec![
        (w.clone(), status_of(0, Creating)),
        (w.clone(), status_of(1, Running)),
        (w.clone(), status_of(0, Running)),
    ];
    f.cluster.on_job_statuses(batch).await;
    assert_eq!(commits() - before, 1);
    let statuses: Vec<(u32, InstanceStatus)> = f
        .cluster
        .instances()
        .await
        .iter()
        .map(|i| (i.number.0, i.status))
        .collect();
    assert_eq!(
        statuses,
        vec![(0, Running), (1, Running), (2, NodeScheduled)]
    );
    let reports: Vec<(u32, InstanceStatus)> = f
        .cluster
        .pending_reports()
        .await
        .iter()
        .map(|r| (r.instance.0, r.status))
        .collect();
    assert_eq!(
        reports,
        vec![(2, NodeScheduled), (1, Running), (0, Running)],
        "the newest report per instance, in the order they were made"
    );

    // A status from a node the cluster does not know commits nothing.
    let before = commits();
    let stranger = NodeId::parse("0123456789abcdef01234567").unwrap();
    f.cluster
        .on_job_statuses(vec![(stranger, status_of(2, Running))])
        .await;
    assert_eq!(commits(), before);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_instance_waits_out_its_back_off() {
    let mut f = fixture().await;
    let w = f.join("a").await;
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    f.cluster
        .on_job_status(&w, status(InstanceStatus::Running))
        .await;
    published(&mut f.out);

    f.cluster
        .on_job_status(&w, status(InstanceStatus::Dead))
        .await;
    let delete = canopy_proto::worker::topics::delete(&w);
    assert_eq!(published(&mut f.out), [delete], "the dead copy is removed");
    tokio::time::advance(Duration::from_millis(900)).await;
    f.cluster.tick().await;
    assert!(published(&mut f.out).is_empty(), "no restart within 1 s");
    tokio::time::advance(Duration::from_millis(200)).await;
    f.cluster.tick().await;
    assert_eq!(
        published(&mut f.out),
        [canopy_proto::worker::topics::deploy(&w)]
    );
    assert_eq!(f.cluster.instances().await[0].restarts, 1);
}

#[tokio::test]
async fn a_failed_commit_leaves_memory_as_it_was_and_sends_nothing() {
    let mut f = fixture().await;
    f.join("a").await;
    f.store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(f.cluster.apply_command(&deploy("svc")).await.is_err());
    assert!(f.cluster.instances().await.is_empty());
    assert!(f.cluster.pending_reports().await.is_empty());
    assert!(published(&mut f.out).is_empty());
    assert!(
        f.cluster
            .register_worker(&registration("b", "amd64", 4, 4000, &[]))
            .await
            .is_err()
    );
    assert_eq!(f.cluster.workers().await.len(), 1);

    // Once the store works again the same command goes through.
    f.store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    assert_eq!(f.cluster.instances().await.len(), 1);
    assert_eq!(f.cluster.pending_reports().await.len(), 1);
}

/// Subnets handed out and returned, as an address plan would.
#[derive(Default)]
struct Plan {
    given: std::sync::Mutex<Vec<String>>,
    returned: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl AddressPlan for Plan {
    async fn allocate(&self, node: &NodeId) -> Result<std::net::Ipv4Addr, String> {
        let mut g = self.given.lock().unwrap();
        g.push(node.to_string());
        Ok(std::net::Ipv4Addr::new(10, 18, 0, 64 * (g.len() as u8 - 1)))
    }

    async fn release(&self, node: &NodeId) -> Result<(), String> {
        self.returned.lock().unwrap().push(node.to_string());
        Ok(())
    }
}

#[tokio::test]
async fn a_worker_on_the_overlay_keeps_its_subnet_and_returns_it_when_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(canopy_store::EmbeddedStore::open(dir.path()).await.unwrap());
    let (cluster, mut out) = Cluster::open(store, Settings::default(), Arc::new(AllowAll))
        .await
        .unwrap();
    let mut reg = registration("a", "amd64", 2, 1000, &[]);
    reg.overlay_address = "192.0.2.7".into();
    // No address plan yet (the root link not up): refused, naming why.
    let e = cluster.register_worker(&reg).await.unwrap_err();
    assert!(matches!(e, Error::AddressPlan(_)), "{e}");
    let plan = Arc::new(Plan::default());
    cluster.set_address_plan(plan.clone());
    let first = cluster.register_worker(&reg).await.unwrap();
    assert_eq!(first.subnet, Some("10.18.0.0".parse().unwrap()));
    // Registering again keeps the subnet without asking the plan.
    let again = cluster.register_worker(&reg).await.unwrap();
    assert_eq!(
        (again.id.clone(), again.subnet),
        (first.id.clone(), first.subnet)
    );
    assert_eq!(plan.given.lock().unwrap().len(), 1);
    // A worker without the overlay gets none.
    let plain = cluster
        .register_worker(&registration("b", "amd64", 2, 1000, &[]))
        .await
        .unwrap();
    assert_eq!(plain.subnet, None);
    // The view published to the worker on the overlay names it as a peer.
    cluster.publish_overlay().await;
    let views: Vec<Publish> = std::iter::from_fn(|| out.try_recv().ok())
        .filter(|p| p.topic.ends_with("/net/view"))
        .collect();
    assert_eq!(views.len(), 1, "only the worker on the overlay gets a view");
    let v: canopy_core::overlay::WorkerView = serde_json::from_slice(&views[0].payload).unwrap();
    assert_eq!(v.peers[0].underlay.to_string(), "192.0.2.7");

    assert!(cluster.remove_worker(&first.id).await.unwrap());
    assert_eq!(*plan.returned.lock().unwrap(), vec![first.id.to_string()]);
    assert!(!cluster.remove_worker(&first.id).await.unwrap(), "gone");
    // The same host registers anew: a new id and a new subnet from the plan.
    let fresh = cluster.register_worker(&reg).await.unwrap();
    assert_ne!(fresh.id, first.id);
    assert_eq!(plan.given.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_undeployed_instance_on_the_overlay_drains_before_it_is_stopped() {
    let mut f = fixture().await;
    let w = f.join("a").await;
    let svc = ServiceId::parse("svc").unwrap();
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    let mut running = status(InstanceStatus::Running);
    running.ns_ip = Some(std::net::Ipv4Addr::new(10, 18, 0, 2));
    f.cluster.on_job_status(&w, running.clone()).await;
    published(&mut f.out);
    let undeploy = Command {
        id: 2,
        action: CommandAction::Undeploy {
            service_id: svc.clone(),
            instance: Some(InstanceNumber(0)),
        },
    };
    let delete = canopy_proto::worker::topics::delete(&w);

    // Gone from the cluster (and so from the service's addresses) at once; stopped on its
    // worker only after the drain time.
    f.cluster.apply_command(&undeploy).await.unwrap();
    assert!(f.cluster.instances().await.is_empty());
    assert!(published(&mut f.out).is_empty(), "not stopped yet");
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(published(&mut f.out).is_empty(), "not before 2 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(published(&mut f.out), std::slice::from_ref(&delete));

    // Deployed again while its old copy drains (a restart): the old copy's delete goes first,
    // then the deploy, and no late delete follows.
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    f.cluster.on_job_status(&w, running).await;
    published(&mut f.out);
    f.cluster.apply_command(&undeploy).await.unwrap();
    f.cluster.apply_command(&deploy("svc")).await.unwrap();
    let deploy_topic = canopy_proto::worker::topics::deploy(&w);
    assert_eq!(published(&mut f.out), [delete, deploy_topic]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(published(&mut f.out).is_empty(), "no late delete");
    // An instance that is not on the overlay is stopped at once.
    f.cluster.apply_command(&undeploy).await.unwrap();
    assert_eq!(published(&mut f.out).len(), 1);
}

#[tokio::test]
async fn an_instance_is_in_its_service_table_only_while_ready() {
    let f = fixture().await;
    f.cluster.set_address_plan(Arc::new(Plan::default()));
    let mut reg = registration("a", "amd64", 2, 1000, &[]);
    reg.overlay_address = "192.0.2.7".into();
    let w = f.cluster.register_worker(&reg).await.unwrap().id;
    let mut cmd = deploy("svc");
    if let CommandAction::Deploy { spec, .. } = &mut cmd.action {
        spec.rr_ip = Some(std::net::Ipv4Addr::new(10, 30, 0, 9));
    }
    f.cluster.apply_command(&cmd).await.unwrap();
    let endpoints = || async {
        let v = f.cluster.worker_view().await;
        v.services[0].instances.len()
    };
    let last_ready = || async { f.cluster.pending_reports().await.last().unwrap().ready };

    // RUNNING on the overlay, its readiness probe not passed yet: not in the table, and
    // reported up as not ready.
    let mut running = status(InstanceStatus::Running);
    running.ns_ip = Some(std::net::Ipv4Addr::new(10, 18, 0, 2));
    running.ready = false;
    f.cluster.on_job_status(&w, running.clone()).await;
    assert_eq!(endpoints().await, 0);
    assert!(!last_ready().await);
    let reports = f.cluster.pending_reports().await.len();

    // Ready: in the table, and a report goes up although the status stayed RUNNING.
    running.ready = true;
    f.cluster.on_job_status(&w, running.clone()).await;
    assert_eq!(endpoints().await, 1);
    assert!(last_ready().await);
    assert_eq!(
        f.cluster.instances().await[0].status,
        InstanceStatus::Running
    );
    let seq = f.cluster.pending_reports().await.last().unwrap().seq;

    // The same status again changes nothing.
    f.cluster.on_job_status(&w, running.clone()).await;
    assert_eq!(f.cluster.pending_reports().await.last().unwrap().seq, seq);

    // Not ready any more: out again.
    running.ready = false;
    f.cluster.on_job_status(&w, running).await;
    assert_eq!(endpoints().await, 0);
    assert!(!last_ready().await);
    assert_eq!(
        f.cluster.pending_reports().await.len(),
        reports,
        "one pending report per instance"
    );
}

/// Deploys instance `n` of `svc` asking for `vcpus`.
fn deploy_sized(n: u32, vcpus: u32) -> Command {
    let mut c = deploy("svc");
    c.id = u64::from(n) + 1;
    if let CommandAction::Deploy { instance, spec, .. } = &mut c.action {
        *instance = InstanceNumber(n);
        spec.resources.vcpus = vcpus;
    }
    c
}

#[tokio::test(start_paused = true)]
async fn an_instance_without_room_waits_until_another_frees_its_share() {
    use InstanceStatus::{Completed, NoWorkerCapacity, NodeScheduled, Running};
    let mut f = fixture().await;
    let w = f.join("a").await;
    // 4 vcpus: two instances of 2 fit, the third and fourth do not.
    let cmds: Vec<Command> = (0..4).map(|n| deploy_sized(n, 2)).collect();
    f.cluster.apply_commands(&cmds).await.unwrap();
    let statuses = |list: Vec<crate::model::Instance>| -> Vec<InstanceStatus> {
        list.iter().map(|i| i.status).collect()
    };
    assert_eq!(
        statuses(f.cluster.instances().await),
        [
            NodeScheduled,
            NodeScheduled,
            NoWorkerCapacity,
            NoWorkerCapacity
        ]
    );
    assert_eq!(published(&mut f.out).len(), 2, "two deploys");

    // A status that frees nothing places nothing; a finished instance frees its share, and
    // the first of the waiting ones (in order) takes it.
    f.cluster.on_job_status(&w, status_of(0, Running)).await;
    assert!(published(&mut f.out).is_empty());
    f.cluster.on_job_status(&w, status_of(1, Completed)).await;
    assert_eq!(
        published(&mut f.out),
        [canopy_proto::worker::topics::deploy(&w)]
    );
    assert_eq!(
        statuses(f.cluster.instances().await),
        [Running, Completed, NodeScheduled, NoWorkerCapacity]
    );

    // Removing a running instance frees its share too.
    let undeploy = Command {
        id: 9,
        action: CommandAction::Undeploy {
            service_id: ServiceId::parse("svc").unwrap(),
            instance: Some(InstanceNumber(0)),
        },
    };
    f.cluster.apply_command(&undeploy).await.unwrap();
    f.cluster.tick().await;
    let list = f.cluster.instances().await;
    let last = list.iter().find(|i| i.number == InstanceNumber(3)).unwrap();
    assert_eq!(last.status, NodeScheduled, "{list:?}");
}
