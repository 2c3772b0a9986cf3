//! The OCI runtime spec for one instance: the image's defaults, the SLA's `cmd`, environment,
//! memory and CPU limits, Oakestra's hostname `instance-<n>`, and its network: the network
//! namespace the net manager made for it when the worker has an overlay, else the host's
//! (so a published port is the host's).

use super::oci::ImageConfig;
use crate::runtime::{Result, RuntimeError, Workload};
use serde_json::{Value, json};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CPU_PERIOD_US: u64 = 100_000;

const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const PRIVILEGED_EXTRA_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_MODULE",
    "CAP_SYS_TIME",
    "CAP_IPC_LOCK",
    "CAP_SYS_NICE",
];

/// Builds the spec as JSON bytes (what containerd stores in the container record).
pub fn build(w: &Workload, image: &ImageConfig, cgroups_path: &str) -> Result<Vec<u8>> {
    let run = image.config.clone().unwrap_or_default();
    let args: Vec<String> = if !w.spec.cmd.is_empty() {
        w.spec.cmd.clone()
    } else {
        run.entrypoint
            .clone()
            .unwrap_or_default()
            .into_iter()
            .chain(run.cmd.clone().unwrap_or_default())
            .collect()
    };
    if args.is_empty() {
        return Err(RuntimeError::bad(
            "cmd",
            "the image has no entrypoint or command, and the SLA gives no cmd",
        ));
    }
    let mut env: Vec<String> = run.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    let mut set = |k: &str, v: &str| {
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
        env.push(format!("{k}={v}"));
    };
    set("HOSTNAME", &w.hostname());
    for e in &w.spec.environment {
        set(&e.key, &e.value);
    }
    let (uid, gid) = user(run.user.as_deref())?;
    let cwd = run
        .working_dir
        .clone()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let mut caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    if w.spec.privileged {
        caps.extend_from_slice(PRIVILEGED_EXTRA_CAPS);
    }
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if w.spec.resources.memory_mb > 0 {
        resources["memory"] =
            json!({ "limit": w.spec.resources.memory_mb.saturating_mul(1 << 20) });
    }
    if w.spec.resources.vcpus > 0 {
        resources["cpu"] = json!({
            "quota": u64::from(w.spec.resources.vcpus) * CPU_PERIOD_US,
            "period": CPU_PERIOD_US,
        });
    }
    let masked: Vec<&str> = if w.spec.privileged {
        Vec::new()
    } else {
        vec![
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
        ]
    };
    let mut namespaces = json!([
        { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
    ]);
    if let (Some(netns), Some(list)) = (&w.netns, namespaces.as_array_mut()) {
        list.push(json!({ "type": "network", "path": netns }));
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": !w.spec.privileged,
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": w.hostname(),
        "mounts": mounts(w.resolv_conf.as_deref()),
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroups_path,
            "namespaces": namespaces,
            "maskedPaths": masked,
            "readonlyPaths": if w.spec.privileged { Vec::new() } else { vec![
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ]},
        },
    });
    serde_json::to_vec(&spec).map_err(RuntimeError::backend)
}

fn mounts(resolv_conf: Option<&std::path::Path>) -> Value {
    let mut m = json!([
        { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
        { "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
    ]);
    // The host's name resolution, or on the overlay the net manager's resolver (service
    // names, the rest forwarded to the host's).
    let resolv = resolv_conf.unwrap_or(std::path::Path::new("/etc/resolv.conf"));
    for (dest, src) in [
        ("/etc/resolv.conf", resolv),
        ("/etc/hosts", std::path::Path::new("/etc/hosts")),
    ] {
        if src.exists()
            && let Some(a) = m.as_array_mut()
        {
            a.push(json!({ "destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro"] }));
        }
    }
    m
}

/// `uid[:gid]` from the image config; names would need the image's `/etc/passwd` and are
/// refused with a clear message.
fn user(u: Option<&str>) -> Result<(u32, u32)> {
    let Some(u) = u.filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let (a, b) = u.split_once(':').unwrap_or((u, ""));
    let uid: u32 = match a {
        "root" => 0,
        a => a.parse().map_err(|_| {
            RuntimeError::bad(
                "code",
                format!("the image runs as user {u:?}; only numeric users are supported"),
            )
        })?,
    };
    let gid = if b.is_empty() {
        uid
    } else {
        b.parse().map_err(|_| {
            RuntimeError::bad("code", format!("the image's group in {u:?} is not numeric"))
        })?
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::super::oci::RunConfig;
    use super::*;
    use canopy_core::job::EnvVar;
    use canopy_core::{InstanceNumber, ServiceSpec, Virtualization};

    fn workload() -> Workload {
        let mut spec = ServiceSpec::new(
            "a.b.c.d".parse().unwrap(),
            Virtualization::Container,
            "busybox",
        );
        spec.environment = vec![EnvVar::parse("GREETING=hi").unwrap()];
        spec.resources.memory_mb = 64;
        spec.resources.vcpus = 2;
        Workload {
            id: "a.b.c.d.instance.3".into(),
            name: "a.b.c.d.instance.3".into(),
            instance: InstanceNumber(3),
            spec,
            log_path: "/tmp/x.log".into(),
            netns: None,
            resolv_conf: None,
            overlay: None,
        }
    }

    #[test]
    fn image_defaults_and_sla_overrides() {
        let image = ImageConfig {
            config: Some(RunConfig {
                env: Some(vec!["GREETING=hello".into(), "PATH=/bin".into()]),
                entrypoint: Some(vec!["/bin/sh".into()]),
                cmd: Some(vec!["-c".into(), "echo".into()]),
                working_dir: Some("/work".into()),
                user: Some("1000:100".into()),
            }),
            ..Default::default()
        };
        let mut w = workload();
        let v: Value = serde_json::from_slice(&build(&w, &image, "/canopy/t/x").unwrap()).unwrap();
        assert_eq!(v["process"]["args"], json!(["/bin/sh", "-c", "echo"]));
        let env = v["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("GREETING=hi")) && !env.contains(&json!("GREETING=hello")));
        assert!(env.contains(&json!("HOSTNAME=instance-3")) && env.contains(&json!("PATH=/bin")));
        assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(v["process"]["cwd"], "/work");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(v["linux"]["cgroupsPath"], "/canopy/t/x");
        assert_eq!(v["hostname"], "instance-3");
        w.spec.cmd = vec!["sleep".into(), "1".into()];
        let v: Value = serde_json::from_slice(&build(&w, &image, "/p").unwrap()).unwrap();
        assert_eq!(v["process"]["args"], json!(["sleep", "1"]));
    }

    #[test]
    fn no_command_and_named_users_are_refused() {
        let w = workload();
        let err = build(&w, &ImageConfig::default(), "/p").unwrap_err();
        assert!(matches!(err, RuntimeError::BadInput { field: "cmd", .. }));
        let image = ImageConfig {
            config: Some(RunConfig {
                cmd: Some(vec!["x".into()]),
                user: Some("nobody".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            build(&w, &image, "/p")
                .unwrap_err()
                .to_string()
                .contains("numeric")
        );
    }
}
