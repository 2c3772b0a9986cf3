//! `canopy`: the command-line client. Subcommands live in their own modules; `main` only parses
//! arguments and maps the outcome to an exit code.

mod sla;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "canopy",
    version,
    about = "Canopy: a hierarchical edge orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with SLA (deployment descriptor) files.
    #[command(subcommand)]
    Sla(sla::SlaCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sla(cmd) => sla::run(cmd),
    }
}
