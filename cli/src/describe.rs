//! `canopy describe service SERVICE`: one service, its instances, and what was done to it
//! (its events: when, what, why, how it ended).

use crate::client::Client;
use crate::commands::resolve_service;
use crate::table::Table;
use anyhow::Result;
use canopy_api::{ServiceEvent, ServiceView};
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

/// The service, its instances and its events as text.
pub fn render(s: &ServiceView, events: &[ServiceEvent]) -> String {
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
    let mut t = Table::new(&["INSTANCE", "STATUS", "WORKER", "ADDRESS", "DETAIL"]);
    for i in &s.instance_list {
        t.row(vec![
            i.instance_number.to_string(),
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
            let events: Vec<ServiceEvent> =
                client.get(&format!("/api/service/{id}/events")).await?;
            print!("{}", render(&s, &events));
        }
    }
    Ok(())
}
