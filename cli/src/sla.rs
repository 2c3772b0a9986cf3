//! `canopy sla ...`: offline checks of SLA files.

use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum SlaCommand {
    /// Check SLA files. Prints one line per problem as `FILE: PATH: MESSAGE`; exits 1 if any
    /// file is invalid. Unknown fields are accepted and printed as warnings on stderr.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of SLA v2.0.
    Schema,
}

pub fn run(cmd: SlaCommand) -> ExitCode {
    match cmd {
        SlaCommand::Validate { files } => validate(&files),
        SlaCommand::Schema => {
            print!("{}", canopy_sla::schema::schema_text());
            ExitCode::SUCCESS
        }
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut invalid = 0usize;
    for file in files {
        let name = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(out, "{name}: $: cannot read file: {e}");
                invalid += 1;
                continue;
            }
        };
        match canopy_sla::parse(&text) {
            Ok(v) => {
                for w in v.warnings {
                    eprintln!("{name}: {}: warning: {}", w.path, w.message);
                }
            }
            Err(e) => {
                invalid += 1;
                if let canopy_sla::SlaError::Invalid { warnings, .. } = &e {
                    for w in warnings {
                        eprintln!("{name}: {}: warning: {}", w.path, w.message);
                    }
                }
                for p in e.problems() {
                    let _ = writeln!(out, "{name}: {}: {}", p.path, p.message);
                }
            }
        }
    }
    eprintln!("{} of {} file(s) valid", files.len() - invalid, files.len());
    if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
