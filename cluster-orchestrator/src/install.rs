//! The worker installer on the cluster's API port: `GET /install.sh` (the script, with this
//! cluster's address as the client reached it), `GET /install/SHA256SUMS`,
//! `GET /install/node-engine-<arch>` and `GET /install/net-manager-<arch>` (from
//! `--install-dir`) and `GET /install/check-token` (the script's check of the node token
//! before it installs anything).
//!
//! A binary for an architecture is `<component>-<arch>` in the directory (`uname -m` names:
//! `x86_64`, `aarch64`, …), or the plain `<component>`, which is this machine's own
//! architecture.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The script, with `@CANOPY_CLUSTER_ADDR@` where the cluster's address goes.
pub const SCRIPT: &str = include_str!("../install/install.sh");
const PLACEHOLDER: &str = "@CANOPY_CLUSTER_ADDR@";
/// The binaries a worker installs: its node engine and its net manager.
pub const NODE_ENGINE: &str = "node-engine";
pub const NET_MANAGER: &str = "net-manager";
pub const COMPONENTS: [&str; 2] = [NODE_ENGINE, NET_MANAGER];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("Host header {0:?}: expected HOST[:PORT] (letters, digits, '.', '-', ':', '[', ']')")]
    BadHost(String),
    #[error("no Host header: the script needs the address this cluster was reached at")]
    NoHost,
}

/// `uname -m`'s name for the architecture this binary was built for.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "arm" => "armv7l",
        "x86" => "i686",
        other => other,
    }
}

/// The name a file in the install directory is served as (`<component>-<arch>`), if it is a
/// worker binary: `<component>-<arch>`, or the plain `<component>` for this machine's own
/// architecture.
pub fn served_as(file_name: &str, host: &str) -> Option<String> {
    COMPONENTS.iter().find_map(|c| {
        if file_name == *c {
            return Some(format!("{c}-{host}"));
        }
        let arch = file_name.strip_prefix(c)?.strip_prefix('-')?;
        let plain = !arch.is_empty()
            && arch
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        plain.then(|| format!("{c}-{arch}"))
    })
}

/// The worker binaries in a directory listing: served name → file name (a `<component>-<arch>`
/// file wins over the plain `<component>` for the same architecture).
pub fn binaries<'a>(
    file_names: impl IntoIterator<Item = &'a str>,
    host: &str,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in file_names {
        if let Some(served) = served_as(name, host) {
            let specific = !COMPONENTS.contains(&name);
            if specific || !out.contains_key(&served) {
                out.insert(served, name.to_owned());
            }
        }
    }
    out
}

/// The script for a client that reached this cluster with `Host: host`.
pub fn script_for(host: Option<&str>) -> Result<String, InstallError> {
    let host = host.ok_or(InstallError::NoHost)?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !ok {
        return Err(InstallError::BadHost(host.to_owned()));
    }
    Ok(SCRIPT.replace(PLACEHOLDER, host))
}

/// `sha256sum`'s format, one line per served binary (`node-engine-<arch>`, `net-manager-<arch>`).
pub fn sums_text(sums: &BTreeMap<String, String>) -> String {
    sums.iter()
        .map(|(served, hex)| format!("{hex}  {served}\n"))
        .collect()
}

#[derive(Clone)]
pub struct Installer {
    pub dir: Arc<PathBuf>,
    pub node_token: Arc<String>,
}

impl Installer {
    fn listing(&self) -> std::io::Result<BTreeMap<String, String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            if entry.file_type()?.is_file() || entry.path().is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(binaries(names.iter().map(String::as_str), host_arch()))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

fn unavailable(dir: &std::path::Path, e: std::io::Error) -> Response {
    tracing::warn!(dir = %dir.display(), error = %e, "install directory unreadable");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the cluster's install directory {} cannot be read: {e}",
            dir.display()
        ),
    )
}

async fn script(headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match script_for(host) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/x-shellscript")], text).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn sums(State(s): State<Installer>) -> Response {
    let result = tokio::task::spawn_blocking(move || {
        let listing = s.listing().map_err(|e| (s.dir.clone(), e))?;
        let mut sums = BTreeMap::new();
        for (served, name) in listing {
            let bytes = std::fs::read(s.dir.join(&name)).map_err(|e| (s.dir.clone(), e))?;
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
            sums.insert(served, hex::encode(digest));
        }
        Ok::<_, (Arc<PathBuf>, std::io::Error)>(sums)
    })
    .await;
    match result {
        Ok(Ok(sums)) => ([(header::CONTENT_TYPE, "text/plain")], sums_text(&sums)).into_response(),
        Ok(Err((dir, e))) => unavailable(&dir, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn binary(State(s): State<Installer>, Path(file): Path<String>) -> Response {
    let Some(component) = COMPONENTS
        .iter()
        .find(|c| file.strip_prefix(**c).is_some_and(|r| r.starts_with('-')))
    else {
        return error(StatusCode::NOT_FOUND, format!("no such file {file:?}"));
    };
    let listing = match s.listing() {
        Ok(l) => l,
        Err(e) => return unavailable(&s.dir, e),
    };
    let Some(name) = listing.get(&file) else {
        let have: Vec<&str> = listing
            .keys()
            .filter_map(|k| k.strip_prefix(component)?.strip_prefix('-'))
            .collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no {file:?} here (this cluster has {component} for: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ),
        );
    };
    match tokio::fs::read(s.dir.join(name)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => unavailable(&s.dir, e),
    }
}

async fn check_token(State(s): State<Installer>, headers: HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    match given {
        Some(t) if canopy_store::secrets::constant_time_eq(t, &s.node_token) => {
            StatusCode::NO_CONTENT.into_response()
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong node join token"),
        None => error(
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <node join token> is required",
        ),
    }
}

pub fn router(installer: Installer) -> Router {
    Router::new()
        .route("/install.sh", get(script))
        .route("/install/SHA256SUMS", get(sums))
        .route("/install/check-token", get(check_token))
        .route("/install/{file}", get(binary))
        .with_state(installer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_come_from_file_names() {
        let a = |f: &str| served_as(f, "x86_64");
        assert_eq!(a("node-engine").as_deref(), Some("node-engine-x86_64"));
        assert_eq!(
            a("node-engine-aarch64").as_deref(),
            Some("node-engine-aarch64")
        );
        assert_eq!(a("net-manager").as_deref(), Some("net-manager-x86_64"));
        assert_eq!(
            a("net-manager-aarch64").as_deref(),
            Some("net-manager-aarch64")
        );
        for other in [
            "node-engine-",
            "node-engine.d",
            "node-engine-a/b",
            "cluster",
            "node-engines",
            "net-managers",
        ] {
            assert_eq!(a(other), None, "{other}");
        }
        let found = binaries(
            [
                "node-engine-x86_64",
                "node-engine",
                "node-engine-aarch64",
                "net-manager",
                "root",
            ],
            "x86_64",
        );
        assert_eq!(
            found.get("node-engine-x86_64").map(String::as_str),
            Some("node-engine-x86_64")
        );
        assert_eq!(
            found.get("net-manager-x86_64").map(String::as_str),
            Some("net-manager")
        );
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn the_script_carries_the_address_it_was_fetched_from() {
        let s = script_for(Some("10.0.0.2:10100")).expect("a script");
        assert!(
            s.contains("CLUSTER='10.0.0.2:10100'"),
            "placeholder not replaced"
        );
        assert!(!s.contains(PLACEHOLDER));
        assert!(s.starts_with("#!/bin/sh"));
        for bad in ["a'b", "h;rm", "", "x y", "$(id)"] {
            assert!(
                matches!(script_for(Some(bad)), Err(InstallError::BadHost(_))),
                "{bad}"
            );
        }
        assert!(matches!(script_for(None), Err(InstallError::NoHost)));
    }

    #[test]
    fn sums_are_in_sha256sum_format() {
        let sums = BTreeMap::from([("node-engine-x86_64".to_owned(), "ab".repeat(32))]);
        assert_eq!(
            sums_text(&sums),
            format!("{}  node-engine-x86_64\n", "ab".repeat(32))
        );
    }
}
