//! `canopy describe service SERVICE`: one service, its instances, and what was done to it
//! (its events: when, what, why, how it ended).

use crate::client::Client;
use crate::commands::resolve_service;
use crate::table::Table;
use anyhow::Result;
use canopy_api::{RolloutView, ServiceEvent, ServiceView};
use clap::{Args, ValueEnum};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Copy, ValueEnum)]
pub enum DescribeKind {
    #[value(alias = "services", alias = "svc")]
    Service,
}

#[derive(Args)]
pub struct DescribeArgs {
    pub kind: DescribeKind,
    /// Service id or name.
    pub name: String,
}

fn when(at: f64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0));
    httpdate::fmt_http_date(t)
}

/// The service, its latest rolling update, its instances and its events as text.
pub fn render(s: &ServiceView, rollout: &RolloutView, events: &[ServiceEvent]) -> String {
    let mut out = format!(
        "service {} ({})\n  status {}{}\n  image {}\n  rr_ip {}\n",
        s.job_name,
        s.microserviceID,
        s.status,
        if s.status_detail.is_empty() {
            String::new()
        } else {
            format!(": {}", s.status_detail)
        },
        s.image,
        s.RR_ip
    );
    out.push_str(&format!("  revision {}", rollout.revision));
    if rollout.state != "none" {
        out.push_str(&format!(
            " (update {}: {} of {} updated, {} old{})",
            rollout.state.replace('_', " "),
            rollout.updated,
            rollout.replicas,
            rollout.old,
            if rollout.reason.is_empty() {
                String::new()
            } else {
                format!("; {}", rollout.reason)
            }
        ));
    }
    out.push('\n');
    if let Some(a) = s.sla.get("autoscale") {
        out.push_str(&format!("  autoscale {a}\n"));
    }
    let mut t = Table::new(&[
        "INSTANCE", "REVISION", "STATUS", "WORKER", "ADDRESS", "DETAIL",
    ]);
    for i in &s.instance_list {
        t.row(vec![
            i.instance_number.to_string(),
            i.revision.to_string(),
            i.status.clone(),
            i.worker_id.clone().unwrap_or_default(),
            i.instance_ip.clone(),
            i.status_detail.clone(),
        ]);
    }
    out.push_str("\ninstances\n");
    out.push_str(&t.render());
    let mut t = Table::new(&["WHEN", "INSTANCE", "WHAT", "WHY", "OUTCOME"]);
    for e in events {
        t.row(vec![
            when(e.at),
            e.instance.map(|n| n.to_string()).unwrap_or_default(),
            e.what.clone(),
            e.why.clone(),
            e.outcome.clone(),
        ]);
    }
    out.push_str("\nevents (oldest first)\n");
    out.push_str(&t.render());
    out
}

pub async fn run(client: &mut Client, a: DescribeArgs) -> Result<()> {
    match a.kind {
        DescribeKind::Service => {
            let id = resolve_service(client, &a.name).await?;
            let s: ServiceView = client.get(&format!("/api/service/{id}")).await?;
            let rollout: RolloutView = client.get(&format!("/api/service/{id}/rollout")).await?;
            let events: Vec<ServiceEvent> =
                client.get(&format!("/api/service/{id}/events")).await?;
            print!("{}", render(&s, &rollout, &events));
        }
    }
    Ok(())
}
