//! Named network namespaces for instances: a namespace created on a thread of its own and
//! kept alive by a bind mount of it on a file, the way `ip netns add` does, so a container
//! runtime can be told to join it by path before the workload starts (its network is ready
//! when its first command runs).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: {message}")]
pub struct NetnsError {
    pub path: String,
    pub message: String,
}

fn err(path: &Path, message: impl std::fmt::Display) -> NetnsError {
    NetnsError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Creates a new network namespace pinned at `path` (the file is created). An existing one
/// there is kept (creation is idempotent).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if exists(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
    }
    std::fs::File::create(path).map_err(|e| err(path, e))?;
    let target = path.to_owned();
    // unshare moves the calling thread: do it on one that ends right after.
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| err(&target, format!("unshare: {e}")))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err(&target, format!("bind mount: {e}")))
    })
    .join()
    .map_err(|_| err(path, "the namespace thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Whether a namespace is pinned at `path` (a bind mount, not just a file).
pub fn exists(path: &Path) -> bool {
    // A pinned namespace file is an nsfs inode; a plain file left behind is not.
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Removes the namespace pinned at `path` (its links go with it once nothing else holds it)
/// and the file. A missing one is fine.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if exists(path) {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| err(path, format!("unmount: {e}")))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(path, e)),
    }
}
