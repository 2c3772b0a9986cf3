//! The node engine's side of the net manager's local API (HTTP over its unix socket):
//!
//! - after registration, the worker's subnet (from the cluster) and LAN address go to the net
//!   manager (`PUT /node`), which builds the bridge and the tunnel;
//! - before a container starts, its instance gets a network namespace on the overlay (an
//!   address from the worker subnet, a veth to the bridge, a `resolv.conf` naming the net
//!   manager's resolver) and the container joins it; after the instance is deleted, that
//!   network is removed;
//! - the overlay view the cluster publishes on `nodes/<id>/net/view` is relayed as it is
//!   (`PUT /view`); the net manager holds no cluster credentials of its own.
//!
//! With `--no-overlay` containers use the host's network.
//!
//! Unikernels and micro-VMs are on the overlay too: the QEMU runtime bridges the namespace's
//! `eth0` with the VM's tap and hands the guest the instance address (`runtime::qemu::net`).
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
    /// The resolver instances ask (the bridge's address).
    #[serde(default)]
    pub dns: Option<Ipv4Addr>,
    /// The `resolv.conf` written for the instance (naming `dns`).
    #[serde(skip)]
    pub resolv_conf: Option<PathBuf>,
}

/// The prefix length of a worker's subnet (the root plans /26s).
pub const SUBNET_PREFIX: u8 = 26;

impl Attached {
    /// The instance's gateway: the worker's bridge, the subnet's first address (the net
    /// manager answers it as `dns`; derived from the address when it does not).
    pub fn gateway(&self) -> Ipv4Addr {
        self.dns.unwrap_or_else(|| {
            let mask = u32::MAX << (32 - u32::from(SUBNET_PREFIX));
            Ipv4Addr::from((u32::from(self.address) & mask) + 1)
        })
    }

    /// The address, gateway and prefix a runtime needs (a VM's guest configures them).
    pub fn instance_net(&self) -> crate::runtime::InstanceNet {
        crate::runtime::InstanceNet {
            address: self.address,
            gateway: self.gateway(),
            prefix: SUBNET_PREFIX,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NetManager {
    http: reqwest::Client,
    socket: PathBuf,
    /// Instances' `resolv.conf` files.
    resolv_dir: PathBuf,
}

impl NetManager {
    pub fn new(socket: &Path, resolv_dir: &Path) -> Result<NetManager, OverlayError> {
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
            resolv_dir: resolv_dir.to_owned(),
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
        let mut a: Attached = r.json().await.map_err(|e| self.unreachable(e))?;
        if let Some(dns) = a.dns {
            let path = self.resolv_dir.join(format!("{name}.conf"));
            let text =
                format!("# written by the Canopy node engine for {name}\nnameserver {dns}\n");
            let written = tokio::fs::create_dir_all(&self.resolv_dir)
                .await
                .and(tokio::fs::write(&path, text).await);
            match written {
                Ok(()) => a.resolv_conf = Some(path),
                Err(e) => {
                    tracing::warn!(instance = name, error = %e, "cannot write the instance's resolv.conf; it uses the host's")
                }
            }
        }
        Ok(a)
    }

    /// Tells the net manager this worker's subnet and LAN address (idempotent).
    pub async fn configure(
        &self,
        subnet: Ipv4Addr,
        underlay: Ipv4Addr,
    ) -> Result<(), OverlayError> {
        let body = serde_json::json!({ "subnet": subnet, "underlay": underlay });
        self.send(self.http.put("http://net-manager/node").json(&body))
            .await
    }

    /// Hands the net manager the overlay view the cluster published (its `PUT /view` body).
    pub async fn apply_view(&self, view: Vec<u8>) -> Result<(), OverlayError> {
        let req = self
            .http
            .put("http://net-manager/view")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(view);
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<(), OverlayError> {
        let r = req.send().await.map_err(|e| self.unreachable(e))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(Self::refused(r).await)
        }
    }

    /// Removes instance `name`'s network (idempotent).
    pub async fn detach(&self, name: &str) -> Result<(), OverlayError> {
        let _ = tokio::fs::remove_file(self.resolv_dir.join(format!("{name}.conf"))).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_bridge() {
        let mut a = Attached {
            address: "10.18.0.77".parse().unwrap(),
            netns: "/run/netns/x".into(),
            dns: None,
            resolv_conf: None,
        };
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 18, 0, 65));
        a.dns = Some(Ipv4Addr::new(10, 18, 0, 65));
        let n = a.instance_net();
        assert_eq!((n.gateway, n.prefix), (Ipv4Addr::new(10, 18, 0, 65), 26));
    }
}
