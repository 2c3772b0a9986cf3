//! `canopy doctor`: whether this machine can run a Canopy worker (or a cluster, or a root), one
//! line per check, OK or what to do; exits non-zero when a check fails.
//!
//! This file gathers the facts (the edge: sockets, `/proc`, `/sys`, commands, HTTP); the
//! decisions are pure functions in [`checks`].

mod checks;

use anyhow::{Result, bail};
use checks::{Cgroups, Containerd, Facts, Level, Module, OVERLAY_MODULES, Reach};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Worker,
    Cluster,
    Root,
}

#[derive(Args)]
pub struct DoctorArgs {
    /// What this machine is to run: the checks and ports follow.
    #[arg(long, value_enum, default_value = "worker")]
    pub role: Role,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// A cluster to reach, HOST:PORT (its API, port 10100).
    #[arg(long)]
    pub cluster: Option<String>,
    /// A root to reach, its API URL (http://HOST:10000).
    #[arg(long)]
    pub root: Option<String>,
}

fn ports(role: Role) -> &'static [(u16, &'static str)] {
    match role {
        Role::Worker => &[(10110, "node engine API")],
        Role::Cluster => &[(10100, "cluster API"), (10003, "MQTT")],
        Role::Root => &[
            (10000, "root API"),
            (50052, "cluster link"),
            (10009, "root metrics"),
        ],
    }
}

pub async fn run(args: DoctorArgs) -> Result<()> {
    let facts = gather(&args).await;
    let lines = checks::checks(&facts);
    for l in &lines {
        println!("{l}");
    }
    let failed = lines.iter().filter(|l| l.level == Level::Fail).count();
    let warned = lines.iter().filter(|l| l.level == Level::Warn).count();
    if failed > 0 {
        bail!("{failed} check(s) failed, {warned} warning(s)");
    }
    println!("all checks passed ({warned} warning(s))");
    Ok(())
}

async fn gather(args: &DoctorArgs) -> Facts {
    let worker = args.role == Role::Worker;
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut reach = Vec::new();
    if let Some(c) = &args.cluster {
        let base = if c.contains("://") {
            c.clone()
        } else {
            format!("http://{c}")
        };
        reach.push(http_reach("cluster", format!("{base}/health"), now_unix).await);
    }
    if let Some(r) = &args.root {
        let base = r.trim_end_matches('/');
        reach.push(http_reach("root", format!("{base}/health"), now_unix).await);
    }
    let config = kernel_config();
    Facts {
        worker,
        containerd_socket: args.containerd_socket.display().to_string(),
        containerd: if worker {
            containerd(&args.containerd_socket)
        } else {
            Containerd::NoSocket
        },
        runc: first_line("runc", &["--version"]),
        cgroups: cgroups(),
        kvm: kvm(),
        qemu_binary: qemu_binary(),
        qemu: qemu_binary()
            .filter(|_| worker)
            .and_then(|b| first_line(b, &["--version"])),
        nft: first_line("nft", &["--version"]),
        modules: OVERLAY_MODULES
            .iter()
            .map(|m| (*m, module(m, config.as_deref())))
            .collect(),
        ports: ports(args.role)
            .iter()
            .map(|(p, what)| {
                (
                    *p,
                    *what,
                    std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok(),
                )
            })
            .collect(),
        now_unix,
        reach,
    }
}

/// The QEMU the node engine runs unikernels with on this architecture.
pub fn qemu_binary() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("qemu-system-x86_64"),
        "aarch64" => Some("qemu-system-aarch64"),
        _ => None,
    }
}

/// Whether `name` is a file in one of `$PATH`'s directories (how the node engine looks).
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// The first line a command prints, if it runs and succeeds.
fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

fn containerd(socket: &Path) -> Containerd {
    if !socket.exists() {
        return Containerd::NoSocket;
    }
    if let Err(e) = std::os::unix::net::UnixStream::connect(socket) {
        return Containerd::Unreachable(e.to_string());
    }
    let address = socket.display().to_string();
    let version = Command::new("ctr")
        .args(["--address", &address, "--timeout", "5s", "version"])
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let server = text.split("Server:").nth(1)?.to_owned();
            server.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("Version:")
                    .map(|v| v.trim().to_owned())
            })
        });
    Containerd::Running(version)
}

fn cgroups() -> Cgroups {
    if let Ok(c) = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        return Cgroups::V2(c.split_whitespace().map(str::to_owned).collect());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v1: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup")).then(|| f.get(3).copied().unwrap_or_default())
        })
        .flat_map(|opts| opts.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if v1.is_empty() {
        Cgroups::None
    } else {
        Cgroups::V1(v1)
    }
}

fn kvm() -> Option<bool> {
    let path = Path::new("/dev/kvm");
    path.exists().then(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .is_ok()
    })
}

/// `/proc/config.gz`, decompressed.
fn kernel_config() -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn module(name: &str, config: Option<&str>) -> Module {
    let loaded = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if loaded.lines().any(|l| l.split(' ').next() == Some(name)) {
        return Module::Loaded;
    }
    let option = format!("CONFIG_{}", name.to_uppercase());
    if let Some(config) = config {
        for l in config.lines() {
            match l.strip_prefix(&option).and_then(|r| r.strip_prefix('=')) {
                Some("y") => return Module::Builtin,
                Some("m") => return Module::Available,
                _ => {}
            }
        }
    }
    let release = first_line("uname", &["-r"]).unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release);
    let file = format!("/{name}.ko");
    let lists = |list: &str| {
        std::fs::read_to_string(dir.join(list)).ok().map(|t| {
            t.lines()
                .any(|l| l.split(':').next().is_some_and(|p| p.contains(&file)))
        })
    };
    match (lists("modules.builtin"), lists("modules.dep")) {
        (Some(true), _) => Module::Builtin,
        (_, Some(true)) => Module::Available,
        _ if Path::new("/sys/module").join(name).exists() => Module::Loaded,
        (Some(false), _) | (_, Some(false)) => Module::Missing,
        _ if config.is_some() => Module::Missing,
        _ => Module::Unknown,
    }
}

async fn http_reach(what: &'static str, url: String, now_unix: i64) -> Reach {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build();
    let answer = match client {
        Ok(c) => c.get(&url).send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }),
        Err(e) => Err(e.to_string()),
    };
    let skew_secs = answer.as_ref().ok().and_then(|r| {
        let date = r.headers().get(reqwest::header::DATE)?.to_str().ok()?;
        let t = httpdate::parse_http_date(date).ok()?;
        let remote = t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        Some(remote - now_unix)
    });
    Reach {
        what,
        url,
        answer: answer.map(|r| r.status().as_u16()),
        skew_secs,
    }
}
