//! `root-orchestrator`: thin binary over the `root_orchestrator` library.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = root_orchestrator::COMPONENT, version, about = "Root orchestrator: Oakestra-compatible REST API, auth, root scheduler, cluster link server, service IPs.")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "{} is not implemented yet (root orchestrator issue)",
        root_orchestrator::COMPONENT
    );
    ExitCode::from(2)
}
