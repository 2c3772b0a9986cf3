//! `node-engine`: thin binary over the `node_engine` library.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = node_engine::COMPONENT, version, about = "Node engine: registration, MQTT, container and wasm runtimes, reports, logs, recovery.")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "{} is not implemented yet (node engine issue)",
        node_engine::COMPONENT
    );
    ExitCode::from(2)
}
