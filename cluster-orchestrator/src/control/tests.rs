//! The façade end to end on an embedded store, without MQTT: what the root sees, worker
//! timeouts and crash back-off on paused time.

use super::*;
use canopy_core::link::{Command, CommandAction};
use canopy_core::{Architecture, InstanceNumber, Resources, ServiceId};
use canopy_proto::worker::NodeRegistration;

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
