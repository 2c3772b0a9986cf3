//! A docker-compose file as an application (issue 15, point 6), with the real binaries,
//! containerd and the overlay (`canopy up`, one worker): `canopy convert` prints the SLA,
//! `canopy apply FILE.yml --wait` deploys both services, the one with `deploy.replicas: 2`
//! twice, with their environment; the published port answers on 127.0.0.1; every key Canopy
//! does not map is reported as a warning with its path. (Its own test binary: overlay stacks
//! on one machine do not run side by side.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::{Stack, demo_image, free_port};
use serde_json::Value;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_file_deploys_as_an_application() {
    let work = tempfile::tempdir().unwrap();
    let image = demo_image(work.path());
    let stack = Stack::up_overlay(1, &[]).await;
    let host_port = free_port();
    let file = stack.dir.path().join("shop.yml");
    std::fs::write(
        &file,
        format!(
            r#"
version: "3.8"
services:
  web:
    image: oci-archive:{image}
    command: ["sh", "-c", "echo \"$GREETING from compose\" > /www/c.html && exec httpd -f -p 80 -h /www"]
    environment:
      GREETING: hello
    ports: ["{host_port}:80"]
    volumes: ["./data:/data"]
    deploy:
      resources:
        limits: {{memory: 32M}}
  tick-er:
    image: oci-archive:{image}
    command: sh -c 'echo tick $ROLE; sleep 3600'
    environment: [ROLE=worker]
    restart: always
    deploy:
      replicas: 2
      resources:
        limits: {{memory: 32M}}
"#,
            image = image.display()
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let out = stack.cli(&["convert", path]).await;
    assert!(out.ok, "{out:?}");
    let sla: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(sla["applications"][0]["application_name"], "shop");
    assert_eq!(
        sla["applications"][0]["microservices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = stack
        .cli(&["apply", path, "--wait", "--timeout", "120"])
        .await;
    assert!(out.ok, "{out:?}");
    for w in [
        "warning: version: ignored",
        "warning: services.web.volumes: not mapped",
        "warning: services.tick-er: named \"ticker\"",
        "warning: services.tick-er.restart: not mapped",
    ] {
        assert!(out.stderr.contains(w), "{w} missing: {}", out.stderr);
    }
    assert_eq!(
        out.stdout.matches("instance 0 requested").count(),
        2,
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("instance 1 requested").count(),
        1,
        "{}",
        out.stdout
    );

    let services = stack.get("/api/services").await;
    let by_name = |n: &str| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["microservice_name"] == n)
            .unwrap_or_else(|| panic!("no service {n} in {services}"))["microserviceID"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    stack.wait_all(&by_name("web"), 1, "RUNNING").await;
    stack.wait_all(&by_name("ticker"), 2, "RUNNING").await;

    // The environment reached the processes; the port mapping is published on the worker.
    let mut page = String::new();
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{host_port}/c.html")).await {
            page = r.text().await.unwrap_or_default();
            if page.contains("hello from compose") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(page.contains("hello from compose"), "{page:?}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = stack
            .cli_ok(&["logs", "shop.ticker", "--instance", "1"])
            .await;
        if logs.contains("tick worker") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(logs.contains("tick worker"), "{logs:?}");
}
