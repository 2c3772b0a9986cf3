//! `cluster-orchestrator`: thin binary over the `cluster_orchestrator` library.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = cluster_orchestrator::COMPONENT, version, about = "Cluster orchestrator: root link, MQTT broker and worker protocol, cluster scheduler, failure handling.")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "{} is not implemented yet (cluster orchestrator issue)",
        cluster_orchestrator::COMPONENT
    );
    ExitCode::from(2)
}
