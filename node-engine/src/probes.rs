//! Health probes of one running instance (the SLA's `readiness_probe` and `liveness_probe`,
//! [`canopy_core::probe`]).
//!
//! - [`Tracker`] is the pure threshold rule: `failure_threshold` failures in a row turn a
//!   passing probe failing, `success_threshold` successes in a row turn a failing one
//!   passing. Readiness starts failing (not ready until it passes), liveness passing.
//! - [`watch`] runs both probes of an instance on tokio's clock (tests pause it): the first
//!   try after `initial_delay_secs`, then one every `period_secs`, each bounded by
//!   `timeout_secs`. Readiness changes go out on a watch channel; the future resolves only
//!   when liveness fails, with the detail the instance is reported `FAILED` with.
//! - [`Checker`] is the I/O at the edge: [`Network`] does an HTTP GET or a TCP connect.
//!
//! Where an instance answers: on the overlay at its overlay address, otherwise (containers
//! share the host's network) at 127.0.0.1; the port is the one the process listens on.

use async_trait::async_trait;
use canopy_core::probe::{Probe, ProbeCheck};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch as channel;

/// Whether a probe passes, and how many tries in a row agreed since the last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    failure_threshold: u32,
    success_threshold: u32,
    passing: bool,
    failures: u32,
    successes: u32,
}

impl Tracker {
    /// A readiness probe: not passing until it has passed `success_threshold` times.
    pub fn readiness(p: &Probe) -> Self {
        Self::starting(p, false)
    }

    /// A liveness probe: passing until it has failed `failure_threshold` times.
    pub fn liveness(p: &Probe) -> Self {
        Self::starting(p, true)
    }

    fn starting(p: &Probe, passing: bool) -> Self {
        Tracker {
            failure_threshold: p.failure_threshold.max(1),
            success_threshold: p.success_threshold.max(1),
            passing,
            failures: 0,
            successes: 0,
        }
    }

    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts one try; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.passing && self.successes >= self.success_threshold {
                self.passing = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.passing && self.failures >= self.failure_threshold {
                self.passing = false;
                return Some(false);
            }
        }
        None
    }
}

/// One try of a check against an instance at `host`.
#[async_trait]
pub trait Checker: Send + Sync {
    /// `Err` says what was tried and what went wrong
    /// (`GET http://10.18.0.2:80/ → connection refused`).
    async fn check(
        &self,
        check: &ProbeCheck,
        host: Ipv4Addr,
        timeout: Duration,
    ) -> Result<(), String>;
}

/// The probes of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
}

impl Probes {
    pub fn of(spec: &canopy_core::ServiceSpec) -> Self {
        Probes {
            readiness: spec.readiness_probe.clone(),
            liveness: spec.liveness_probe.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.readiness.is_none() && self.liveness.is_none()
    }
}

/// Runs the probes of an instance at `host` until liveness fails; readiness changes are
/// sent on `ready`. Resolves with the detail of the liveness failure
/// (`liveness probe failed 3 times: …`); without a liveness probe it never resolves.
pub async fn watch(
    probes: &Probes,
    host: Ipv4Addr,
    checker: &dyn Checker,
    ready: channel::Sender<bool>,
) -> String {
    let readiness = async {
        let Some(p) = &probes.readiness else {
            return std::future::pending().await;
        };
        let mut t = Tracker::readiness(p);
        tries(p, host, checker, |r| {
            if let Err(e) = r {
                tracing::debug!(%host, error = %e, "readiness probe failed");
            }
            if let Some(now) = t.observe(r.is_ok()) {
                tracing::info!(%host, ready = now, "readiness changed");
                let _ = ready.send(now);
            }
            None
        })
        .await
    };
    let liveness = async {
        let Some(p) = &probes.liveness else {
            return std::future::pending().await;
        };
        let mut t = Tracker::liveness(p);
        tries(p, host, checker, |r| {
            (t.observe(r.is_ok()) == Some(false)).then(|| {
                let last = r.as_ref().err().cloned().unwrap_or_default();
                format!("liveness probe failed {} times: {last}", t.failures())
            })
        })
        .await
    };
    tokio::select! {
        detail = liveness => detail,
        never = readiness => never,
    }
}

/// Tries `p` on its schedule, handing each result to `seen`, until `seen` returns a value.
async fn tries(
    p: &Probe,
    host: Ipv4Addr,
    checker: &dyn Checker,
    mut seen: impl FnMut(&Result<(), String>) -> Option<String>,
) -> String {
    let mut schedule = Tries::new(p);
    loop {
        schedule.next().await;
        let r = checker.check(&p.check, host, p.timeout()).await;
        if let Some(out) = seen(&r) {
            return out;
        }
    }
}

/// When the tries of a probe happen: after the initial delay, then every period (a try that
/// overruns its period is followed at once by the next).
struct Tries {
    first: Option<Duration>,
    interval: Option<tokio::time::Interval>,
    period: Duration,
}

impl Tries {
    fn new(p: &Probe) -> Self {
        Tries {
            first: Some(p.initial_delay()),
            interval: None,
            period: p.period().max(Duration::from_millis(100)),
        }
    }

    async fn next(&mut self) {
        if let Some(delay) = self.first.take() {
            tokio::time::sleep(delay).await;
            let mut i = tokio::time::interval(self.period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i.tick().await;
            self.interval = Some(i);
            return;
        }
        if let Some(i) = &mut self.interval {
            i.tick().await;
        }
    }
}

/// The checks of one instance: a command through the instance's runtime (exit status 0
/// passes), the others through `network`.
pub struct InstanceChecker<'a> {
    pub network: &'a dyn Checker,
    pub runtime: &'a dyn crate::runtime::Runtime,
    pub workload: &'a crate::runtime::Workload,
}

#[async_trait]
impl Checker for InstanceChecker<'_> {
    async fn check(
        &self,
        check: &ProbeCheck,
        host: Ipv4Addr,
        timeout: Duration,
    ) -> Result<(), String> {
        let ProbeCheck::Exec { command } = check else {
            return self.network.check(check, host, timeout).await;
        };
        let what = format!("exec {}", command.join(" "));
        match self.runtime.exec(self.workload, command, timeout).await {
            Ok(Some(0)) => Ok(()),
            Ok(Some(status)) => Err(format!("{what} → exit status {status}")),
            Ok(None) => Err(format!(
                "{what} → still running after {}s",
                timeout.as_secs()
            )),
            Err(e) => Err(format!("{what} → {e}")),
        }
    }
}

/// Probes over the network: an HTTP/1.1 GET (2xx or 3xx passes) or a TCP connect.
pub struct Network;

#[async_trait]
impl Checker for Network {
    async fn check(
        &self,
        check: &ProbeCheck,
        host: Ipv4Addr,
        timeout: Duration,
    ) -> Result<(), String> {
        let (what, r) = match check {
            ProbeCheck::Http { path, port } => (
                format!("GET http://{host}:{port}{path}"),
                tokio::time::timeout(timeout, http_get(host, *port, path)).await,
            ),
            ProbeCheck::Tcp { port } => (
                format!("TCP connect {host}:{port}"),
                tokio::time::timeout(timeout, async {
                    tokio::net::TcpStream::connect(SocketAddr::from((host, *port)))
                        .await
                        .map(drop)
                        .map_err(|e| io_reason(&e))
                })
                .await,
            ),
            ProbeCheck::Exec { command } => {
                return Err(format!(
                    "exec {} → a command runs through the instance's runtime, not the network",
                    command.join(" ")
                ));
            }
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{what} → {e}")),
            Err(_) => Err(format!("{what} → no answer within {}s", timeout.as_secs())),
        }
    }
}

/// A GET of `path`; `Err` names the status or the error.
async fn http_get(host: Ipv4Addr, port: u16, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(SocketAddr::from((host, port)))
        .await
        .map_err(|e| io_reason(&e))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: canopy-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;
    // The status line is all a probe needs.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    match status_code(&head) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None if head.is_empty() => Err("connection closed without an answer".into()),
        None => Err("not an HTTP answer".into()),
    }
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// An I/O error in a few words (`connection refused`), without the OS error number.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn probe(failure: u32, success: u32) -> Probe {
        Probe {
            failure_threshold: failure,
            success_threshold: success,
            ..Probe::new(ProbeCheck::Tcp { port: 80 })
        }
    }

    /// Feeds tries to a tracker; returns the verdict after each.
    fn run(mut t: Tracker, tries: &str) -> String {
        tries
            .chars()
            .map(|c| {
                t.observe(c == '+');
                if t.passing() { 'P' } else { 'f' }
            })
            .collect()
    }

    #[test]
    fn thresholds() {
        // (probe, start, tries) → verdict after each try ('+' ok, '-' failed)
        let cases = [
            (Tracker::liveness(&probe(3, 1)), "--+---", "PPPPPf"),
            (Tracker::liveness(&probe(1, 1)), "+-+", "PfP"),
            (Tracker::liveness(&probe(2, 2)), "--+-++", "PffffP"),
            (Tracker::liveness(&probe(2, 2)), "--++", "PffP"),
            (Tracker::readiness(&probe(3, 1)), "-+--+", "fPPPP"),
            (Tracker::readiness(&probe(3, 1)), "+---+", "PPPfP"),
            (Tracker::readiness(&probe(1, 3)), "++-+++", "fffffP"),
        ];
        for (t, tries, want) in cases {
            assert_eq!(run(t, tries), want, "{tries}");
        }
    }

    #[test]
    fn changes_are_reported_once() {
        let mut t = Tracker::readiness(&probe(2, 1));
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.failures(), 3);
    }

    /// Answers from a script, one per try, and records when each try came.
    struct Scripted {
        answers: Mutex<Vec<bool>>,
        at: Mutex<Vec<Duration>>,
        start: tokio::time::Instant,
    }

    #[async_trait]
    impl Checker for Scripted {
        async fn check(&self, _: &ProbeCheck, _: Ipv4Addr, _: Duration) -> Result<(), String> {
            self.at.lock().unwrap().push(self.start.elapsed());
            let mut a = self.answers.lock().unwrap();
            if a.is_empty() || a.remove(0) {
                Ok(())
            } else {
                Err("TCP connect 127.0.0.1:80 → connection refused".into())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_after_the_threshold_on_schedule() {
        let checker = Scripted {
            answers: Mutex::new(vec![true, false, false, true, false, false, false]),
            at: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        };
        let probes = Probes {
            readiness: None,
            liveness: Some(Probe {
                initial_delay_secs: 10,
                period_secs: 2,
                ..probe(3, 1)
            }),
        };
        let (tx, _rx) = channel::channel(true);
        let detail = watch(&probes, Ipv4Addr::LOCALHOST, &checker, tx).await;
        assert_eq!(
            detail,
            "liveness probe failed 3 times: TCP connect 127.0.0.1:80 → connection refused"
        );
        let at: Vec<u64> = checker
            .at
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(at, [10, 12, 14, 16, 18, 20, 22]);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_changes_are_sent() {
        let checker = Scripted {
            answers: Mutex::new(vec![false, true, true, false, false]),
            at: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        };
        let probes = Probes {
            readiness: Some(Probe {
                period_secs: 1,
                ..probe(2, 1)
            }),
            liveness: None,
        };
        let (tx, mut rx) = channel::channel(false);
        let watching = watch(&probes, Ipv4Addr::LOCALHOST, &checker, tx);
        tokio::pin!(watching);
        let mut seen = Vec::new();
        for _ in 0..2 {
            tokio::select! {
                _ = &mut watching => unreachable!("no liveness probe"),
                r = rx.changed() => { r.unwrap(); seen.push((*rx.borrow(), checker.start.elapsed().as_secs())); }
            }
        }
        // Ready at the second try (t = 1 s), not ready after two failures (t = 4 s).
        assert_eq!(seen, [(true, 1), (false, 4)]);
    }

    #[tokio::test]
    async fn network_checks_over_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let answer = if n == 0 { "200 OK" } else { "503 Unavailable" };
                n += 1;
                let _ = s
                    .write_all(format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = ProbeCheck::Http {
            path: "/ready".into(),
            port,
        };
        let t = Duration::from_secs(1);
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(Network.check(&http, lo, t).await, Ok(()));
        assert_eq!(
            Network.check(&http, lo, t).await,
            Err(format!("GET http://127.0.0.1:{port}/ready → status 503"))
        );
        assert_eq!(
            Network.check(&ProbeCheck::Tcp { port }, lo, t).await,
            Ok(())
        );
        // A port nobody listens on.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            Network
                .check(&ProbeCheck::Tcp { port: closed }, lo, t)
                .await,
            Err(format!(
                "TCP connect 127.0.0.1:{closed} → connection refused"
            ))
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.0 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
