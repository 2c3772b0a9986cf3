//! Applying nftables scripts with the `nft` tool (Debian `nftables`), inside a namespace when
//! asked: the script is one transaction, so a table is replaced whole or not at all.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Run(std::io::Error),
    #[error("nft refused the table: {0}")]
    Refused(String),
}

/// Makes table `ip <table>` hold `t` (one transaction, see [`crate::nft::render`], also for
/// `only_from`).
pub fn translations(
    ns: Option<&Path>,
    table: &str,
    t: &crate::nft::Translations,
    published: &[crate::nft::Published],
    only_from: Option<&str>,
) -> Result<(), NftError> {
    nft(ns, &crate::nft::render(table, t, published, only_from))
}

/// Runs `nft -f -` with `script`, in the network namespace at `ns` when given (through
/// `nsenter --net`, so this process never changes namespace).
pub fn nft(ns: Option<&Path>, script: &str) -> Result<(), NftError> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Run)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(NftError::Run)?;
    }
    let out = child.wait_with_output().map_err(NftError::Run)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}
