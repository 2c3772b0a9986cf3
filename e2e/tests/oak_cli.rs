//! Oakestra's own CLI (`oak-cli` 0.5.5 from PyPI, installed by `scripts/test.sh` into the test
//! venv) drives a real root unchanged, with SLAs that carry Canopy's extensions: it logs in
//! (as `Admin`/`Admin`, as it always does), creates and deploys the applications of every
//! example SLA with an extension, lists applications and services, inspects a service,
//! undeploys and deletes — and the root's own API agrees with what it did.
//!
//! oak-cli always talks to port 10000 of its configured system manager: this test gives the
//! root 127.0.0.1:10000 (no other test in this binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::{bin_dir, repo};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const API: &str = "http://127.0.0.1:10000";

fn oak_cli() -> PathBuf {
    let path = std::env::var("CANOPY_TEST_OAK_CLI").unwrap_or_else(|_| {
        panic!(
            "CANOPY_TEST_OAK_CLI is not set: run the tests through scripts/test.sh, which installs \
             oak-cli into its venv (or set it to an `oak` executable)"
        )
    });
    PathBuf::from(path)
}

/// `oak ARGS` with `home` as its home (its config and SLA folder), `input` on stdin.
fn oak(home: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(oak_cli())
        .args(args)
        .env("HOME", home)
        .env("COLUMNS", "250")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oak runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "oak {args:?} failed:\n{text}");
    assert!(!text.contains("Traceback"), "oak {args:?}:\n{text}");
    text
}

/// Canopy's extensions of a microservice (Oakestra has none of these keys).
const EXTENSIONS: [&str; 3] = ["autoscale", "readiness_probe", "liveness_probe"];

/// The example SLAs that use a Canopy extension of the microservice.
fn extended_examples() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo().join("sla-schemas/examples")).unwrap() {
        let p = e.unwrap().path();
        let sla: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let extended = sla["applications"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| a["microservices"].as_array().unwrap())
            .any(|m| EXTENSIONS.iter().any(|k| m.get(*k).is_some()));
        if extended {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, sla));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn admin_token(http: &reqwest::Client) -> String {
    let r: Value = http
        .post(format!("{API}/api/auth/login"))
        .json(&serde_json::json!({"username": "Admin", "password": "Admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap().to_owned()
}

async fn get(http: &reqwest::Client, path: &str) -> Value {
    let token = admin_token(http).await;
    http.get(format!("{API}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn oakestras_cli_drives_the_root_with_canopy_extensions_in_its_slas() {
    let oak_bin = oak_cli();
    assert!(oak_bin.exists(), "{} does not exist", oak_bin.display());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("root");
    let root = Command::new(bin_dir().join("root-orchestrator"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--api-addr", "127.0.0.1:10000"])
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("CANOPY_ADMIN_PASSWORD", "Admin")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the root starts");
    let mut root = Killed(root);
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{API}/health")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the root did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ours answers, not another one on the port (this one would have exited).
    assert!(
        root.0.try_wait().unwrap().is_none(),
        "the root exited: is 127.0.0.1:10000 taken?"
    );

    // oak-cli's home: its config (the system manager is this machine) and its SLA folder.
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join("oak_cli/SLAs")).unwrap();
    std::fs::write(
        home.join("oak_cli/.oak_cli_config"),
        "[OAK_CLI]\nconfig_version = 1\nlocal_machine_purpose = [\"initial\"]\nsystem_manager_ip = 127.0.0.1\n",
    )
    .unwrap();
    let examples = extended_examples();
    assert!(!examples.is_empty(), "some example SLA uses an extension");
    let mut apps = 0;
    for (name, sla) in &examples {
        std::fs::write(home.join("oak_cli/SLAs").join(name), sla.to_string()).unwrap();
        let out = oak(&home, &["a", "create", "--sla-file-name", name, "-d"], "");
        assert!(
            out.contains("Success: 'Create new application"),
            "{name}: {out}"
        );
        assert!(out.contains("Deploy a new instance"), "{name}: {out}");
        apps += sla["applications"].as_array().unwrap().len();
    }

    // What oak-cli lists is what the root holds.
    let held = get(&http, "/api/applications").await;
    assert_eq!(held.as_array().unwrap().len(), apps, "{held}");
    let listed = oak(&home, &["a", "s"], "");
    for a in held.as_array().unwrap() {
        assert!(
            listed.contains(a["applicationID"].as_str().unwrap()),
            "{listed}"
        );
    }
    let services = get(&http, "/api/services").await;
    let first = services[0]["microserviceID"].as_str().unwrap().to_owned();
    let shown = oak(&home, &["s", "s"], "");
    assert!(shown.contains(&first), "{shown}");
    let inspected = oak(&home, &["s", "i", &first], "");
    assert!(
        inspected.contains(services[0]["microservice_name"].as_str().unwrap()),
        "{inspected}"
    );
    // The extensions are kept (the root's view shows them); oak-cli did not mind them.
    let svc = get(&http, &format!("/api/service/{first}")).await;
    assert!(svc["instance_list"].as_array().unwrap().len() == 1, "{svc}");

    // Undeploy everything, then delete every application (oak-cli asks; the answer is y).
    let out = oak(&home, &["s", "u"], "");
    assert!(out.contains("Success: 'Undeploy instance"), "{out}");
    let svc = get(&http, &format!("/api/service/{first}")).await;
    assert!(svc["instance_list"].as_array().unwrap().is_empty(), "{svc}");
    let out = oak(&home, &["a", "d"], &"y\n".repeat(apps));
    assert!(out.contains("Success: 'Delete application"), "{out}");
    assert_eq!(get(&http, "/api/applications").await, serde_json::json!([]));
}

/// A child process killed (by its pid) when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
