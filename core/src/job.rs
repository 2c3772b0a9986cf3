//! The job model: what a service is once its SLA has been accepted. A [`ServiceSpec`] is what the
//! root hands to a cluster and a cluster to a worker; everything in it has been checked.

use crate::naming::JobName;
use crate::probe::Probe;
use crate::resources::{Architecture, Resources, Virtualization};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// UDP port of the worker-to-worker tunnel; no service may publish it on the host.
pub const TUNNEL_PORT: u16 = 50103;

/// A checked, deployable service description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub job_name: JobName,
    pub virtualization: Virtualization,
    /// Image reference, archive path, module URL/path or kernel URLs, by virtualization.
    pub code: String,
    /// Replaces the image's command (containers), module args (wasm), kernel args (unikernels).
    pub cmd: Vec<String>,
    pub environment: Vec<EnvVar>,
    pub resources: Resources,
    pub ports: Vec<PortMapping>,
    /// Exit code 0 ends the instance as `COMPLETED` instead of restarting it.
    pub one_shot: bool,
    pub privileged: bool,
    /// Architectures the code is built for (unikernels: one kernel URL per entry).
    pub architectures: Vec<Architecture>,
    pub constraints: Vec<Constraint>,
    /// User-pinned round-robin service address.
    pub rr_ip: Option<Ipv4Addr>,
    pub rr_ip_v6: Option<Ipv6Addr>,
    /// User-pinned closest-instance service address (`addresses.closest_ip`): reaches the
    /// RUNNING instance nearest the caller.
    #[serde(default)]
    pub closest_ip: Option<Ipv4Addr>,
    /// Until it passes, an instance is not ready: out of its service IP's table and not
    /// counted by a rolling update (`None`: ready once running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// When it fails, the instance is stopped and reported `FAILED` (the cluster restarts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
}

impl ServiceSpec {
    /// A spec with no command, environment, resources, ports or constraints; fill in the rest.
    pub fn new(job_name: JobName, virtualization: Virtualization, code: impl Into<String>) -> Self {
        ServiceSpec {
            job_name,
            virtualization,
            code: code.into(),
            cmd: Vec::new(),
            environment: Vec::new(),
            resources: Resources::ZERO,
            ports: Vec::new(),
            one_shot: false,
            privileged: false,
            architectures: Vec::new(),
            constraints: Vec::new(),
            rr_ip: None,
            rr_ip_v6: None,
            closest_ip: None,
            readiness_probe: None,
            liveness_probe: None,
        }
    }
}

/// A placement constraint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Constraint {
    /// Place on this cluster and/or these nodes.
    Direct {
        cluster: Option<String>,
        nodes: Vec<String>,
    },
    /// Place only on one of these clusters.
    Clusters { allowed: Vec<String> },
    /// Place on a cluster whose location lies within `radius_km` of `location`.
    Geo { location: GeoPoint, radius_km: f64 },
    /// Keep latency to `area` under `threshold_ms`.
    Latency { area: String, threshold_ms: f64 },
    /// Place only where these addons are available.
    Addons { needs: Vec<String> },
}

/// A point on Earth in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    /// Parses `"LAT,LON"`, with latitude in [-90, 90] and longitude in [-180, 180].
    pub fn parse(s: &str) -> Result<Self, String> {
        let (lat, lon) = s
            .split_once(',')
            .ok_or_else(|| format!("{s:?} must be \"LAT,LON\""))?;
        let lat: f64 = lat
            .trim()
            .parse()
            .map_err(|_| format!("latitude {lat:?} is not a number"))?;
        let lon: f64 = lon
            .trim()
            .parse()
            .map_err(|_| format!("longitude {lon:?} is not a number"))?;
        if !(-90.0..=90.0).contains(&lat) {
            return Err(format!("latitude {lat} must be within -90..90"));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(format!("longitude {lon} must be within -180..180"));
        }
        Ok(GeoPoint { lat, lon })
    }

    /// Great-circle distance in kilometres (haversine, mean Earth radius).
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
    }
}

/// One `KEY=VALUE` environment entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
}

impl EnvVar {
    /// Parses `KEY=VALUE`: the key is non-empty, has no whitespace, and does not start with a digit.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} must be KEY=VALUE"))?;
        if key.is_empty() {
            return Err(format!("{s:?} has an empty key"));
        }
        if key.starts_with(|c: char| c.is_ascii_digit())
            || key.chars().any(|c| c.is_whitespace() || c == '\0')
        {
            return Err(format!(
                "key {key:?} must not start with a digit or contain whitespace"
            ));
        }
        if value.contains('\0') {
            return Err(format!("value of {key:?} contains a NUL byte"));
        }
        Ok(EnvVar {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One published port: traffic to `host` on the worker goes to `container` in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Parses Oakestra's port syntax: entries `HOST[:CONTAINER][/tcp|/udp]` joined by `;`.
    /// An empty string means no published ports.
    pub fn parse_list(s: &str) -> Result<Vec<PortMapping>, String> {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        s.split(';').map(PortMapping::parse_one).collect()
    }

    fn parse_one(entry: &str) -> Result<PortMapping, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("empty entry between ';' (syntax: HOST[:CONTAINER][/tcp|/udp];...)".into());
        }
        let (ports, protocol) = match e.split_once('/') {
            None => (e, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some((_, other)) => {
                return Err(format!("{entry:?}: protocol {other:?} must be tcp or udp"));
            }
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(format!(
                    "{entry:?}: port {p:?} must be a number from 1 to 65535"
                )),
            }
        };
        let (host, container) = match ports.split_once(':') {
            None => {
                let p = port(ports)?;
                (p, p)
            }
            Some((h, c)) => (port(h)?, port(c)?),
        };
        if host == TUNNEL_PORT {
            return Err(format!(
                "{entry:?}: host port {TUNNEL_PORT} is reserved for the overlay tunnel"
            ));
        }
        Ok(PortMapping {
            host,
            container,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}:{}/{}", self.host, self.container, proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_syntax() {
        assert_eq!(PortMapping::parse_list("").unwrap(), vec![]);
        let p = PortMapping::parse_list("80;6080:60/tcp;53:5353/udp").unwrap();
        assert_eq!(
            p,
            vec![
                PortMapping {
                    host: 80,
                    container: 80,
                    protocol: Protocol::Tcp
                },
                PortMapping {
                    host: 6080,
                    container: 60,
                    protocol: Protocol::Tcp
                },
                PortMapping {
                    host: 53,
                    container: 5353,
                    protocol: Protocol::Udp
                },
            ]
        );
        assert_eq!(p[1].to_string(), "6080:60/tcp");
        for bad in [
            "0", "65536", "80:", ":80", "80/sctp", "80;;81", "abc", "80:81:82", "50103", "-1",
        ] {
            assert!(PortMapping::parse_list(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_entries() {
        let e = EnvVar::parse("A_B=c=d").unwrap();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("A_B", "c=d"));
        assert_eq!(EnvVar::parse("EMPTY=").unwrap().value, "");
        for bad in ["NOVALUE", "=x", "1A=x", "A B=x"] {
            assert!(EnvVar::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn geo() {
        let munich = GeoPoint::parse("48.137,11.575").unwrap();
        let berlin = GeoPoint::parse(" 52.52, 13.405").unwrap();
        let d = munich.distance_km(&berlin);
        assert!((d - 504.0).abs() < 5.0, "{d}");
        assert!(GeoPoint::parse("91,0").is_err());
        assert!(GeoPoint::parse("x,0").is_err());
        assert!(GeoPoint::parse("48").is_err());
    }
}
