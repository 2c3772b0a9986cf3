//! The daemons' layered settings through the real binaries: a TOML file, the environment and
//! flags combine in that order (later wins), and a bad file is refused naming the key.

use canopy_e2e::bin_dir;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_dir().join(bin));
    cmd.args(args);
    for var in [
        "CANOPY_CONFIG_FILE",
        "CANOPY_CLUSTER_ADDR",
        "CANOPY_NODE_TOKEN",
        "CANOPY_REPORT_INTERVAL_SECS",
        "CANOPY_STOP_GRACE_SECS",
        "CANOPY_LOG",
        "CANOPY_RUNTIMES",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the daemon runs")
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        r#"
cluster-addr = "10.1.2.3:10100"
join-token = "from-the-file"
report-interval-secs = 5
stop-grace-secs = 4
runtimes = ["wasm"]
log = "warn"
"#,
    )
    .expect("write the file");
    let out = run(
        "node-engine",
        &["--print-config", "--log", "debug"],
        &[
            ("CANOPY_CONFIG_FILE", file.to_str().expect("utf-8")),
            ("CANOPY_REPORT_INTERVAL_SECS", "0.5"),
            ("CANOPY_LOG", "error"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "cluster-addr = \"10.1.2.3:10100\"  # file",
        "join-token = \"<hidden>\"  # file",
        "stop-grace-secs = \"4\"  # file",
        "runtimes = [\"wasm\"]  # file",
        "report-interval-secs = \"0.5\"  # environment",
        "log = \"debug\"  # flag",
        "api-addr = \"127.0.0.1:10110\"  # default",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains("from-the-file"),
        "a secret was printed:\n{text}"
    );

    // A flag naming another file wins over the environment's.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "cluster-addr = \"c2:1\"\njoin-token = \"t\"\n").expect("write");
    let out = run(
        "node-engine",
        &["--config", other.to_str().expect("utf-8"), "--print-config"],
        &[("CANOPY_CONFIG_FILE", file.to_str().expect("utf-8"))],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster-addr = \"c2:1\"  # file"), "{text}");
}

#[test]
fn every_daemon_refuses_a_bad_file_naming_the_key() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cases = [
        (
            "root-orchestrator",
            "api-adr = \"0.0.0.0:1\"\n",
            "unknown key \"api-adr\"",
        ),
        (
            "root-orchestrator",
            "access-token-secs = \"ten\"\n",
            "key \"access-token-secs\": invalid value 'ten'",
        ),
        (
            "cluster-orchestrator",
            "location = \"north\"\n",
            "key \"location\": invalid value 'north'",
        ),
        (
            "node-engine",
            "remove-on-exit = \"sometimes\"\n",
            "key \"remove-on-exit\": expected a boolean",
        ),
        (
            "net-manager",
            "vni = \"one\"\n",
            "key \"vni\": invalid value 'one'",
        ),
    ];
    for (bin, body, want) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, body).expect("write");
        let out = run(bin, &["--config", file.to_str().expect("utf-8")], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains(&format!("{}: ", file.display())) && err.contains(want),
            "{bin}: {err:?} lacks {want:?}"
        );
    }
}
