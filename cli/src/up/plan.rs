//! What `canopy up` starts, decided from its arguments alone: the ports, each daemon's data
//! directory, command line, log file and health URL, and the file each reads its token from.
//! No I/O here; [`super::run`] carries the plan out.

use super::UpArgs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Arguments `canopy up` refuses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--containerd-namespace must start with \"canopy\"")]
    Namespace,
    #[error("--workers must be at most 1000 and --virtual-workers at most 10000")]
    TooManyWorkers,
    #[error("--workers must be at least 1 (or give --virtual-workers)")]
    NoWorkers,
    #[error("--port-base {0} leaves no room for the ports after it")]
    PortBase(u16),
    #[error("--clusters must be from 1 to {MAX_CLUSTERS}")]
    Clusters,
}

/// The most clusters one `canopy up` starts.
pub const MAX_CLUSTERS: u32 = 20;

/// The checks that need nothing but the arguments.
pub fn validate(args: &UpArgs) -> Result<(), PlanError> {
    if !args.containerd_namespace.starts_with("canopy") {
        return Err(PlanError::Namespace);
    }
    if args.workers > 1000 || args.virtual_workers > 10_000 {
        return Err(PlanError::TooManyWorkers);
    }
    if args.workers + args.virtual_workers == 0 {
        return Err(PlanError::NoWorkers);
    }
    if args.clusters == 0 || args.clusters > MAX_CLUSTERS {
        return Err(PlanError::Clusters);
    }
    Ok(())
}

/// Whether `--runtimes` names `runtime`.
pub fn offers(args: &UpArgs, runtime: &str) -> bool {
    args.runtimes.split(',').any(|r| r.trim() == runtime)
}

/// Whether the workers need containerd (real workers offering containers).
pub fn needs_containerd(args: &UpArgs) -> bool {
    args.workers > 0 && offers(args, "container")
}

/// The ports of one `canopy up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub api: u16,
    pub grpc: u16,
    pub root_metrics: u16,
    pub cluster_api: u16,
    pub mqtt: u16,
    /// Worker I's API is `first_node + I - 1`; the virtual workers' processes (one per
    /// cluster) follow them.
    pub first_node: u16,
}

/// Where the ports of clusters 2.. start, after `first_node`: room for 1,000 workers and the
/// virtual workers' processes.
const EXTRA_CLUSTERS_AFTER_FIRST_NODE: u16 = 1100;

impl Ports {
    /// Oakestra's ports, or a block from `base`.
    pub fn new(base: Option<u16>) -> Result<Ports, PlanError> {
        Ok(match base {
            None => Ports {
                api: 10000,
                grpc: 50052,
                root_metrics: 10009,
                cluster_api: 10100,
                mqtt: 10003,
                first_node: 10110,
            },
            Some(b) => {
                let last = 10 + EXTRA_CLUSTERS_AFTER_FIRST_NODE + 2 * MAX_CLUSTERS as u16;
                if b.checked_add(last).is_none() {
                    return Err(PlanError::PortBase(b));
                }
                Ports {
                    api: b,
                    grpc: b + 1,
                    root_metrics: b + 2,
                    cluster_api: b + 3,
                    mqtt: b + 4,
                    first_node: b + 10,
                }
            }
        })
    }

    /// Cluster `k`'s (from 1) API and MQTT ports: the first cluster's are `cluster_api` and
    /// `mqtt`, the others' a pair each after the workers'.
    pub fn cluster(&self, k: u32) -> (u16, u16) {
        if k <= 1 {
            return (self.cluster_api, self.mqtt);
        }
        let api = self.first_node + EXTRA_CLUSTERS_AFTER_FIRST_NODE + 2 * (k as u16 - 2);
        (api, api + 1)
    }
}

/// The name of cluster `k`'s (from 1) own one of `base`: `base` for the first cluster, then
/// `base2`, `base3`, ... (`cluster`/`cluster2` in `up.json` and as data directories, `local`/
/// `local2` as cluster names, `virtual`/`virtual2` for the virtual workers' processes).
fn numbered(base: &str, k: u32) -> String {
    if k <= 1 {
        base.to_owned()
    } else {
        format!("{base}{k}")
    }
}

/// The daemons `canopy up` runs.
pub const DAEMONS: [&str; 4] = [
    "root-orchestrator",
    "cluster-orchestrator",
    "net-manager",
    "node-engine",
];

/// Where the daemon binaries are: a directory, or none to find them on PATH.
pub struct BinDir(pub Option<PathBuf>);

impl BinDir {
    pub fn path(&self, name: &str) -> String {
        match &self.0 {
            Some(d) => d.join(name).display().to_string(),
            None => name.to_owned(),
        }
    }
}

/// A secret a child gets in its environment, read from the file the tier before it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub var: &'static str,
    pub file: PathBuf,
}

/// One child process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildPlan {
    /// `root`, `cluster`/`clusterK`, `workerN`, `net-workerN` or `virtual`/`virtualK`.
    pub name: String,
    /// What is printed as it starts.
    pub step: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Its output, appended.
    pub log: PathBuf,
    pub health: String,
    /// containerd namespace (workers).
    pub namespace: Option<String>,
    pub token: Option<Token>,
}

/// Everything one `canopy up` starts, in order: the root, the cluster, then the node engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The data directory (absolute).
    pub dir: PathBuf,
    /// The root's API URL.
    pub api: String,
    /// The root's metrics URL and the first cluster's API URL, as `up.json` records them.
    pub root_metrics: String,
    pub cluster_api: String,
    /// The password the root generates on its first start.
    pub admin_password: PathBuf,
    pub root: ChildPlan,
    /// `cluster`, then `cluster2`..`clusterN`.
    pub clusters: Vec<ChildPlan>,
    /// `net-worker1`..`net-workerN`: each worker's net manager (none with `--no-overlay`).
    pub nets: Vec<ChildPlan>,
    /// `worker1`..`workerN`, then `virtual`, `virtual2`, ... (one process per cluster for its
    /// virtual workers) if asked.
    pub engines: Vec<ChildPlan>,
    /// Active workers the clusters must report before `canopy up` is ready.
    pub workers: u32,
}

/// The plan for `args`, with the data directory `dir` (absolute) and daemons from `bins`.
pub fn plan(args: &UpArgs, ports: &Ports, dir: &Path, bins: &BinDir) -> Plan {
    let host = args.listen;
    let local = match host {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        other => other,
    };
    let url = |port: u16| format!("http://{}", SocketAddr::new(local, port));
    let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
    let api = url(ports.api);
    let cluster_api = url(ports.cluster_api);

    let root_dir = dir.join("root");
    let mut command = vec![
        bins.path("root-orchestrator"),
        format!("--data-dir={}", root_dir.display()),
        format!("--api-addr={}", SocketAddr::new(host, ports.api)),
        format!("--grpc-addr={}", SocketAddr::new(host, ports.grpc)),
        format!(
            "--metrics-addr={}",
            SocketAddr::new(local, ports.root_metrics)
        ),
        format!("--log={}", args.log),
    ];
    command.extend(args.root_args.iter().cloned());
    let root = ChildPlan {
        name: "root".to_owned(),
        step: "starting the root orchestrator".to_owned(),
        command,
        log: log("root"),
        health: format!("{api}/health"),
        namespace: None,
        token: None,
    };

    let mut clusters = Vec::new();
    let mut node_tokens = Vec::new();
    let mut cluster_addrs = Vec::new();
    for k in 1..=args.clusters {
        let name = numbered("cluster", k);
        let (api_port, mqtt_port) = ports.cluster(k);
        let cluster_dir = dir.join(&name);
        let mut command = vec![
            bins.path("cluster-orchestrator"),
            format!("--root-addr={}", SocketAddr::new(local, ports.grpc)),
            format!("--name={}", numbered("local", k)),
            format!("--data-dir={}", cluster_dir.display()),
            format!("--api-addr={}", SocketAddr::new(host, api_port)),
            format!("--mqtt-addr={}", SocketAddr::new(host, mqtt_port)),
            format!("--log={}", args.log),
        ];
        command.extend(args.cluster_args.iter().cloned());
        clusters.push(ChildPlan {
            step: format!("starting cluster orchestrator {name} (embedded MQTT broker)"),
            command,
            log: log(&name),
            health: format!("{}/health", url(api_port)),
            namespace: None,
            token: Some(Token {
                var: "CANOPY_CLUSTER_TOKEN",
                file: root_dir.join("cluster-token"),
            }),
            name,
        });
        node_tokens.push(Token {
            var: "CANOPY_NODE_TOKEN",
            file: cluster_dir.join("node-token"),
        });
        cluster_addrs.push(format!(
            "--cluster-addr={}",
            SocketAddr::new(local, api_port)
        ));
    }

    let mut engines = Vec::new();
    let mut nets = Vec::new();
    // Links and tables of this `canopy up`, told apart from another's by its API port.
    let tag = format!("{:04x}", ports.api);
    for i in 1..=args.workers {
        let name = format!("worker{i}");
        let ns = format!("{}-{name}", args.containerd_namespace);
        let port = ports.first_node + (i as u16 - 1);
        let overlay = if args.no_overlay {
            "--no-overlay".to_owned()
        } else {
            let wdir = dir.join(&name);
            let socket = wdir.join("net.sock");
            let net_name = format!("net-{name}");
            nets.push(ChildPlan {
                step: format!("starting net manager {net_name} (bridge cnp{tag}b{i})"),
                command: vec![
                    bins.path("net-manager"),
                    format!("--socket={}", socket.display()),
                    format!("--data-dir={}", wdir.join("net").display()),
                    format!("--bridge=cnp{tag}b{i}"),
                    format!("--nft-table=canopy_{tag}_w{i}"),
                    format!("--netns-dir={}", wdir.join("netns").display()),
                    "--same-host".to_owned(),
                    "--remove-on-exit".to_owned(),
                    format!("--log={}", args.log),
                ],
                log: log(&net_name),
                health: format!("unix:{}", socket.display()),
                namespace: None,
                token: None,
                name: net_name,
            });
            format!("--net-manager-socket={}", socket.display())
        };
        let home = ((i - 1) % args.clusters) as usize;
        let mut command = vec![
            bins.path("node-engine"),
            cluster_addrs[home].clone(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.join(&name).display()),
            format!("--api-addr={}", SocketAddr::new(local, port)),
            format!("--containerd-socket={}", args.containerd_socket.display()),
            format!("--containerd-namespace={ns}"),
            format!("--runtimes={}", args.runtimes),
            "--remove-on-exit".to_owned(),
            overlay,
            format!("--log={}", args.log),
        ];
        command.extend(args.node_args.iter().cloned());
        engines.push(ChildPlan {
            step: format!("starting node engine {name} (containerd namespace {ns})"),
            command,
            log: log(&name),
            health: format!("{}/health", url(port)),
            namespace: Some(ns),
            token: Some(node_tokens[home].clone()),
            name,
        });
    }
    for k in (1..=args.clusters).filter(|_| args.virtual_workers > 0) {
        let name = numbered("virtual", k);
        let port = ports.first_node + (args.workers + k - 1) as u16;
        let home = (k - 1) as usize;
        let mut command = vec![
            bins.path("node-engine"),
            cluster_addrs[home].clone(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.join(&name).display()),
            format!("--api-addr={}", SocketAddr::new(local, port)),
            format!("--bench-virtual-workers={}", args.virtual_workers),
            format!("--log={}", args.log),
        ];
        command.extend(args.node_args.iter().cloned());
        engines.push(ChildPlan {
            step: format!(
                "starting {} virtual workers for {} (benchmark mode: no workloads run)",
                args.virtual_workers,
                numbered("cluster", k)
            ),
            command,
            log: log(&name),
            health: format!("{}/health", url(port)),
            namespace: None,
            token: Some(node_tokens[home].clone()),
            name,
        });
    }
    Plan {
        dir: dir.to_owned(),
        root_metrics: format!(
            "http://{}/metrics",
            SocketAddr::new(local, ports.root_metrics)
        ),
        cluster_api,
        api,
        admin_password: root_dir.join("admin-password"),
        root,
        clusters,
        nets,
        engines,
        workers: args.workers + args.virtual_workers * args.clusters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn args(extra: &[&str]) -> UpArgs {
        Cli::parse_from(std::iter::once("up").chain(extra.iter().copied())).up
    }

    fn plan_of(extra: &[&str]) -> Plan {
        let a = args(extra);
        let ports = Ports::new(a.port_base).expect("ports");
        plan(&a, &ports, Path::new("/d"), &BinDir(Some("/bin".into())))
    }

    #[test]
    fn default_ports_are_oakestras() {
        let p = plan_of(&[]);
        assert_eq!(p.api, "http://127.0.0.1:10000");
        assert_eq!(p.root_metrics, "http://127.0.0.1:10009/metrics");
        assert_eq!(p.cluster_api, "http://127.0.0.1:10100");
        assert_eq!(
            p.root.command,
            [
                "/bin/root-orchestrator",
                "--data-dir=/d/root",
                "--api-addr=127.0.0.1:10000",
                "--grpc-addr=127.0.0.1:50052",
                "--metrics-addr=127.0.0.1:10009",
                "--log=info",
            ]
        );
        assert_eq!(
            p.clusters[0].command,
            [
                "/bin/cluster-orchestrator",
                "--root-addr=127.0.0.1:50052",
                "--name=local",
                "--data-dir=/d/cluster",
                "--api-addr=127.0.0.1:10100",
                "--mqtt-addr=127.0.0.1:10003",
                "--log=info",
            ]
        );
        assert_eq!(p.engines[0].health, "http://127.0.0.1:10110/health");
    }

    #[test]
    fn a_port_base_allocates_a_block() {
        let p = plan_of(&["--port-base=20000", "--workers=2", "--virtual-workers=5"]);
        assert_eq!(
            Ports::new(Some(20000)),
            Ok(Ports {
                api: 20000,
                grpc: 20001,
                root_metrics: 20002,
                cluster_api: 20003,
                mqtt: 20004,
                first_node: 20010,
            })
        );
        assert_eq!(p.api, "http://127.0.0.1:20000");
        assert_eq!(p.root.health, "http://127.0.0.1:20000/health");
        assert_eq!(p.clusters[0].health, "http://127.0.0.1:20003/health");
        let health: Vec<&str> = p.engines.iter().map(|e| e.health.as_str()).collect();
        assert_eq!(
            health,
            [
                "http://127.0.0.1:20010/health",
                "http://127.0.0.1:20011/health",
                "http://127.0.0.1:20012/health",
            ]
        );
        assert_eq!(Ports::new(Some(65000)), Err(PlanError::PortBase(65000)));
    }

    #[test]
    fn workers_get_names_namespaces_data_dirs_and_the_node_token() {
        let p = plan_of(&["--workers=2", "--containerd-namespace=canopy-test"]);
        let w2 = &p.engines[1];
        assert_eq!(w2.name, "worker2");
        assert_eq!(w2.namespace.as_deref(), Some("canopy-test-worker2"));
        assert_eq!(w2.log, Path::new("/d/logs/worker2.log"));
        assert_eq!(
            w2.command,
            [
                "/bin/node-engine",
                "--cluster-addr=127.0.0.1:10100",
                "--name=worker2",
                "--data-dir=/d/worker2",
                "--api-addr=127.0.0.1:10111",
                "--containerd-socket=/run/containerd/containerd.sock",
                "--containerd-namespace=canopy-test-worker2",
                "--runtimes=container,wasm,unikernel",
                "--remove-on-exit",
                "--net-manager-socket=/d/worker2/net.sock",
                "--log=info",
            ]
        );
        // Its net manager: a bridge and table of its own in this machine's namespace.
        let n2 = &p.nets[1];
        assert_eq!(n2.name, "net-worker2");
        assert_eq!(n2.health, "unix:/d/worker2/net.sock");
        assert_eq!(
            n2.command,
            [
                "/bin/net-manager",
                "--socket=/d/worker2/net.sock",
                "--data-dir=/d/worker2/net",
                "--bridge=cnp2710b2",
                "--nft-table=canopy_2710_w2",
                "--netns-dir=/d/worker2/netns",
                "--same-host",
                "--remove-on-exit",
                "--log=info",
            ]
        );
        let plain = plan_of(&["--workers=2", "--no-overlay"]);
        assert!(plain.nets.is_empty());
        assert!(
            plain.engines[1]
                .command
                .contains(&"--no-overlay".to_owned())
        );
        let token = w2.token.as_ref().expect("a token");
        assert_eq!(token.var, "CANOPY_NODE_TOKEN");
        assert_eq!(token.file, Path::new("/d/cluster/node-token"));
        let token = p.clusters[0].token.as_ref().expect("a token");
        assert_eq!(token.var, "CANOPY_CLUSTER_TOKEN");
        assert_eq!(token.file, Path::new("/d/root/cluster-token"));
        assert_eq!(p.root.token, None);
        assert_eq!(p.admin_password, Path::new("/d/root/admin-password"));
        assert_eq!(p.workers, 2);
    }

    #[test]
    fn extra_arguments_go_last_to_their_daemon() {
        let p = plan_of(&[
            "--workers=2",
            "--virtual-workers=3",
            "--node-arg=--insecure-registry=r:5000",
            "--cluster-arg",
            "--x=1",
            "--root-arg=--y",
        ]);
        assert_eq!(p.root.command.last().map(String::as_str), Some("--y"));
        assert_eq!(
            p.clusters[0].command.last().map(String::as_str),
            Some("--x=1")
        );
        for e in &p.engines {
            assert_eq!(
                e.command.last().map(String::as_str),
                Some("--insecure-registry=r:5000"),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn virtual_workers_run_in_one_engine_after_the_real_ones() {
        let p = plan_of(&["--workers=1", "--virtual-workers=50", "--listen=0.0.0.0"]);
        let names: Vec<&str> = p.engines.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["worker1", "virtual"]);
        let v = &p.engines[1];
        assert_eq!(v.namespace, None);
        assert_eq!(
            v.command,
            [
                "/bin/node-engine",
                "--cluster-addr=127.0.0.1:10100",
                "--name=virtual",
                "--data-dir=/d/virtual",
                "--api-addr=127.0.0.1:10111",
                "--bench-virtual-workers=50",
                "--log=info",
            ]
        );
        assert_eq!(p.workers, 51);
        // Listeners bind 0.0.0.0; the children reach each other on 127.0.0.1.
        assert!(
            p.root
                .command
                .contains(&"--api-addr=0.0.0.0:10000".to_owned())
        );
        assert!(
            p.root
                .command
                .contains(&"--metrics-addr=127.0.0.1:10009".to_owned())
        );
        assert_eq!(p.api, "http://127.0.0.1:10000");
    }

    #[test]
    fn clusters_get_ports_after_the_workers_and_workers_join_them_in_turn() {
        let p = plan_of(&[
            "--port-base=20000",
            "--clusters=3",
            "--workers=4",
            "--virtual-workers=7",
        ]);
        let names: Vec<&str> = p.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cluster", "cluster2", "cluster3"]);
        let c3 = &p.clusters[2];
        assert_eq!(
            c3.command,
            [
                "/bin/cluster-orchestrator",
                "--root-addr=127.0.0.1:20001",
                "--name=local3",
                "--data-dir=/d/cluster3",
                "--api-addr=127.0.0.1:21112",
                "--mqtt-addr=127.0.0.1:21113",
                "--log=info",
            ]
        );
        assert_eq!(c3.health, "http://127.0.0.1:21112/health");
        assert_eq!(p.clusters[1].health, "http://127.0.0.1:21110/health");
        // Worker I joins cluster (I - 1) % 3 + 1, with that cluster's node token.
        let home: Vec<(&str, &str)> = p
            .engines
            .iter()
            .map(|e| (e.name.as_str(), e.command[1].as_str()))
            .collect();
        assert_eq!(
            home,
            [
                ("worker1", "--cluster-addr=127.0.0.1:20003"),
                ("worker2", "--cluster-addr=127.0.0.1:21110"),
                ("worker3", "--cluster-addr=127.0.0.1:21112"),
                ("worker4", "--cluster-addr=127.0.0.1:20003"),
                ("virtual", "--cluster-addr=127.0.0.1:20003"),
                ("virtual2", "--cluster-addr=127.0.0.1:21110"),
                ("virtual3", "--cluster-addr=127.0.0.1:21112"),
            ]
        );
        let token = p.engines[1].token.as_ref().expect("a token");
        assert_eq!(token.file, Path::new("/d/cluster2/node-token"));
        assert_eq!(p.engines[6].health, "http://127.0.0.1:20016/health");
        assert_eq!(p.workers, 4 + 3 * 7);
        assert_eq!(validate(&args(&["--clusters=0"])), Err(PlanError::Clusters));
        assert_eq!(
            validate(&args(&["--clusters=21"])),
            Err(PlanError::Clusters)
        );
        assert_eq!(Ports::new(Some(64400)), Err(PlanError::PortBase(64400)));
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_starts() {
        assert_eq!(
            validate(&args(&["--containerd-namespace=k8s"])),
            Err(PlanError::Namespace)
        );
        assert_eq!(
            validate(&args(&["--workers=1001"])),
            Err(PlanError::TooManyWorkers)
        );
        assert_eq!(validate(&args(&["--workers=0"])), Err(PlanError::NoWorkers));
        assert_eq!(
            validate(&args(&["--workers=0", "--virtual-workers=3"])),
            Ok(())
        );
        assert!(needs_containerd(&args(&[])));
        assert!(offers(&args(&[]), "unikernel"));
        assert!(!offers(&args(&["--runtimes=container,wasm"]), "unikernel"));
        assert!(!needs_containerd(&args(&["--runtimes=wasm"])));
        assert!(!needs_containerd(&args(&["--runtimes=unikernel,wasm"])));
        assert!(needs_containerd(&args(&[
            "--runtimes=unikernel, container"
        ])));
        assert!(!needs_containerd(&args(&[
            "--workers=0",
            "--virtual-workers=3"
        ])));
        assert_eq!(BinDir(None).path("node-engine"), "node-engine");
    }
}
