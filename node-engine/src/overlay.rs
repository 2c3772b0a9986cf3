//! The node engine's side of the net manager's local API (HTTP over its unix socket): before
//! a container starts, its instance gets a network namespace on the worker's overlay (an
//! address from the worker subnet, a veth to the bridge) and the container joins it; after
//! the instance is deleted, that network is removed. Without a net manager
//! (`--net-manager-socket` not given) containers use the host's network.
//!
//! WebAssembly instances are not on the overlay: WASI preview 1 has no sockets.

use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("the net manager at {socket} is unreachable: {error}")]
    Unreachable { socket: String, error: String },
    #[error("the net manager refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// An instance's place on the overlay, as the net manager answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attached {
    pub address: Ipv4Addr,
    /// The network namespace the container joins.
    pub netns: PathBuf,
}

#[derive(Debug, Clone)]
pub struct NetManager {
    http: reqwest::Client,
    socket: PathBuf,
}

impl NetManager {
    pub fn new(socket: &Path) -> Result<NetManager, OverlayError> {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| OverlayError::Unreachable {
                socket: socket.display().to_string(),
                error: e.to_string(),
            })?;
        Ok(NetManager {
            http,
            socket: socket.to_owned(),
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> OverlayError {
        OverlayError::Unreachable {
            socket: self.socket.display().to_string(),
            error: e.to_string(),
        }
    }

    async fn refused(r: reqwest::Response) -> OverlayError {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        OverlayError::Refused {
            status,
            message: body["message"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        }
    }

    /// Attaches instance `name` with `ports` published on the worker (idempotent: the same
    /// name answers the same network).
    pub async fn attach(
        &self,
        name: &str,
        ports: &[canopy_core::job::PortMapping],
    ) -> Result<Attached, OverlayError> {
        let r = self
            .http
            .post("http://net-manager/instances")
            .json(&serde_json::json!({ "name": name, "ports": ports }))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !r.status().is_success() {
            return Err(Self::refused(r).await);
        }
        r.json().await.map_err(|e| self.unreachable(e))
    }

    /// Removes instance `name`'s network (idempotent).
    pub async fn detach(&self, name: &str) -> Result<(), OverlayError> {
        let r = self
            .http
            .delete(format!("http://net-manager/instances/{name}"))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(Self::refused(r).await)
        }
    }
}
