//! `canopy stop|start|restart SERVICE [--instance N]`: one instance, or every instance of the
//! service, through `POST /api/service/<id>/instance/<n>/<operation>`.

use crate::client::Client;
use crate::commands::resolve_service;
use anyhow::Result;
use canopy_api::{OperationView, ServiceView};
use clap::Args;

#[derive(Args)]
pub struct OperationArgs {
    /// Service id or name.
    pub service: String,
    /// Only this instance (default: every instance of the service).
    #[arg(long)]
    pub instance: Option<u32>,
}

/// `stop`, `start` or `restart` each instance `args` names; prints each one's status after.
pub async fn run(client: &mut Client, operation: &str, args: OperationArgs) -> Result<()> {
    let id = resolve_service(client, &args.service).await?;
    let numbers = match args.instance {
        Some(n) => vec![n],
        None => {
            let svc: ServiceView = client.get(&format!("/api/service/{id}")).await?;
            let mut all: Vec<u32> = svc
                .instance_list
                .iter()
                .map(|i| i.instance_number)
                .collect();
            all.sort_unstable();
            all
        }
    };
    if numbers.is_empty() {
        println!("{} has no instances", args.service);
    }
    for n in numbers {
        let v: OperationView = client
            .post(&format!("/api/service/{id}/instance/{n}/{operation}"), None)
            .await?;
        println!(
            "{} instance {}: {}",
            args.service, v.instance_number, v.status
        );
    }
    Ok(())
}
