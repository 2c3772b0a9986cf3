//! The web dashboard in a real browser: a `canopy up` stack (one wasm worker), and
//! `e2e/browser/dashboard.test.mjs` driving Debian's headless Chromium through playwright-core
//! against the root's `/`. The script logs in, deploys an SLA (after one with a problem shown
//! at its JSON path), sees the instance turn RUNNING without a reload, follows its log, scales
//! to 2 and back, uses the cluster and admin pages, checks a phone-sized screen and deletes the
//! application; it writes screenshots to `docs/screenshots/` (or `CANOPY_SCREENSHOT_DIR`).
//! Afterwards this test checks through the API what the browser did, and the screenshots.
//!
//! Needs `node`, `/usr/bin/chromium` (or `CANOPY_CHROMIUM`) and `npm ci` run in
//! `e2e/browser/`; `scripts/test.sh` provides all three.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::{ADMIN_PASSWORD, Stack, repo};
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

/// The screenshots the script takes, by file name.
const SHOTS: [&str; 8] = [
    "login",
    "deploy-error",
    "service",
    "applications",
    "clusters",
    "users",
    "phone",
    "phone-service",
];

/// Node, Chromium and playwright-core, or a panic saying how to get them.
fn prerequisites() -> (PathBuf, PathBuf) {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    assert!(
        node.is_some(),
        "the dashboard's browser test needs Node.js (`node` on PATH): `apt-get install nodejs npm`, \
         or run scripts/test.sh, which installs it"
    );
    let chromium = std::env::var_os("CANOPY_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "the dashboard's browser test needs Chromium at {} (Debian: `apt-get install chromium`; \
         or set CANOPY_CHROMIUM), or run scripts/test.sh, which installs it",
        chromium.display()
    );
    let browser = repo().join("e2e/browser");
    assert!(
        browser
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is missing: run `npm ci --prefix {}` (scripts/test.sh does)",
        browser.display()
    );
    (chromium, browser)
}

fn is_png_written_after(path: &Path, start: SystemTime) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modified = meta.modified().map_err(|e| e.to_string())?;
    if modified < start {
        return Err(format!("{} was not written by this run", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.len() < 1000 {
        return Err(format!("{} is not a PNG picture", path.display()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_deploys_follows_scales_and_deletes_in_a_real_browser() {
    let (chromium, browser) = prerequisites();
    let stack = Stack::up_with(1, &["--runtimes=wasm"]).await;
    let shots = std::env::var_os("CANOPY_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("docs/screenshots"));
    let work = tempfile::Builder::new()
        .prefix("canopy-dashboard-")
        .tempdir()
        .expect("a temp dir");
    let profile = work.path().join("profile");
    std::fs::create_dir_all(&profile).expect("an empty browser profile");
    // Modification times have whole-second granularity on some file systems.
    let start = SystemTime::now() - Duration::from_secs(2);

    let script = tokio::process::Command::new("node")
        .arg(browser.join("dashboard.test.mjs"))
        .current_dir(&browser)
        .env("CANOPY_URL", &stack.api)
        .env("CANOPY_USER", "Admin")
        .env("CANOPY_PASSWORD", ADMIN_PASSWORD)
        .env(
            "CANOPY_TICKER",
            repo().join("examples/ticker.wat").display().to_string(),
        )
        .env("CANOPY_SCREENSHOTS", &shots)
        .env("CANOPY_PROFILE", &profile)
        .env("CANOPY_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    // A bound on a hung browser, not a measurement: the script's own waits end sooner.
    let out = tokio::time::timeout(Duration::from_secs(600), script)
        .await
        .expect("the browser script ended within 10 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}");
    if !out.status.success() {
        let failure = work.path().join("dashboard-failure.png");
        let kept = std::env::temp_dir().join("canopy-dashboard-failure.png");
        let picture = std::fs::copy(&failure, &kept)
            .map(|_| format!("the page at the failure: {}", kept.display()))
            .unwrap_or_default();
        panic!(
            "the browser test failed ({}):\n{stdout}\n{stderr}\n{picture}\n{}",
            out.status,
            stack.daemon_logs()
        );
    }
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no RESULT line from the script:\n{stdout}\n{stderr}"));
    assert_eq!(
        result["logMode"], "stream",
        "the log was followed from the worker"
    );

    // What the browser did, seen through the API.
    let service = result["serviceId"].as_str().expect("the service id");
    let (status, _) = stack
        .call("GET", &format!("/api/service/{service}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the service deployed from the browser is deleted"
    );
    let apps = stack.get("/api/applications").await;
    assert!(
        apps.as_array()
            .is_some_and(|l| l.iter().all(|a| a["application_name"] != "dash")),
        "the application is gone: {apps}"
    );
    let (status, user) = stack.call("GET", "/api/user/browseruser", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the user made on the admin page: {user}"
    );
    let orgs = stack.get("/api/organization").await;
    assert!(
        orgs.as_array()
            .is_some_and(|l| l.iter().any(|o| o["name"] == "edgeteam")),
        "the organisation made on the admin page: {orgs}"
    );

    let bad: Vec<String> = SHOTS
        .iter()
        .filter_map(|s| is_png_written_after(&shots.join(format!("{s}.png")), start).err())
        .collect();
    assert!(bad.is_empty(), "screenshots: {bad:?}");
}
