//! Health probes of a service's instances: the domain side of the SLA's `readiness_probe` and
//! `liveness_probe` extension. The spec carries them to the workers, whose node engines run
//! them (`node-engine/src/probes.rs`); readiness travels back up with the job status.
//!
//! A probe is one check (an HTTP GET or a TCP connect to a port of the instance, or a command
//! run inside a container instance) repeated
//! every `period_secs`, each try bounded by `timeout_secs`. `failure_threshold` failures in a
//! row make it fail, `success_threshold` successes in a row make it pass again.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What one try of a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeCheck {
    /// `GET http://<instance>:<port><path>`; a 2xx or 3xx answer passes.
    Http { path: String, port: u16 },
    /// A TCP connection to `<instance>:<port>` is accepted.
    Tcp { port: u16 },
    /// `command` run inside the instance (containers) exits with status 0.
    Exec { command: Vec<String> },
}

/// One probe of a service's instances, every value filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub check: ProbeCheck,
    /// Seconds between tries (at least 1).
    pub period_secs: u32,
    /// Seconds one try may take (at least 1).
    pub timeout_secs: u32,
    /// Failures in a row that make the probe fail (at least 1).
    pub failure_threshold: u32,
    /// Successes in a row that make a failing probe pass (at least 1).
    pub success_threshold: u32,
    /// Seconds after the instance starts before the first try.
    pub initial_delay_secs: u32,
}

impl Probe {
    pub const DEFAULT_PERIOD_SECS: u32 = 5;
    pub const DEFAULT_TIMEOUT_SECS: u32 = 1;
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;

    /// A probe doing `check` with the default timing.
    pub fn new(check: ProbeCheck) -> Self {
        Probe {
            check,
            period_secs: Self::DEFAULT_PERIOD_SECS,
            timeout_secs: Self::DEFAULT_TIMEOUT_SECS,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            success_threshold: Self::DEFAULT_SUCCESS_THRESHOLD,
            initial_delay_secs: 0,
        }
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(self.period_secs.into())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.into())
    }

    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs(self.initial_delay_secs.into())
    }

    /// The first value that cannot be run, as `(field, message)` (for probes that arrive over
    /// a wire; SLAs are checked with their paths before they get here).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let at_least_one = [
            ("period_secs", self.period_secs),
            ("timeout_secs", self.timeout_secs),
            ("failure_threshold", self.failure_threshold),
            ("success_threshold", self.success_threshold),
        ];
        if let Some((field, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Some((field, "must be at least 1".to_owned()));
        }
        match &self.check {
            ProbeCheck::Http { port: 0, .. } => Some(("http.port", "must be 1-65535".into())),
            ProbeCheck::Tcp { port: 0 } => Some(("tcp.port", "must be 1-65535".into())),
            ProbeCheck::Exec { command } if command.is_empty() || command[0].is_empty() => {
                Some(("exec", "must name a command to run".into()))
            }
            ProbeCheck::Http { path, .. } if !valid_path(path) => Some((
                "http.path",
                format!("{path:?} must start with / and hold no spaces or control characters"),
            )),
            _ => None,
        }
    }
}

/// What a record from before probes says about readiness: ready.
pub fn ready_by_default() -> bool {
    true
}

/// An HTTP request path a probe can send as is: `/` first, no whitespace or control
/// characters.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/') && !path.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_field() {
        let http = |path: &str, port| {
            Probe::new(ProbeCheck::Http {
                path: path.into(),
                port,
            })
        };
        assert_eq!(http("/healthz", 80).problem(), None);
        assert_eq!(Probe::new(ProbeCheck::Tcp { port: 1 }).problem(), None);
        assert_eq!(http("/", 0).problem().unwrap().0, "http.port");
        let exec = |c: &[&str]| {
            Probe::new(ProbeCheck::Exec {
                command: c.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(exec(&["true"]).problem(), None);
        assert_eq!(exec(&[]).problem().unwrap().0, "exec");
        assert_eq!(exec(&[""]).problem().unwrap().0, "exec");
        assert_eq!(http("x", 80).problem().unwrap().0, "http.path");
        assert_eq!(http("/a b", 80).problem().unwrap().0, "http.path");
        assert_eq!(
            Probe::new(ProbeCheck::Tcp { port: 0 }).problem().unwrap().0,
            "tcp.port"
        );
        let mut p = http("/", 80);
        p.failure_threshold = 0;
        assert_eq!(p.problem().unwrap().0, "failure_threshold");
    }

    #[test]
    fn json_shape() {
        let p = Probe::new(ProbeCheck::Http {
            path: "/".into(),
            port: 80,
        });
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v["check"],
            serde_json::json!({"http": {"path": "/", "port": 80}})
        );
        assert_eq!(serde_json::from_value::<Probe>(v).unwrap(), p);
    }
}
