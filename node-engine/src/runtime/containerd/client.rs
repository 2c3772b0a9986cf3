//! A thin layer over containerd's gRPC services (containerd 1.6's `services.v1` API): every
//! call carries the engine's namespace, and the calls that create resources while an image is
//! being prepared carry a lease. Each method is one containerd call, mapped to
//! [`RuntimeError`]; "not found" comes back as `Ok(None)`/`Ok(false)` where callers need it.

use crate::runtime::{Result, RuntimeError};
use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UsageRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, Container, CreateContainerRequest, CreateImageRequest, CreateNamespaceRequest,
    CreateRequest as CreateLeaseRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetImageRequest, GetRequest as GetTaskRequest, Image,
    InfoRequest, KillRequest, ListContainersRequest, Namespace, ReadContentRequest, StartRequest,
    UpdateImageRequest, WaitRequest, WriteAction, WriteContentRequest,
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient, namespaces_client::NamespacesClient,
    tasks_client::TasksClient,
};
use containerd_client::types::v1::Process;
use containerd_client::types::{Descriptor, Mount};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::path::Path;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The OCI runtime spec's type URL, as containerd registers it.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The OCI runtime spec's process, as an exec carries it.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
pub const RUNC_V2: &str = "io.containerd.runc.v2";
pub const SNAPSHOTTER: &str = "overlayfs";
/// Bytes per Content.Write message.
pub const CHUNK: usize = 1 << 20;

fn grpc(what: &str, s: Status) -> RuntimeError {
    RuntimeError::Backend(format!("containerd {what}: {}", s.message()))
}

fn not_found<T>(r: std::result::Result<T, Status>, what: &str) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(grpc(what, s)),
    }
}

/// A connection to containerd, bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connects over the unix socket (lazily: the first call dials). Fails only on a bad path.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            RuntimeError::Backend(format!(
                "cannot reach containerd at {}: {e}",
                socket.display()
            ))
        })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = lease
            && let Ok(v) = l.parse()
        {
            md.insert("containerd-lease", v);
        }
        r
    }

    /// Makes sure the namespace exists (containerd creates it on first use too; this makes the
    /// first error message about the socket, not about a resource).
    pub async fn ensure_namespace(&self) -> Result<()> {
        let r = NamespacesClient::new(self.channel.clone())
            .create(self.req(
                CreateNamespaceRequest {
                    namespace: Some(Namespace {
                        name: self.namespace.clone(),
                        labels: HashMap::new(),
                    }),
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(grpc("namespace create", s)),
        }
    }

    // --- leases ---

    pub async fn lease_create(&self, id: &str) -> Result<()> {
        let mut labels = HashMap::new();
        // A lease left behind by a crash expires by itself.
        labels.insert("containerd.io/gc.expire".into(), expire_in(24 * 3600));
        let r = LeasesClient::new(self.channel.clone())
            .create(self.req(
                CreateLeaseRequest {
                    id: id.to_owned(),
                    labels,
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(grpc("lease create", s)),
        }
    }

    pub async fn lease_delete(&self, id: &str) -> Result<()> {
        let r = LeasesClient::new(self.channel.clone())
            .delete(self.req(
                DeleteLeaseRequest {
                    id: id.to_owned(),
                    sync: false,
                },
                None,
            ))
            .await;
        not_found(r, "lease delete").map(|_| ())
    }

    // --- content ---

    pub async fn content_exists(&self, digest: &str) -> Result<bool> {
        let r = ContentClient::new(self.channel.clone())
            .info(self.req(
                InfoRequest {
                    digest: digest.to_owned(),
                },
                None,
            ))
            .await;
        Ok(not_found(r, "content info")?.is_some())
    }

    /// Streams a blob into the content store and commits it under `digest` with `labels`.
    pub async fn content_write<S>(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        data: S,
    ) -> Result<()>
    where
        S: Stream<Item = Result<bytes::Bytes>> + Send + 'static,
    {
        let reference = format!("canopy-{digest}");
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let ref2 = reference.clone();
        let expected = digest.to_owned();
        let feeder = tokio::spawn(async move {
            let mut offset = 0i64;
            let mut data = Box::pin(data);
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                let n = chunk.len() as i64;
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: ref2.clone(),
                    total: size,
                    expected: expected.clone(),
                    offset,
                    data: chunk.to_vec(),
                    labels: HashMap::new(),
                };
                offset += n;
                if tx.send(msg).await.is_err() {
                    return Ok::<i64, RuntimeError>(offset);
                }
            }
            let _ = tx
                .send(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    r#ref: ref2,
                    total: size,
                    expected,
                    offset,
                    data: Vec::new(),
                    labels,
                })
                .await;
            Ok(offset)
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let result = ContentClient::new(self.channel.clone())
            .write(self.req(stream, Some(lease)))
            .await;
        let outcome = match result {
            Ok(resp) => {
                let mut responses = resp.into_inner();
                let mut last = Ok(());
                loop {
                    match responses.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(s) if s.code() == Code::AlreadyExists => break,
                        Err(s) => {
                            last = Err(grpc("content write", s));
                            break;
                        }
                    }
                }
                last
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(grpc("content write", s)),
        };
        let fed = feeder.await.map_err(RuntimeError::backend)?;
        fed?;
        outcome
    }

    /// Reads a whole (small) blob: manifests, configs.
    pub async fn content_read(&self, digest: &str) -> Result<Vec<u8>> {
        let r = ContentClient::new(self.channel.clone())
            .read(self.req(
                ReadContentRequest {
                    digest: digest.to_owned(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(|s| grpc("content read", s))?;
        let mut stream = r.into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|s| grpc("content read", s))?
        {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    // --- images ---

    pub async fn image_get(&self, name: &str) -> Result<Option<Image>> {
        let r = ImagesClient::new(self.channel.clone())
            .get(self.req(
                GetImageRequest {
                    name: name.to_owned(),
                },
                None,
            ))
            .await;
        Ok(not_found(r, "image get")?.and_then(|r| r.into_inner().image))
    }

    /// Creates the image record, or points an existing one at `target`.
    pub async fn image_put(&self, lease: &str, name: &str, target: Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let r = ImagesClient::new(self.channel.clone())
            .create(self.req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => ImagesClient::new(self.channel.clone())
                .update(self.req(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    Some(lease),
                ))
                .await
                .map(|_| ())
                .map_err(|s| grpc("image update", s)),
            Err(s) => Err(grpc("image create", s)),
        }
    }

    // --- snapshots ---

    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let r = SnapshotsClient::new(self.channel.clone())
            .stat(self.req(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await;
        Ok(not_found(r, "snapshot stat")?.is_some())
    }

    pub async fn snapshot_prepare(
        &self,
        lease: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>> {
        let r = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                    parent: parent.to_owned(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => self.snapshot_mounts(key).await,
            Err(s) => Err(grpc("snapshot prepare", s)),
        }
    }

    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        SnapshotsClient::new(self.channel.clone())
            .mounts(self.req(
                MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await
            .map(|r| r.into_inner().mounts)
            .map_err(|s| grpc("snapshot mounts", s))
    }

    /// Commits an active snapshot as `name`; an existing `name` (a concurrent unpack) is fine.
    pub async fn snapshot_commit(&self, lease: &str, name: &str, key: &str) -> Result<()> {
        let r = SnapshotsClient::new(self.channel.clone())
            .commit(self.req(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: name.to_owned(),
                    key: key.to_owned(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => self.snapshot_remove(key).await,
            Err(s) => Err(grpc("snapshot commit", s)),
        }
    }

    pub async fn snapshot_remove(&self, key: &str) -> Result<()> {
        let r = SnapshotsClient::new(self.channel.clone())
            .remove(self.req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await;
        not_found(r, "snapshot remove").map(|_| ())
    }

    pub async fn snapshot_usage(&self, key: &str) -> Result<u64> {
        let r = SnapshotsClient::new(self.channel.clone())
            .usage(self.req(
                UsageRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_owned(),
                },
                None,
            ))
            .await;
        Ok(not_found(r, "snapshot usage")?
            .map(|r| r.into_inner().size.max(0) as u64)
            .unwrap_or(0))
    }

    /// Names of every snapshot in the namespace.
    pub async fn snapshot_list(&self) -> Result<Vec<String>> {
        let r = SnapshotsClient::new(self.channel.clone())
            .list(self.req(
                ListSnapshotsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    filters: Vec::new(),
                },
                None,
            ))
            .await
            .map_err(|s| grpc("snapshot list", s))?;
        let mut stream = r.into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|s| grpc("snapshot list", s))?
        {
            out.extend(m.info.into_iter().map(|i| i.name));
        }
        Ok(out)
    }

    // --- diff ---

    /// Applies a layer onto mounts; returns the digest of what was applied (the diff id).
    pub async fn diff_apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> Result<String> {
        DiffClient::new(self.channel.clone())
            .apply(self.req(
                ApplyRequest {
                    diff: Some(layer),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                None,
            ))
            .await
            .map_err(|s| grpc("diff apply", s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .ok_or_else(|| RuntimeError::Backend("diff apply returned nothing".into()))
    }

    // --- containers ---

    pub async fn container_create(
        &self,
        lease: &str,
        id: &str,
        image: &str,
        snapshot_key: &str,
        spec: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let container = Container {
            id: id.to_owned(),
            labels,
            image: image.to_owned(),
            runtime: Some(ContainerRuntime {
                name: RUNC_V2.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: spec,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: snapshot_key.to_owned(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(self.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await
            .map(|_| ())
            .map_err(|s| grpc("container create", s))
    }

    pub async fn container_get(&self, id: &str) -> Result<Option<Container>> {
        let r = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_owned() }, None))
            .await;
        Ok(not_found(r, "container get")?.and_then(|r| r.into_inner().container))
    }

    pub async fn container_list(&self) -> Result<Vec<Container>> {
        ContainersClient::new(self.channel.clone())
            .list(self.req(
                ListContainersRequest {
                    filters: Vec::new(),
                },
                None,
            ))
            .await
            .map(|r| r.into_inner().containers)
            .map_err(|s| grpc("container list", s))
    }

    pub async fn container_delete(&self, id: &str) -> Result<()> {
        let r = ContainersClient::new(self.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.to_owned() }, None))
            .await;
        not_found(r, "container delete").map(|_| ())
    }

    // --- tasks ---

    /// Creates the task with its root filesystem and both output streams appended to `log`.
    pub async fn task_create(&self, id: &str, rootfs: Vec<Mount>, log: &Path) -> Result<u32> {
        let uri = format!("file://{}", log.display());
        TasksClient::new(self.channel.clone())
            .create(self.req(
                CreateTaskRequest {
                    container_id: id.to_owned(),
                    rootfs,
                    stdout: uri.clone(),
                    stderr: uri,
                    ..Default::default()
                },
                None,
            ))
            .await
            .map(|r| r.into_inner().pid)
            .map_err(|s| grpc("task create", s))
    }

    pub async fn task_start(&self, id: &str) -> Result<u32> {
        TasksClient::new(self.channel.clone())
            .start(self.req(
                StartRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map(|r| r.into_inner().pid)
            .map_err(|s| grpc("task start", s))
    }

    pub async fn task_get(&self, id: &str) -> Result<Option<Process>> {
        let r = TasksClient::new(self.channel.clone())
            .get(self.req(
                GetTaskRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await;
        Ok(not_found(r, "task get")?.and_then(|r| r.into_inner().process))
    }

    /// Blocks until the task exits; returns its exit status.
    pub async fn task_wait(&self, id: &str) -> Result<u32> {
        TasksClient::new(self.channel.clone())
            .wait(self.req(
                WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map(|r| r.into_inner().exit_status)
            .map_err(|s| grpc("task wait", s))
    }

    pub async fn task_kill(&self, id: &str, signal: u32) -> Result<()> {
        let r = TasksClient::new(self.channel.clone())
            .kill(self.req(
                KillRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                    signal,
                    all: true,
                },
                None,
            ))
            .await;
        not_found(r, "task kill").map(|_| ())
    }

    /// Runs `process` (an OCI process spec, JSON) as `exec_id` in the running task `id`, with
    /// no input or output, and waits at most `timeout` for it: `Ok(Some(status))` is its exit
    /// status, `Ok(None)` that it was still running (it is killed). The process is deleted
    /// either way.
    pub async fn task_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Option<u32>> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(self.req(
                ExecProcessRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    spec: Some(prost_types::Any {
                        type_url: PROCESS_TYPE_URL.into(),
                        value: process,
                    }),
                    ..Default::default()
                },
                None,
            ))
            .await
            .map_err(|s| grpc("task exec", s))?;
        let ids = || (id.to_owned(), exec_id.to_owned());
        let ran = async {
            let (container_id, exec_id) = ids();
            tasks
                .start(self.req(
                    StartRequest {
                        container_id,
                        exec_id,
                    },
                    None,
                ))
                .await
                .map_err(|s| grpc("exec start", s))?;
            let (container_id, exec_id) = ids();
            TasksClient::new(self.channel.clone())
                .wait(self.req(
                    WaitRequest {
                        container_id,
                        exec_id,
                    },
                    None,
                ))
                .await
                .map(|r| r.into_inner().exit_status)
                .map_err(|s| grpc("exec wait", s))
        };
        let status = match tokio::time::timeout(timeout, ran).await {
            Ok(r) => Some(r?),
            Err(_) => {
                let (container_id, exec_id) = ids();
                let _ = TasksClient::new(self.channel.clone())
                    .kill(self.req(
                        KillRequest {
                            container_id,
                            exec_id,
                            signal: 9,
                            all: false,
                        },
                        None,
                    ))
                    .await;
                None
            }
        };
        let (container_id, exec_id) = ids();
        let _ = TasksClient::new(self.channel.clone())
            .delete_process(self.req(
                DeleteProcessRequest {
                    container_id,
                    exec_id,
                },
                None,
            ))
            .await;
        Ok(status)
    }

    /// Deletes the task (it must have exited).
    pub async fn task_delete(&self, id: &str) -> Result<()> {
        let r = TasksClient::new(self.channel.clone())
            .delete(self.req(
                DeleteTaskRequest {
                    container_id: id.to_owned(),
                },
                None,
            ))
            .await;
        not_found(r, "task delete").map(|_| ())
    }
}

/// `containerd.io/gc.expire` value: RFC 3339 time `secs` from now.
fn expire_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    rfc3339(d)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
