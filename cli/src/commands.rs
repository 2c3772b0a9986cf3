//! The commands that talk to a root's REST API: `login`, `apply`, `get`, `logs`, `scale`,
//! `delete`. Every one goes through [`Client`], so API errors print with the field they name.

use crate::client::{Client, typed};
use crate::table::Table;
use anyhow::{Context, Result, anyhow, bail};
use canopy_api::{ApplicationView, ClusterInfo, InstanceView, NodeView, ScaleUpView, ServiceView};
use canopy_core::{InstanceStatus, StatusClass};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct LoginArgs {
    #[arg(long, short, default_value = "Admin")]
    pub username: String,
    /// The password; else `CANOPY_PASSWORD`, else one line read from stdin.
    #[arg(long, env = "CANOPY_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// An SLA v2.0 file (Oakestra's format), or a docker-compose file (`.yml`, `.yaml`):
    /// one application, each service with its `deploy.replicas`.
    pub file: PathBuf,
    /// Show progress until every instance runs (a one-shot service's: until it completed);
    /// fail with the reason when one fails.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Delete the services of the file's applications that the file no longer has.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    #[value(alias = "app", alias = "applications")]
    Apps,
    #[value(alias = "service")]
    Services,
    #[value(alias = "instance")]
    Instances,
    #[value(alias = "cluster")]
    Clusters,
    #[value(alias = "node", alias = "workers")]
    Nodes,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct GetArgs {
    pub kind: Kind,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// After the list, print it again at each change (from the root's event stream), until
    /// interrupted.
    #[arg(long, short)]
    pub watch: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Service id or name (`service`, or `app.service` when names repeat).
    pub service: String,
    /// Instance number; default: the lowest.
    #[arg(long)]
    pub instance: Option<u32>,
    /// Keep printing new output until the instance is removed.
    #[arg(long, short)]
    pub follow: bool,
    /// Start this many lines before the end (default: the whole log).
    #[arg(long)]
    pub tail: Option<u32>,
}

#[derive(Args)]
pub struct ScaleArgs {
    /// Service id or name.
    pub service: String,
    /// The number of instances wanted.
    pub replicas: u32,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DeleteKind {
    #[value(alias = "application", alias = "apps")]
    App,
    #[value(alias = "services")]
    Service,
}

#[derive(Args)]
pub struct DeleteArgs {
    pub kind: DeleteKind,
    /// Id or name.
    pub id: String,
}

pub async fn login(client: &mut Client, args: LoginArgs) -> Result<()> {
    let password = match args.password {
        Some(p) => p,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("password for {} at {}: ", args.username, client.api);
                std::io::stderr().flush().ok();
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    client.login(&args.username, &password).await?;
    println!("logged in to {} as {}", client.api, args.username);
    Ok(())
}

/// An instance this command deployed and follows.
pub struct Tracked {
    service_id: String,
    label: String,
    number: u32,
    /// Done at `COMPLETED` rather than `RUNNING`.
    one_shot: bool,
    last: String,
}

impl Tracked {
    /// Instance `number` of `svc`, shown as `label`.
    pub fn new(svc: &ServiceView, label: &str, number: u32) -> Tracked {
        Tracked {
            service_id: svc.microserviceID.clone(),
            label: label.to_owned(),
            number,
            one_shot: svc.sla.get("one_shot").and_then(Value::as_bool) == Some(true),
            last: String::new(),
        }
    }
}

/// The SLA in `file` (JSON), or a compose file (`.yml`, `.yaml`) converted to one, with the
/// instances wanted per service (one each for an SLA). A compose file's unmapped keys are
/// printed as warnings.
pub fn read_deployment(file: &std::path::Path) -> Result<(Value, BTreeMap<String, u32>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if crate::compose::is_compose(file) {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("compose");
        let c = crate::compose::convert(&text, stem)
            .with_context(|| format!("{} is not a compose file Canopy can map", file.display()))?;
        for w in &c.warnings {
            eprintln!("warning: {w}");
        }
        return Ok((c.sla, c.replicas));
    }
    let sla: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    Ok((sla, BTreeMap::new()))
}

/// Prints every status change until all run; fails on a failure status or the timeout.
pub async fn wait_running(
    client: &mut Client,
    tracked: &mut [Tracked],
    events: &mut Option<crate::events::EventStream>,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    println!("waiting for {} instance(s) to run", tracked.len());
    loop {
        let mut done = 0;
        // One request per service per round, however many of its instances are followed.
        let mut services: BTreeMap<String, ServiceView> = BTreeMap::new();
        for t in tracked.iter() {
            if !services.contains_key(&t.service_id) {
                let svc = client
                    .get(&format!("/api/service/{}", t.service_id))
                    .await?;
                services.insert(t.service_id.clone(), svc);
            }
        }
        for t in tracked.iter_mut() {
            let inst = instance(&services[&t.service_id], t.number)
                .ok_or_else(|| anyhow!("{} instance {} is gone", t.label, t.number))?;
            let (status, detail) = (&inst.status, &inst.status_detail);
            let line = if detail.is_empty() {
                status.clone()
            } else {
                format!("{status} ({detail})")
            };
            if line != t.last {
                println!(
                    "  {:>6.1}s  {} #{}  {line}",
                    start.elapsed().as_secs_f64(),
                    t.label,
                    t.number
                );
                t.last = line.clone();
            }
            match status.parse::<InstanceStatus>() {
                Ok(InstanceStatus::Completed) => done += 1,
                Ok(InstanceStatus::Running) if !t.one_shot => done += 1,
                Ok(s) if s.needs_rescheduling() || s.class() == StatusClass::NegativeScheduling => {
                    bail!("{} instance {} failed: {line}", t.label, t.number)
                }
                Ok(InstanceStatus::Undeployed) => {
                    bail!("{} instance {} was undeployed", t.label, t.number)
                }
                _ => {}
            }
        }
        if done == tracked.len() {
            println!(
                "all {} instance(s) running (or completed) after {:.1}s",
                tracked.len(),
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("not every instance runs after {}s", timeout.as_secs());
        }
        next_change(events, tracked, timeout.saturating_sub(start.elapsed())).await;
    }
}

/// Waits until a tracked instance changes, as the event stream says (at most 5 s: a safety
/// net, and at most `left`), or 300 ms without a stream (one that fails is dropped).
async fn next_change(
    events: &mut Option<crate::events::EventStream>,
    tracked: &[Tracked],
    left: Duration,
) {
    let Some(stream) = events else {
        tokio::time::sleep(Duration::from_millis(300).min(left)).await;
        return;
    };
    let ours = async {
        loop {
            match stream.next_item().await {
                Ok(Some(i)) => {
                    let hit = tracked.iter().any(|t| {
                        i.service_id.as_deref() == Some(&t.service_id)
                            && i.instance == Some(t.number)
                    });
                    if hit {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5).min(left), ours).await {
        Ok(true) | Err(_) => {}
        Ok(false) => *events = None,
    }
}

pub async fn get(client: &mut Client, args: GetArgs) -> Result<()> {
    // Opened before the first list, so no change after it is missed.
    let mut events = if args.watch {
        let kinds = match args.kind {
            Kind::Apps => "application",
            Kind::Services => "service,instance",
            Kind::Instances => "instance",
            Kind::Clusters => "cluster",
            Kind::Nodes => "node",
        };
        Some(client.events(&format!("?kind={kinds}"), None).await?)
    } else {
        None
    };
    print_list(client, &args).await?;
    let Some(stream) = events.as_mut() else {
        return Ok(());
    };
    // Each list ends with a blank line.
    println!();
    loop {
        match stream.next_item().await? {
            Some(_) => {
                // Changes come in bursts (a placement is several): one list per burst.
                while let Ok(Ok(Some(_))) =
                    tokio::time::timeout(Duration::from_millis(100), stream.next_item()).await
                {
                }
                print_list(client, &args).await?;
                println!();
            }
            None => bail!("the root closed the event stream"),
        }
    }
}

async fn print_list(client: &mut Client, args: &GetArgs) -> Result<()> {
    let path = match args.kind {
        Kind::Apps => "/api/applications",
        Kind::Services | Kind::Instances => "/api/services",
        Kind::Clusters => "/api/clusters",
        Kind::Nodes => "/api/nodes",
    };
    // Kept as sent: `-o json` prints what the API answered, fields Canopy does not know included.
    let answer: Value = client.get(path).await?;
    if args.output == Output::Json {
        let out = match args.kind {
            Kind::Instances => instances_json(&answer),
            _ => answer,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let table = match args.kind {
        Kind::Apps => apps_table(&typed::<Vec<_>>(path, answer)?),
        Kind::Services => services_table(&typed::<Vec<_>>(path, answer)?),
        Kind::Instances => instances_table(&typed::<Vec<_>>(path, answer)?),
        Kind::Clusters => clusters_table(&typed::<Vec<_>>(path, answer)?),
        Kind::Nodes => nodes_table(&typed::<Vec<_>>(path, answer)?),
    };
    print!("{}", table.render());
    Ok(())
}

/// Every instance of every service in the answer, each with its service's `microserviceID`.
fn instances_json(services: &Value) -> Value {
    Value::Array(
        services
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| {
                let id = str_of(s, "microserviceID");
                s.get("instance_list")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |mut i| {
                        if let Some(o) = i.as_object_mut() {
                            o.insert("microserviceID".into(), Value::String(id.clone()));
                        }
                        i
                    })
            })
            .collect(),
    )
}

fn apps_table(list: &[ApplicationView]) -> Table {
    let mut t = Table::new(&["ID", "NAMESPACE", "NAME", "SERVICES", "OWNER"]);
    for a in list {
        t.row(vec![
            a.applicationID.clone(),
            a.application_namespace.clone(),
            a.application_name.clone(),
            a.microservices.len().to_string(),
            a.userId.clone(),
        ]);
    }
    t
}

fn services_table(list: &[ServiceView]) -> Table {
    let mut t = Table::new(&[
        "ID", "APP", "NAME", "TYPE", "STATUS", "RUNNING", "ADDRESS", "CODE",
    ]);
    for s in list {
        let running = s
            .instance_list
            .iter()
            .filter(|i| i.status == InstanceStatus::Running.as_str())
            .count();
        t.row(vec![
            s.microserviceID.clone(),
            s.app_name.clone(),
            s.service_name.clone(),
            text(s.sla.get("virtualization")),
            s.status.clone(),
            format!("{running}/{}", s.instance_list.len()),
            s.RR_ip.clone(),
            s.image.clone(),
        ]);
    }
    t
}

fn instances_table(list: &[ServiceView]) -> Table {
    let mut t = Table::new(&[
        "SERVICE", "#", "STATUS", "WORKER", "ADDRESS", "CPU%", "MEM(MB)", "DETAIL",
    ]);
    for s in list {
        let label = format!("{}.{}", s.app_name, s.service_name);
        for i in &s.instance_list {
            t.row(vec![
                label.clone(),
                i.instance_number.to_string(),
                i.status.clone(),
                i.worker_id.clone().unwrap_or_default(),
                i.instance_ip.clone(),
                format!("{:.1}", i.cpu_percent),
                i.memory.to_string(),
                i.status_detail.clone(),
            ]);
        }
    }
    t
}

fn clusters_table(list: &[ClusterInfo]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "ACTIVE",
        "NODES",
        "CPU%",
        "MEM%",
        "FREE VCPUS",
        "FREE MEM(MB)",
    ]);
    for c in list {
        t.row(vec![
            c._id.oid.clone(),
            c.cluster_name.clone(),
            c.active.to_string(),
            c.total.active_nodes.to_string(),
            format!("{:.1}", c.total.cpu_percent),
            format!("{:.1}", c.total.memory_percent),
            c.total.vcpus.to_string(),
            c.total.memory.to_string(),
        ]);
    }
    t
}

fn nodes_table(list: &[NodeView]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "CLUSTER",
        "ACTIVE",
        "ARCH",
        "RUNTIMES",
        "CPU%",
        "MEM%",
        "INSTANCES",
    ]);
    for n in list {
        t.row(vec![
            n.node_id.clone(),
            n.name.clone(),
            n.cluster_name.clone(),
            n.active.to_string(),
            n.architecture.clone(),
            n.virtualizations.join(","),
            format!("{:.1}", n.cpu_percent),
            format!("{:.1}", n.memory_percent),
            n.instances.to_string(),
        ]);
    }
    t
}

/// Prints an instance's log as its worker streams it (through the cluster and the root).
pub async fn logs(client: &mut Client, args: LogsArgs) -> Result<()> {
    let id = resolve_service(client, &args.service).await?;
    let n = match args.instance {
        Some(n) => n,
        None => {
            let svc: ServiceView = client.get(&format!("/api/service/{id}")).await?;
            svc.instance_list
                .iter()
                .map(|i| i.instance_number)
                .min()
                .ok_or_else(|| anyhow!("service {} has no instance", args.service))?
        }
    };
    let mut path = format!("/api/service/{id}/instance/{n}/logs?follow={}", args.follow);
    if let Some(t) = args.tail {
        path.push_str(&format!("&tail={t}"));
    }
    let mut resp = client.open_stream(&path, None).await?;
    let mut out = std::io::stdout().lock();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Ok(None) => return Ok(()),
            Err(e) => bail!(
                "the log of instance {n} broke off before its end (the worker was lost, the root stopped, or the log is longer than the root's --max-log-bytes): {e}"
            ),
        }
    }
}

pub async fn scale(client: &mut Client, args: ScaleArgs) -> Result<()> {
    let id = resolve_service(client, &args.service).await?;
    let svc: ServiceView = client.get(&format!("/api/service/{id}")).await?;
    let mut numbers: Vec<u32> = svc
        .instance_list
        .iter()
        .map(|i| i.instance_number)
        .collect();
    numbers.sort_unstable();
    let have = numbers.len() as u32;
    if args.replicas > have {
        for _ in have..args.replicas {
            let a: ScaleUpView = client
                .post(&format!("/api/service/{id}/instance"), None)
                .await?;
            println!("instance {} requested", a.instance_number);
        }
    } else {
        for n in numbers.iter().rev().take((have - args.replicas) as usize) {
            client
                .delete(&format!("/api/service/{id}/instance/{n}"))
                .await?;
            println!("instance {n} removed");
        }
    }
    println!("{} now has {} instance(s)", args.service, args.replicas);
    Ok(())
}

pub async fn delete(client: &mut Client, args: DeleteArgs) -> Result<()> {
    match args.kind {
        DeleteKind::App => {
            let apps: Vec<ApplicationView> = client.get("/api/applications").await?;
            let id = apps
                .iter()
                .find(|a| a.application_name == args.id)
                .map_or_else(|| args.id.clone(), |a| a.applicationID.clone());
            client.delete(&format!("/api/application/{id}")).await?;
            println!("application {id} deleted");
        }
        DeleteKind::Service => {
            let id = resolve_service(client, &args.id).await?;
            client.delete(&format!("/api/service/{id}")).await?;
            println!("service {id} deleted");
        }
    }
    Ok(())
}

/// A service id from an id, `job_name`, `app.service` or a unique service name.
pub async fn resolve_service(client: &mut Client, name: &str) -> Result<String> {
    let list: Vec<ServiceView> = client.get("/api/services").await?;
    let mut by_rule: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for s in list {
        let id = s.microserviceID;
        let app_svc = format!("{}.{}", s.app_name, s.service_name);
        let rule = if id == name {
            0
        } else if s.job_name == name {
            1
        } else if app_svc == name {
            2
        } else if s.service_name == name {
            3
        } else {
            continue;
        };
        by_rule.entry(rule).or_default().push(id);
    }
    match by_rule.into_iter().next() {
        None => bail!("no service {name:?} (see `canopy get services`)"),
        Some((_, ids)) if ids.len() == 1 => Ok(ids.into_iter().next().unwrap_or_default()),
        Some((_, ids)) => bail!(
            "{name:?} names {} services ({}): use the id or app.service",
            ids.len(),
            ids.join(", ")
        ),
    }
}

/// Instance `number` of a service.
fn instance(svc: &ServiceView, number: u32) -> Option<&InstanceView> {
    svc.instance_list
        .iter()
        .find(|i| i.instance_number == number)
}

/// A field as text; `a.b` looks into objects.
pub fn str_of(v: &Value, path: &str) -> String {
    let mut cur = v;
    for key in path.split('.') {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    text(Some(cur))
}

/// A JSON value as text: strings as they are, nothing (or null) as "".
fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service as the root answers, with fields the CLI does not know.
    fn service() -> Value {
        let inst = |n: u32, status: &str, worker: Value, cpu: Value, detail: &str| {
            serde_json::json!({"instance_number": n, "status": status, "status_detail": detail,
                "cluster_id": null, "worker_id": worker, "instance_ip": format!("10.30.0.{n}"),
                "cpu_percent": cpu, "memory": 12 * n, "logs": "", "last_modified_timestamp": 1.5,
                "unknown": [1]})
        };
        serde_json::json!({"_id": {"$oid": "s1"}, "microserviceID": "s1", "applicationID": "a1",
            "job_name": "demo.default.web.default", "app_name": "demo", "app_ns": "default",
            "service_name": "web", "service_ns": "default", "image": "nginx", "RR_ip": "10.30.1.1",
            "next_instance_progressive_number": 2, "status": "RUNNING", "status_detail": "",
            "virtualization": "container", "one_shot": false, "oakestra_extra": {"a": 1},
            "instance_list": [inst(0, "RUNNING", "n-1".into(), 3.06.into(), ""),
                inst(1, "FAILED", Value::Null, 0.into(), "image pull: not found")]})
    }

    #[test]
    fn tables_read_typed_views_of_the_answer() {
        let list: Vec<ServiceView> =
            typed("/api/services", Value::Array(vec![service()])).expect("a service view");
        assert_eq!(
            services_table(&list).render(),
            "ID  APP   NAME  TYPE       STATUS   RUNNING  ADDRESS    CODE\n\
             s1  demo  web   container  RUNNING  1/2      10.30.1.1  nginx\n"
        );
        assert_eq!(
            instances_table(&list).render(),
            "SERVICE   #  STATUS   WORKER  ADDRESS    CPU%  MEM(MB)  DETAIL\n\
             demo.web  0  RUNNING  n-1     10.30.0.0  3.1   0\n\
             demo.web  1  FAILED           10.30.0.1  0.0   12       image pull: not found\n"
        );
        assert_eq!(list[0].sla.get("one_shot"), Some(&Value::Bool(false)));
    }

    #[test]
    fn json_instances_carry_their_service_id_and_every_field() {
        let out = instances_json(&Value::Array(vec![service()]));
        assert_eq!(out[1]["microserviceID"], "s1");
        assert_eq!(out[1]["unknown"], serde_json::json!([1]));
        assert_eq!(out[1]["cpu_percent"], 0);
    }

    #[test]
    fn nested_fields_read_as_text() {
        let v = serde_json::json!({"_id": {"$oid": "abc"}, "n": 3, "s": "x"});
        assert_eq!(str_of(&v, "_id.$oid"), "abc");
        assert_eq!(str_of(&v, "n"), "3");
        assert_eq!(str_of(&v, "missing"), "");
    }
}
