//! `canopy`: the command-line client. Subcommands live in their own modules; `main` only parses
//! arguments and maps the outcome to an exit code.
//!
//! - [`sla`]: offline SLA checks;
//! - [`commands`] over [`client`]: login, get, logs, scale, delete against a root's API;
//! - [`apply`]: declarative apply and `diff` (what a file changes), `rollout status`;
//! - [`up`]: a whole Canopy on this machine;
//! - [`doctor`]: whether this machine can run a worker, a cluster or a root.

mod apply;
mod client;
mod commands;
mod compose;
mod describe;
mod doctor;
mod events;
mod operations;
mod quota;
mod sla;
mod table;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "canopy",
    version,
    about = "Canopy: a hierarchical edge orchestrator"
)]
struct Cli {
    /// The root's API; default: the last one logged in to (or started by `canopy up`), else
    /// http://127.0.0.1:10000.
    #[arg(long, global = true, env = "CANOPY_API")]
    api: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with SLA (deployment descriptor) files.
    #[command(subcommand)]
    Sla(sla::SlaCommand),
    /// Print the SLA a docker-compose file becomes (unmapped keys as warnings on stderr).
    Convert(ConvertArgs),
    /// Start a root, a cluster and node engines on this machine; Ctrl-C stops them all.
    Up(up::UpArgs),
    /// Log in to a root; the tokens are kept in the user's config directory.
    Login(commands::LoginArgs),
    /// Make the root hold what an SLA (or compose) file says: new applications and services
    /// are created with one instance each, changed services updated in place (a rolling
    /// update), unchanged ones left alone; --prune deletes services the file no longer has.
    Apply(commands::ApplyArgs),
    /// Show what `apply` would do with a file (exit status 1 when it would change something).
    Diff(DiffArgs),
    /// Follow a service's rolling update until it is complete (or rolled back: exit 1).
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// List apps, services, instances, clusters or nodes.
    Get(commands::GetArgs),
    /// Show a service, its instances and its events (what was done, why, how it ended).
    Describe(describe::DescribeArgs),
    /// Print every change (applications, services, instances, clusters) as it happens.
    Events(events::EventsArgs),
    /// Print a service instance's recent output.
    Logs(commands::LogsArgs),
    /// Set the number of instances of a service.
    Scale(commands::ScaleArgs),
    /// Delete an application or a service (and undeploy its instances).
    Delete(commands::DeleteArgs),
    /// Show a user's quota and usage; with flags (admins), change it.
    Quota(quota::QuotaArgs),
    /// Stop a service's instances (or one): they stay stopped, on no worker, until started.
    Stop(operations::OperationArgs),
    /// Start stopped instances of a service (or one).
    Start(operations::OperationArgs),
    /// Restart a service's instances (or one): each is removed and deployed anew.
    Restart(operations::OperationArgs),
    /// Check this machine: containerd, runc, cgroups, kvm, the overlay's kernel modules,
    /// ports, the clock, reachability of a cluster or root. Exits non-zero on a failure.
    Doctor(doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Sla(cmd) => return sla::run(cmd),
        Command::Convert(a) => return convert(&a),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let command = match command {
            Command::Up(args) => return up::run(args).await.map(|()| None),
            Command::Doctor(args) => return doctor::run(args).await.map(|()| None),
            other => other,
        };
        let mut client = client::Client::new(cli.api.as_deref())?;
        match command {
            Command::Login(a) => commands::login(&mut client, a).await,
            Command::Apply(a) => apply::apply(&mut client, a).await,
            Command::Diff(a) => match apply::diff(&mut client, &a.file, a.prune).await {
                Ok(true) => return Ok(Some(ExitCode::from(1))),
                other => other.map(drop),
            },
            Command::Rollout(RolloutCommand::Status(a)) => {
                apply::rollout_status(&mut client, &a.service, a.timeout).await
            }
            Command::Get(a) => commands::get(&mut client, a).await,
            Command::Logs(a) => commands::logs(&mut client, a).await,
            Command::Scale(a) => commands::scale(&mut client, a).await,
            Command::Delete(a) => commands::delete(&mut client, a).await,
            Command::Quota(a) => quota::run(&mut client, a).await,
            Command::Describe(a) => describe::run(&mut client, a).await,
            Command::Events(a) => events::run(&mut client, a).await,
            Command::Stop(a) => operations::run(&mut client, "stop", a).await,
            Command::Start(a) => operations::run(&mut client, "start", a).await,
            Command::Restart(a) => operations::run(&mut client, "restart", a).await,
            Command::Sla(_) | Command::Convert(_) | Command::Up(_) | Command::Doctor(_) => Ok(()),
        }
        .map(|()| None)
    });
    match result {
        Ok(Some(code)) => code,
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct DiffArgs {
    /// An SLA file, or a docker-compose file.
    file: std::path::PathBuf,
    /// Also show the services `apply --prune` would delete.
    #[arg(long)]
    prune: bool,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Wait for the service's rolling update to end, showing its progress.
    Status(RolloutArgs),
}

#[derive(clap::Args)]
struct RolloutArgs {
    /// Service id or name (`service`, or `app.service`).
    service: String,
    /// How long to wait, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// A docker-compose file.
    file: std::path::PathBuf,
}

fn convert(a: &ConvertArgs) -> ExitCode {
    match commands::read_deployment(&a.file) {
        Ok((sla, replicas)) => {
            println!("{}", serde_json::to_string_pretty(&sla).unwrap_or_default());
            for (service, n) in replicas.iter().filter(|(_, n)| **n != 1) {
                eprintln!("note: `canopy apply` asks for {n} instances of {service}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
