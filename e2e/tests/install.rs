//! The worker installer as operators run it: `curl -sfL http://CLUSTER/install.sh | sh -s --
//! --token …`, piped into dash, against a real cluster (`canopy up`) on loopback, into a
//! temporary prefix. The installed node engine, started from the installed files, joins.

use canopy_e2e::{Stack, bin_dir, signal};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `curl -sfL URL/install.sh | sh -s -- ARGS` (stdin of sh is the script: nothing else can be
/// read from it).
fn install(cluster: &str, args: &[&str]) -> Output {
    let script = format!(
        "curl -sfL http://{cluster}/install.sh | sh -s -- {}",
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every file and directory under `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path().display().to_string());
        if e.path().is_dir() {
            out.extend(entries(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_pipe_sh_installs_a_worker_that_joins_and_uninstalls_cleanly() {
    let stack = Stack::up_with(1, &["--runtimes=wasm"]).await;
    let cluster = stack.cluster_addr();
    let token = stack.node_token();
    let prefix = tempfile::Builder::new()
        .prefix("canopy-install-")
        .tempdir()
        .expect("a temp dir");
    let p = prefix.path();
    let name = format!("installed{}", std::process::id());
    let prefix_arg = format!("--prefix={}", p.display());

    // The doctor reaches the cluster and compares clocks with it.
    let out = Command::new(bin_dir().join("canopy"))
        .args(["doctor", "--cluster", &cluster])
        .output()
        .expect("canopy doctor runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "OK   cluster      http://{cluster}/health answers"
        )) && report.contains("OK   clock        within"),
        "{}",
        text(&out)
    );

    // Wrong token and unknown architecture: clear errors, nothing installed.
    let out = install(
        &cluster,
        &["--token", "not-the-token", &prefix_arg, "--no-start"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the cluster refused the token: wrong node join token"),
        "{}",
        text(&out)
    );
    let out = install(
        &cluster,
        &["--token", &token, &prefix_arg, "--arch", "sparc64"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let host = uname_m();
    assert!(
        err.contains(&format!(
            "this cluster has no node engine for architecture 'sparc64' (it has: {host} )"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(
        entries(p),
        Vec::<String>::new(),
        "a failed install left files"
    );

    // The real install, piped, into the prefix.
    let t = Instant::now();
    let out = install(
        &cluster,
        &[
            "--token",
            &token,
            "--name",
            &name,
            &prefix_arg,
            "--no-start",
            "--runtimes",
            "wasm",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("install took {:.1}s", t.elapsed().as_secs_f64());
    let bin = p.join("usr/local/bin/canopy-node-engine");
    let conf = p.join("etc/canopy/node-engine.toml");
    let unit = p.join("etc/systemd/system/canopy-node-engine.service");
    let served = reqwest::get(format!("http://{cluster}/install/SHA256SUMS"))
        .await
        .expect("the sums")
        .text()
        .await
        .expect("text");
    let built = sha256(&bin_dir().join("node-engine"));
    assert_eq!(
        sha256(&bin),
        built,
        "installed binary differs from the built one"
    );
    assert!(
        served.contains(&format!("{built}  node-engine-{host}\n")),
        "{served}"
    );
    // The net manager beside it, and the engine's unit requires it.
    let net_bin = p.join("usr/local/bin/canopy-net-manager");
    let built_net = sha256(&bin_dir().join("net-manager"));
    assert_eq!(sha256(&net_bin), built_net, "installed net manager differs");
    assert!(
        served.contains(&format!("{built_net}  net-manager-{host}\n")),
        "{served}"
    );
    let net_unit = std::fs::read_to_string(p.join("etc/systemd/system/canopy-net-manager.service"))
        .expect("the net manager's unit");
    let socket = p.join("run/canopy/net-manager.sock");
    assert!(
        net_unit.contains(&format!(
            "ExecStart={} --socket {}",
            net_bin.display(),
            socket.display()
        )),
        "{net_unit}"
    );
    let unit_text = std::fs::read_to_string(&unit).expect("the unit file");
    assert!(
        unit_text.contains("Requires=canopy-net-manager.service"),
        "{unit_text}"
    );
    assert!(
        unit_text.contains(&format!(
            "ExecStart={} --config {}",
            bin.display(),
            conf.display()
        )),
        "{unit_text}"
    );
    let conf_text = std::fs::read_to_string(&conf).expect("the config");
    assert!(
        conf_text.contains(&format!("name = \"{name}\""))
            && conf_text.contains(&format!("net-manager-socket = \"{}\"", socket.display())),
        "{conf_text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&conf).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds the token");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "start it with: {} --config {}",
            bin.display(),
            conf.display()
        )),
        "{stdout}"
    );

    // Started from the installed files (the API port moved off the default by flag; on the
    // host's network, so this test needs no net manager running on this machine).
    let log = std::fs::File::create(stack.dir.path().join("installed.log")).expect("a log");
    let mut engine = Command::new(&bin)
        .args([
            "--config",
            conf.to_str().expect("utf-8"),
            "--api-addr",
            "127.0.0.1:0",
            "--no-overlay",
        ])
        .env_remove("CANOPY_CONFIG_FILE")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("the installed engine starts");
    let pid = engine.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = stack.get("/api/nodes").await;
        let joined = nodes.as_array().is_some_and(|l| {
            l.iter()
                .any(|n| n["name"] == name.as_str() && n["active"] == true)
        });
        if joined {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the installed engine did not join: {nodes}\n{}",
            std::fs::read_to_string(stack.dir.path().join("installed.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let status = engine.wait().expect("the engine stops");
    assert!(
        status.success(),
        "the installed engine did not stop cleanly: {status}"
    );

    // --uninstall leaves nothing under the prefix.
    let out = install(&cluster, &["--uninstall", &prefix_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(entries(p), Vec::<String>::new(), "--uninstall left files");
}

/// The architecture the script installs for by default.
fn uname_m() -> String {
    let out = Command::new("uname").arg("-m").output().expect("uname");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
