//! Declarative apply: what a file (an SLA, or a compose file as one application) changes
//! against what the root holds, decided by the pure [`plan`] and shown by `canopy diff`;
//! `canopy apply` carries it out. New applications and services are created; a service whose
//! microservice differs is updated in place (`PUT /api/service/<id>`: a rolling update);
//! unchanged ones are left alone; with `--prune`, services of the file's applications that
//! the file no longer has are deleted. Applications the file does not name are not touched.
//! Applying the same file twice changes nothing.
//!
//! Instances: a new service gets one (a compose file's `deploy.replicas`); an existing
//! service keeps its count, unless a compose file says how many.
//!
//! `canopy rollout status SERVICE` follows a service's rolling update until it ends.

use crate::client::Client;
use crate::commands::{ApplyArgs, resolve_service, str_of};
use anyhow::{Context, Result, anyhow, bail};
use canopy_api::{ApplicationView, RolloutView, ScaleUpView, ServiceView};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Keys of a microservice the root's service view does not echo (or names otherwise).
const NOT_ECHOED: [&str; 5] = ["microserviceID", "applicationID", "status", "image", "_id"];

/// An application as the root holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldApp {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub services: Vec<HeldService>,
}

/// A service as the root holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldService {
    pub id: String,
    pub name: String,
    /// The microservice as stored (the view's SLA fields).
    pub sla: Map<String, Value>,
    /// Instances, and the highest numbers first (what scaling down removes).
    pub instances: Vec<u32>,
}

/// One thing apply does (or, for `Keep` and `Leave`, does not).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Application `app` (its index in the file) is new, with all its services.
    CreateApp { app: usize, label: String },
    /// Microservice `ms` of application `app` is new in the held application `app_id`.
    AddService {
        app: usize,
        ms: usize,
        app_id: String,
        label: String,
    },
    /// The service differs in `fields`: updated in place.
    Update {
        app: usize,
        ms: usize,
        id: String,
        label: String,
        fields: Vec<String>,
    },
    /// The file says how many instances (a compose file), and the service has another number.
    Scale {
        id: String,
        label: String,
        from: u32,
        to: u32,
        remove: Vec<u32>,
    },
    /// Not in the file any more: deleted (`--prune`).
    Remove { id: String, label: String },
    /// As in the file.
    Keep { label: String },
    /// Not in the file, left alone (no `--prune`).
    Leave { label: String },
}

impl Action {
    /// Changes something.
    pub fn changes(&self) -> bool {
        !matches!(self, Action::Keep { .. } | Action::Leave { .. })
    }

    /// One line for `canopy diff`.
    pub fn line(&self) -> String {
        match self {
            Action::CreateApp { label, .. } => {
                format!("+ application {label} (new, with its services)")
            }
            Action::AddService { label, .. } => format!("+ service {label} (new)"),
            Action::Update { label, fields, .. } => {
                format!(
                    "~ service {label}: {} (a rolling update)",
                    fields.join(", ")
                )
            }
            Action::Scale {
                label, from, to, ..
            } => {
                format!("~ service {label}: {from} → {to} instance(s)")
            }
            Action::Remove { label, .. } => format!("- service {label} (not in the file: --prune)"),
            Action::Keep { label } => format!("= service {label} (unchanged)"),
            Action::Leave { label } => {
                format!("  service {label} is not in the file: left alone (--prune deletes it)")
            }
        }
    }
}

/// An application of the file: its name, namespace, and microservices as the root stores
/// them.
type FileApp = (String, String, Vec<Map<String, Value>>);

/// The microservices of the file, normalised as the root stores them (through the SLA
/// types), by application.
fn normalised(sla: &Value) -> Result<Vec<FileApp>> {
    let typed = canopy_sla::validate_value(sla).map_err(|e| {
        let list: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        anyhow!("the file is not a valid SLA:\n  {}", list.join("\n  "))
    })?;
    typed
        .sla
        .applications
        .iter()
        .map(|a| {
            let services = a
                .microservices
                .iter()
                .map(|ms| match serde_json::to_value(ms)? {
                    Value::Object(m) => Ok(m),
                    _ => Ok(Map::new()),
                })
                .collect::<Result<Vec<_>, serde_json::Error>>()?;
            Ok((
                a.application_name.clone(),
                a.application_namespace.clone(),
                services,
            ))
        })
        .collect()
}

/// The fields where `held` and `wanted` differ (keys the view does not echo aside).
fn differences(held: &Map<String, Value>, wanted: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = held.keys().chain(wanted.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !NOT_ECHOED.contains(&k.as_str()))
        .filter(|k| held.get(*k).unwrap_or(&Value::Null) != wanted.get(*k).unwrap_or(&Value::Null))
        .cloned()
        .collect()
}

/// What applying `sla` (with `replicas` per service name, from a compose file) does to
/// `held`, the caller's applications.
pub fn plan(
    sla: &Value,
    replicas: &BTreeMap<String, u32>,
    held: &[HeldApp],
    prune: bool,
) -> Result<Vec<Action>> {
    let mut out = Vec::new();
    for (a, (name, ns, services)) in normalised(sla)?.into_iter().enumerate() {
        let label = format!("{ns}/{name}");
        let Some(h) = held.iter().find(|h| h.name == name && h.namespace == ns) else {
            out.push(Action::CreateApp { app: a, label });
            continue;
        };
        let mut seen = Vec::new();
        for (m, ms) in services.iter().enumerate() {
            let svc_name = ms
                .get("microservice_name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let label = format!("{name}.{svc_name}");
            let Some(s) = h.services.iter().find(|s| s.name == svc_name) else {
                out.push(Action::AddService {
                    app: a,
                    ms: m,
                    app_id: h.id.clone(),
                    label,
                });
                continue;
            };
            seen.push(s.id.clone());
            let fields = differences(&s.sla, ms);
            if fields.is_empty() {
                out.push(Action::Keep {
                    label: label.clone(),
                });
            } else {
                out.push(Action::Update {
                    app: a,
                    ms: m,
                    id: s.id.clone(),
                    label: label.clone(),
                    fields,
                });
            }
            if let Some(&to) = replicas.get(svc_name) {
                let from = s.instances.len() as u32;
                if from != to {
                    let mut numbers = s.instances.clone();
                    numbers.sort_unstable_by(|x, y| y.cmp(x));
                    out.push(Action::Scale {
                        id: s.id.clone(),
                        label,
                        from,
                        to,
                        remove: numbers
                            .into_iter()
                            .take(from.saturating_sub(to) as usize)
                            .collect(),
                    });
                }
            }
        }
        for s in h.services.iter().filter(|s| !seen.contains(&s.id)) {
            let label = format!("{name}.{}", s.name);
            out.push(if prune {
                Action::Remove {
                    id: s.id.clone(),
                    label,
                }
            } else {
                Action::Leave { label }
            });
        }
    }
    Ok(out)
}

/// The caller's applications with their services, as the root holds them.
async fn held(client: &mut Client) -> Result<Vec<HeldApp>> {
    let me = client
        .login_info()
        .map(|l| l.username.clone())
        .unwrap_or_default();
    let apps: Vec<ApplicationView> = client.get("/api/applications").await?;
    let mut out = Vec::new();
    for a in apps.into_iter().filter(|a| a.userId == me) {
        let services: Vec<ServiceView> = client
            .get(&format!("/api/services/{}", a.applicationID))
            .await?;
        out.push(HeldApp {
            id: a.applicationID,
            name: a.application_name,
            namespace: a.application_namespace,
            services: services
                .into_iter()
                .map(|s| HeldService {
                    id: s.microserviceID,
                    name: s.service_name,
                    sla: s.sla,
                    instances: s
                        .instance_list
                        .iter()
                        .filter(|i| i.status != "STOPPED")
                        .map(|i| i.instance_number)
                        .collect(),
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The file's application `a`, with only the microservices `only` (all when `None`), as an
/// SLA document of its own.
fn sub_sla(sla: &Value, a: usize, only: Option<usize>, app_id: Option<&str>) -> Value {
    let mut app = sla["applications"][a].clone();
    if let Some(m) = only {
        app["microservices"] = json!([sla["applications"][a]["microservices"][m].clone()]);
    }
    if let Some(id) = app_id {
        app["applicationID"] = json!(id);
    }
    json!({
        "sla_version": sla.get("sla_version").cloned().unwrap_or(json!("v2.0")),
        "customerID": sla.get("customerID").cloned().unwrap_or(json!("")),
        "applications": [app],
    })
}

/// `canopy diff FILE [--prune]`: what apply would do. Exit status 1 when it would change
/// something (as `diff` does).
pub async fn diff(client: &mut Client, file: &std::path::Path, prune: bool) -> Result<bool> {
    let (sla, replicas) = crate::commands::read_deployment(file)?;
    let actions = plan(&sla, &replicas, &held(client).await?, prune)?;
    for a in &actions {
        println!("{}", a.line());
    }
    let changes = actions.iter().filter(|a| a.changes()).count();
    if changes == 0 {
        println!("no changes");
    }
    Ok(changes > 0)
}

/// `canopy apply FILE`: the plan, carried out.
pub async fn apply(client: &mut Client, args: ApplyArgs) -> Result<()> {
    let (sla, replicas) = crate::commands::read_deployment(&args.file)?;
    // Opened first, so no change of the new instances is missed; without it (an older root),
    // --wait polls.
    let mut events = if args.wait {
        client.events("?kind=instance", None).await.ok()
    } else {
        None
    };
    let actions = plan(&sla, &replicas, &held(client).await?, args.prune)?;
    let mut tracked = Vec::new();
    let mut rollouts = Vec::new();
    let count = |name: &str| replicas.get(name).copied().unwrap_or(1);
    for action in &actions {
        match action {
            Action::CreateApp { app, .. } => {
                let apps: Vec<ApplicationView> = client
                    .post("/api/application", Some(&sub_sla(&sla, *app, None, None)))
                    .await?;
                let wanted = &sla["applications"][*app];
                let (name, ns) = (
                    str_of(wanted, "application_name"),
                    str_of(wanted, "application_namespace"),
                );
                let a = apps
                    .iter()
                    .find(|a| a.application_name == name && a.application_namespace == ns)
                    .ok_or_else(|| anyhow!("the API did not return application {name:?}"))?;
                println!("application {ns}/{name}: {}", a.applicationID);
                for id in &a.microservices {
                    let svc: ServiceView = client.get(&format!("/api/service/{id}")).await?;
                    let label = format!("{name}.{}", svc.service_name);
                    let n = count(&svc.service_name);
                    scale_up(client, &svc, &label, n, &mut tracked).await?;
                }
            }
            Action::AddService {
                app,
                ms,
                app_id,
                label,
            } => {
                let body = sub_sla(&sla, *app, Some(*ms), Some(app_id));
                let _: Value = client.post("/api/service", Some(&body)).await?;
                let svc_name = str_of(
                    &sla["applications"][*app]["microservices"][*ms],
                    "microservice_name",
                );
                let services: Vec<ServiceView> =
                    client.get(&format!("/api/services/{app_id}")).await?;
                let svc = services
                    .into_iter()
                    .find(|s| s.service_name == svc_name)
                    .ok_or_else(|| anyhow!("the API did not return service {label}"))?;
                println!("service {label}: {} (added)", svc.microserviceID);
                scale_up(client, &svc, label, count(&svc_name), &mut tracked).await?;
            }
            Action::Update {
                app,
                ms,
                id,
                label,
                fields,
            } => {
                let body = &sla["applications"][*app]["microservices"][*ms];
                let r: RolloutView = client.put(&format!("/api/service/{id}"), body).await?;
                if r.changed {
                    println!(
                        "service {label}: updated ({}): rolling to revision {}",
                        fields.join(", "),
                        r.revision
                    );
                    rollouts.push((id.clone(), label.clone()));
                } else {
                    println!("service {label}: unchanged");
                }
            }
            Action::Scale {
                id,
                label,
                from,
                to,
                remove,
            } => {
                if to > from {
                    let svc: ServiceView = client.get(&format!("/api/service/{id}")).await?;
                    scale_up(client, &svc, label, to - from, &mut tracked).await?;
                } else {
                    for n in remove {
                        client
                            .delete(&format!("/api/service/{id}/instance/{n}"))
                            .await?;
                        println!("  service {label}: instance {n} removed");
                    }
                }
            }
            Action::Remove { id, label } => {
                client.delete(&format!("/api/service/{id}")).await?;
                println!("service {label}: deleted (not in the file)");
            }
            Action::Keep { label } => println!("service {label}: unchanged"),
            Action::Leave { label } => {
                println!("service {label}: not in the file, left alone (--prune deletes it)")
            }
        }
    }
    if args.wait {
        let timeout = Duration::from_secs(args.timeout);
        if !tracked.is_empty() {
            crate::commands::wait_running(client, &mut tracked, &mut events, timeout).await?;
        }
        for (id, label) in &rollouts {
            wait_rollout(client, id, label, timeout).await?;
        }
    }
    Ok(())
}

/// Requests `n` instances of `svc`, each followed by `--wait`.
async fn scale_up(
    client: &mut Client,
    svc: &ServiceView,
    label: &str,
    n: u32,
    tracked: &mut Vec<crate::commands::Tracked>,
) -> Result<()> {
    let id = &svc.microserviceID;
    for _ in 0..n {
        let answer: ScaleUpView = client
            .post(&format!("/api/service/{id}/instance"), None)
            .await?;
        let number = answer.instance_number;
        println!("  service {label} ({id}): instance {number} requested");
        tracked.push(crate::commands::Tracked::new(svc, label, number));
    }
    Ok(())
}

/// Follows the rolling update of service `id` until it ends: `Ok` when complete, an error
/// naming the reason when it rolled back or failed.
pub async fn wait_rollout(
    client: &mut Client,
    id: &str,
    label: &str,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let r: RolloutView = client.get(&format!("/api/service/{id}/rollout")).await?;
        let line = format!(
            "{}: revision {}, {} of {} updated, {} old",
            r.state.replace('_', " "),
            r.revision,
            r.updated,
            r.replicas,
            r.old
        );
        if line != last {
            println!("  {:>6.1}s  {label}  {line}", start.elapsed().as_secs_f64());
            last = line;
        }
        match r.state.as_str() {
            "none" => {
                println!("service {label} has never been updated");
                return Ok(());
            }
            "complete" => {
                println!(
                    "service {label}: rollout complete (revision {})",
                    r.revision
                );
                return Ok(());
            }
            "rolled_back" => bail!(
                "service {label}: the update was rolled back to revision {}: {}",
                r.revision,
                r.reason
            ),
            "failed" => bail!("service {label}: the rollout failed: {}", r.reason),
            _ => {}
        }
        if start.elapsed() > timeout {
            bail!(
                "service {label}: the rollout is not done after {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `canopy rollout status SERVICE`.
pub async fn rollout_status(client: &mut Client, service: &str, timeout: u64) -> Result<()> {
    let id = resolve_service(client, service).await?;
    wait_rollout(client, &id, service, Duration::from_secs(timeout))
        .await
        .with_context(|| format!("rollout of {service}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(cmd: &[&str], extra: &[&str]) -> Value {
        let mut services = vec![json!({
            "microservice_name": "web", "microservice_namespace": "e2e",
            "virtualization": "container", "code": "docker.io/library/busybox:latest",
            "cmd": cmd, "memory": 32, "vcpus": 0,
        })];
        for name in extra {
            services.push(json!({
                "microservice_name": name, "microservice_namespace": "e2e",
                "virtualization": "container", "code": "docker.io/library/busybox:latest",
                "memory": 32, "vcpus": 0,
            }));
        }
        json!({"sla_version": "v2.0", "customerID": "Admin", "applications": [{
            "application_name": "shop", "application_namespace": "e2e",
            "application_desc": "", "microservices": services}]})
    }

    /// What the root holds after creating `sla`: its microservices as stored.
    fn held_from(sla: &Value, instances: u32) -> Vec<HeldApp> {
        normalised(sla)
            .unwrap()
            .into_iter()
            .map(|(name, namespace, services)| HeldApp {
                id: "app1".into(),
                name,
                namespace,
                services: services
                    .into_iter()
                    .map(|mut sla| {
                        let name = sla["microservice_name"].as_str().unwrap().to_owned();
                        // The view adds and drops a few keys; they do not count.
                        sla.insert("status".into(), json!("RUNNING"));
                        HeldService {
                            id: format!("id-{name}"),
                            name,
                            sla,
                            instances: (0..instances).collect(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn a_new_file_creates_and_the_same_file_again_changes_nothing() {
        let f = file(&["sh"], &[]);
        let none = BTreeMap::new();
        assert_eq!(
            plan(&f, &none, &[], false).unwrap(),
            [Action::CreateApp {
                app: 0,
                label: "e2e/shop".into()
            }]
        );
        let again = plan(&f, &none, &held_from(&f, 1), false).unwrap();
        assert_eq!(
            again,
            [Action::Keep {
                label: "shop.web".into()
            }]
        );
        assert!(!again.iter().any(Action::changes));
    }

    #[test]
    fn changed_new_and_missing_services() {
        let before = file(&["sh"], &["old"]);
        let after = file(&["sh", "-c", "echo B"], &["new"]);
        let held = held_from(&before, 2);
        let acts = plan(&after, &BTreeMap::new(), &held, false).unwrap();
        assert_eq!(
            acts[0],
            Action::Update {
                app: 0,
                ms: 0,
                id: "id-web".into(),
                label: "shop.web".into(),
                fields: vec!["cmd".into()],
            }
        );
        assert!(matches!(&acts[1], Action::AddService { label, .. } if label == "shop.new"));
        assert_eq!(
            acts[2],
            Action::Leave {
                label: "shop.old".into()
            }
        );
        let pruned = plan(&after, &BTreeMap::new(), &held, true).unwrap();
        assert_eq!(
            pruned[2],
            Action::Remove {
                id: "id-old".into(),
                label: "shop.old".into()
            }
        );
    }

    #[test]
    fn a_compose_count_scales_and_down_removes_the_highest_numbers() {
        let f = file(&["sh"], &[]);
        let held = held_from(&f, 3);
        let two = BTreeMap::from([("web".to_owned(), 1)]);
        let acts = plan(&f, &two, &held, false).unwrap();
        assert_eq!(
            acts[1],
            Action::Scale {
                id: "id-web".into(),
                label: "shop.web".into(),
                from: 3,
                to: 1,
                remove: vec![2, 1],
            }
        );
    }

    #[test]
    fn an_invalid_file_is_refused_with_its_problems() {
        let mut f = file(&["sh"], &[]);
        f["applications"][0]["microservices"][0]["virtualization"] = json!("vmware");
        let e = plan(&f, &BTreeMap::new(), &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("virtualization"), "{e}");
    }
}
