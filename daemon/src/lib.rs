//! What every Canopy daemon shares, so each `main.rs` and server stays thin:
//!
//! - [`init_logging`]: tracing to stderr with an `EnvFilter`;
//! - [`allocator`]: large blocks handed back to the system when freed;
//! - [`shutdown_signal`]: SIGINT or SIGTERM;
//! - [`Stopper`]: one shutdown future fanned out to every task of a server;
//! - [`every`]: a periodic loop that ends with the shutdown;
//! - [`metrics`]: label sets and the Prometheus text exposition;
//! - [`json_body`]: JSON request bodies decoded with the path of the field at fault;
//! - [`join_token`]: a join token from configuration or its file under the data directory;
//! - [`config`]: layered settings — defaults, a TOML file, the environment, flags.

pub mod allocator;
pub mod config;

use serde::de::DeserializeOwned;
use std::future::Future;

/// Logs to stderr with `filter` (tracing `EnvFilter` syntax; `info` if it does not parse).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A join token: `given` (flag or environment) if set, else `<data_dir>/<file>`, else a new one
/// written to that file (and announced in the log once).
pub fn join_token(
    given: Option<&str>,
    data_dir: &std::path::Path,
    file: &str,
) -> std::io::Result<String> {
    use canopy_store::secrets::{SecretSource, file_secret};
    let path = data_dir.join(file);
    let (token, source) = file_secret(given, &path)?;
    if source == SecretSource::Generated {
        tracing::info!(file = %path.display(), "generated a join token");
    }
    Ok(token)
}

/// A daemon's exit: success, or the error logged as why `component` stopped.
pub fn exit_code<E: std::fmt::Display>(
    component: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{component} stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Turns one shutdown future into as many "stopped" futures as a server's tasks need.
#[derive(Clone)]
pub struct Stopper {
    rx: tokio::sync::watch::Receiver<()>,
}

impl Stopper {
    /// Watches `shutdown` (on a task of its own).
    pub fn new(shutdown: impl Future<Output = ()> + Send + 'static) -> Stopper {
        let (tx, rx) = tokio::sync::watch::channel(());
        tokio::spawn(async move {
            shutdown.await;
            drop(tx);
        });
        Stopper { rx }
    }

    /// Resolves once shutdown has begun.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    }

    /// A receiver that reports closed once shutdown has begun.
    pub fn receiver(&self) -> tokio::sync::watch::Receiver<()> {
        self.rx.clone()
    }
}

/// Runs `work` every `period` (the first time at once) until `shutdown` resolves. A run that
/// takes longer than the period delays the next one rather than bunching them. The one
/// periodic loop of every daemon (the control planes' ticks, the engine's checks).
pub async fn every<F, Fut>(
    period: std::time::Duration,
    shutdown: impl Future<Output = ()>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => work().await,
        }
    }
}

/// Prometheus helpers.
pub mod metrics {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    /// A label set as name/value pairs.
    pub type Labels = Vec<(String, String)>;

    /// The `Content-Type` of [`render`]'s output.
    pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Sets one gauge per value of `label`.
    pub fn set_gauges<'a>(
        family: &Family<Labels, Gauge>,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, i64)>,
    ) {
        for (value, n) in values {
            family.get_or_create(&labels(&[(label, value)])).set(n);
        }
    }

    /// Sets one gauge per instance status (every status, zero when absent).
    pub fn set_status_gauges(
        family: &Family<Labels, Gauge>,
        by_status: &std::collections::BTreeMap<canopy_core::InstanceStatus, i64>,
    ) {
        let counts = canopy_core::InstanceStatus::ALL
            .iter()
            .map(|s| (s.as_str(), by_status.get(s).copied().unwrap_or(0)));
        set_gauges(family, "status", counts);
    }

    /// The text exposition of `registry`.
    pub fn render(registry: &Registry) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A JSON body that does not decode: the field at fault (`body` for the whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub field: String,
    pub message: String,
}

/// Decodes a JSON request body, naming the field at fault.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_owned()
        } else {
            path
        };
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        BodyError { field, message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Login {
        username: String,
        password: String,
        nested: Option<Vec<u8>>,
    }

    #[test]
    fn bodies_name_the_field() {
        let e = json_body::<Login>(br#"{"username": 5, "password": "x"}"#).unwrap_err();
        assert_eq!(e.field, "username");
        let e = json_body::<Login>(br#"{"username": "a", "password": "x", "nested": [1, "2"]}"#)
            .unwrap_err();
        assert_eq!(e.field, "nested[1]");
        let e = json_body::<Login>(b"{oops").unwrap_err();
        assert_eq!(e.field, "body");
        assert!(e.message.starts_with("not valid JSON"), "{}", e.message);
        assert!(json_body::<Login>(br#"{"username": "a", "password": "x"}"#).is_ok());
    }

    #[tokio::test]
    async fn every_stopped_future_resolves_after_shutdown() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopper = Stopper::new(async {
            let _ = rx.await;
        });
        let (a, b) = (stopper.stopped(), stopper.stopped());
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), stopper.stopped()).await;
        assert!(early.is_err(), "stopped before shutdown");
        tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), async {
            tokio::join!(a, b)
        })
        .await
        .unwrap();
    }
}
