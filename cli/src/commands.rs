//! The commands that talk to a root's REST API: `login`, `apply`, `get`, `logs`, `scale`,
//! `delete`. Every one goes through [`Client`], so API errors print with the field they name.

use crate::client::Client;
use crate::table::Table;
use anyhow::{Context, Result, anyhow, bail};
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
    /// An SLA v2.0 file (Oakestra's format).
    pub file: PathBuf,
    /// Show progress until every instance runs (a one-shot service's: until it completed);
    /// fail with the reason when one fails.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
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
}

#[derive(Args)]
pub struct LogsArgs {
    /// Service id or name (`service`, or `app.service` when names repeat).
    pub service: String,
    /// Instance number; default: the lowest.
    #[arg(long)]
    pub instance: Option<u32>,
    /// Keep printing new output.
    #[arg(long, short)]
    pub follow: bool,
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
struct Tracked {
    service_id: String,
    label: String,
    number: u32,
    /// Done at `COMPLETED` rather than `RUNNING`.
    one_shot: bool,
    last: String,
}

pub async fn apply(client: &mut Client, args: ApplyArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sla: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.file.display()))?;
    let apps = client.post("/api/application", Some(&sla)).await?;
    let apps = apps.as_array().cloned().unwrap_or_default();
    let mut tracked = Vec::new();
    for wanted in sla
        .get("applications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_of(wanted, "application_name");
        let ns = str_of(wanted, "application_namespace");
        let app = apps
            .iter()
            .find(|a| {
                str_of(a, "application_name") == name && str_of(a, "application_namespace") == ns
            })
            .ok_or_else(|| anyhow!("the API did not return application {name:?}"))?;
        println!("application {ns}/{name}: {}", str_of(app, "applicationID"));
        for id in app
            .get("microservices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let svc = client.get(&format!("/api/service/{id}")).await?;
            let label = format!("{name}.{}", str_of(&svc, "service_name"));
            let answer = client
                .post(&format!("/api/service/{id}/instance"), None)
                .await?;
            let number = answer
                .get("instance_number")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32;
            println!("  service {label} ({id}): instance {number} requested");
            tracked.push(Tracked {
                service_id: id.to_owned(),
                label,
                number,
                one_shot: svc.get("one_shot").and_then(Value::as_bool) == Some(true),
                last: String::new(),
            });
        }
    }
    if args.wait {
        wait_running(client, &mut tracked, Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}

/// Prints every status change until all run; fails on a failure status or the timeout.
async fn wait_running(
    client: &mut Client,
    tracked: &mut [Tracked],
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    println!("waiting for {} instance(s) to run", tracked.len());
    loop {
        let mut done = 0;
        // One request per service per round, however many of its instances are followed.
        let mut services: BTreeMap<String, Value> = BTreeMap::new();
        for t in tracked.iter() {
            if !services.contains_key(&t.service_id) {
                let svc = client
                    .get(&format!("/api/service/{}", t.service_id))
                    .await?;
                services.insert(t.service_id.clone(), svc);
            }
        }
        for t in tracked.iter_mut() {
            let inst = instances(&services[&t.service_id])
                .into_iter()
                .find(|i| i.get("instance_number").and_then(Value::as_u64) == Some(t.number.into()))
                .ok_or_else(|| anyhow!("{} instance {} is gone", t.label, t.number))?;
            let status = str_of(&inst, "status");
            let detail = str_of(&inst, "status_detail");
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
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn get(client: &mut Client, args: GetArgs) -> Result<()> {
    let path = match args.kind {
        Kind::Apps => "/api/applications",
        Kind::Services | Kind::Instances => "/api/services",
        Kind::Clusters => "/api/clusters",
        Kind::Nodes => "/api/nodes",
    };
    let answer = client.get(path).await?;
    let list = answer.as_array().cloned().unwrap_or_default();
    if args.output == Output::Json {
        let out = match args.kind {
            Kind::Instances => Value::Array(
                list.iter()
                    .flat_map(|s| {
                        let id = str_of(s, "microserviceID");
                        instances(s).into_iter().map(move |mut i| {
                            if let Some(o) = i.as_object_mut() {
                                o.insert("microserviceID".into(), Value::String(id.clone()));
                            }
                            i
                        })
                    })
                    .collect(),
            ),
            _ => answer,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let table = match args.kind {
        Kind::Apps => {
            let mut t = Table::new(&["ID", "NAMESPACE", "NAME", "SERVICES", "OWNER"]);
            for a in &list {
                let n = a
                    .get("microservices")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                t.row(vec![
                    str_of(a, "applicationID"),
                    str_of(a, "application_namespace"),
                    str_of(a, "application_name"),
                    n.to_string(),
                    str_of(a, "userId"),
                ]);
            }
            t
        }
        Kind::Services => {
            let mut t = Table::new(&[
                "ID", "APP", "NAME", "TYPE", "STATUS", "RUNNING", "ADDRESS", "CODE",
            ]);
            for s in &list {
                let inst = instances(s);
                let running = inst
                    .iter()
                    .filter(|i| str_of(i, "status") == InstanceStatus::Running.as_str())
                    .count();
                t.row(vec![
                    str_of(s, "microserviceID"),
                    str_of(s, "app_name"),
                    str_of(s, "service_name"),
                    str_of(s, "virtualization"),
                    str_of(s, "status"),
                    format!("{running}/{}", inst.len()),
                    str_of(s, "RR_ip"),
                    str_of(s, "image"),
                ]);
            }
            t
        }
        Kind::Instances => {
            let mut t = Table::new(&[
                "SERVICE", "#", "STATUS", "WORKER", "ADDRESS", "CPU%", "MEM(MB)", "DETAIL",
            ]);
            for s in &list {
                let label = format!("{}.{}", str_of(s, "app_name"), str_of(s, "service_name"));
                for i in instances(s) {
                    t.row(vec![
                        label.clone(),
                        num_of(&i, "instance_number"),
                        str_of(&i, "status"),
                        str_of(&i, "worker_id"),
                        str_of(&i, "instance_ip"),
                        format!("{:.1}", float_of(&i, "cpu_percent")),
                        num_of(&i, "memory"),
                        str_of(&i, "status_detail"),
                    ]);
                }
            }
            t
        }
        Kind::Clusters => {
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
            for c in &list {
                t.row(vec![
                    str_of(c, "_id.$oid"),
                    str_of(c, "cluster_name"),
                    c.get("active")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                    num_of(c, "active_nodes"),
                    format!("{:.1}", float_of(c, "cpu_percent")),
                    format!("{:.1}", float_of(c, "memory_percent")),
                    num_of(c, "vcpus"),
                    num_of(c, "memory"),
                ]);
            }
            t
        }
        Kind::Nodes => {
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
            for n in &list {
                let runtimes: Vec<String> = n
                    .get("virtualizations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect();
                t.row(vec![
                    str_of(n, "node_id"),
                    str_of(n, "name"),
                    str_of(n, "cluster_name"),
                    n.get("active")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                    str_of(n, "architecture"),
                    runtimes.join(","),
                    format!("{:.1}", float_of(n, "cpu_percent")),
                    format!("{:.1}", float_of(n, "memory_percent")),
                    num_of(n, "instances"),
                ]);
            }
            t
        }
    };
    print!("{}", table.render());
    Ok(())
}

pub async fn logs(client: &mut Client, args: LogsArgs) -> Result<()> {
    let id = resolve_service(client, &args.service).await?;
    let mut shown = String::new();
    loop {
        let svc = client.get(&format!("/api/service/{id}")).await?;
        let list = instances(&svc);
        let inst = match args.instance {
            Some(n) => list
                .iter()
                .find(|i| i.get("instance_number").and_then(Value::as_u64) == Some(n.into()))
                .ok_or_else(|| anyhow!("service {} has no instance {n}", args.service))?,
            None => list
                .iter()
                .min_by_key(|i| i.get("instance_number").and_then(Value::as_u64))
                .ok_or_else(|| anyhow!("service {} has no instance", args.service))?,
        };
        let text = str_of(inst, "logs");
        let new = unseen(&shown, &text);
        if !new.is_empty() {
            print!("{new}");
            std::io::stdout().flush().ok();
        }
        shown = text;
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The part of `now` (a log tail) not yet in `shown` (the previous tail): what follows the
/// longest end of `shown` that `now` starts with.
fn unseen<'a>(shown: &str, now: &'a str) -> &'a str {
    if shown.is_empty() {
        return now;
    }
    for (start, _) in shown.char_indices() {
        if let Some(rest) = now.strip_prefix(&shown[start..]) {
            return rest;
        }
    }
    now
}

pub async fn scale(client: &mut Client, args: ScaleArgs) -> Result<()> {
    let id = resolve_service(client, &args.service).await?;
    let svc = client.get(&format!("/api/service/{id}")).await?;
    let mut numbers: Vec<u64> = instances(&svc)
        .iter()
        .filter_map(|i| i.get("instance_number").and_then(Value::as_u64))
        .collect();
    numbers.sort_unstable();
    let have = numbers.len() as u32;
    if args.replicas > have {
        for _ in have..args.replicas {
            let a = client
                .post(&format!("/api/service/{id}/instance"), None)
                .await?;
            println!("instance {} requested", num_of(&a, "instance_number"));
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
            let apps = client.get("/api/applications").await?;
            let id = apps
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| str_of(a, "application_name") == args.id)
                .map_or_else(|| args.id.clone(), |a| str_of(a, "applicationID"));
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
async fn resolve_service(client: &mut Client, name: &str) -> Result<String> {
    let all = client.get("/api/services").await?;
    let list = all.as_array().cloned().unwrap_or_default();
    let mut by_rule: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for s in &list {
        let id = str_of(s, "microserviceID");
        let app_svc = format!("{}.{}", str_of(s, "app_name"), str_of(s, "service_name"));
        let rule = if id == name {
            0
        } else if str_of(s, "job_name") == name {
            1
        } else if app_svc == name {
            2
        } else if str_of(s, "service_name") == name {
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

fn instances(svc: &Value) -> Vec<Value> {
    svc.get("instance_list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A field as text; `a.b` looks into objects.
fn str_of(v: &Value, path: &str) -> String {
    let mut cur = v;
    for key in path.split('.') {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn num_of(v: &Value, key: &str) -> String {
    v.get(key).map(|n| n.to_string()).unwrap_or_default()
}

fn float_of(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followed_logs_print_only_what_is_new() {
        assert_eq!(unseen("", "a\nb\n"), "a\nb\n");
        assert_eq!(unseen("a\nb\n", "a\nb\nc\n"), "c\n");
        // The tail window moved: the old start is gone.
        assert_eq!(unseen("a\nb\nc\n", "b\nc\nd\n"), "d\n");
        assert_eq!(unseen("a\n", "a\n"), "");
        assert_eq!(unseen("xyz", "new"), "new");
    }

    #[test]
    fn nested_fields_read_as_text() {
        let v = serde_json::json!({"_id": {"$oid": "abc"}, "n": 3, "s": "x"});
        assert_eq!(str_of(&v, "_id.$oid"), "abc");
        assert_eq!(str_of(&v, "n"), "3");
        assert_eq!(str_of(&v, "missing"), "");
    }
}
