//! `net-manager`: thin binary over the `net_manager` library.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = net_manager::COMPONENT, version, about = "Net manager: bridge, veth, inter-node tunnel, service-IP translation with nftables.")]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!(
        "{} is not implemented yet (networking issue)",
        net_manager::COMPONENT
    );
    ExitCode::from(2)
}
