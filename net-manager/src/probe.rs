//! Round-trip times to the other workers, for the closest choice ([`crate::view::rank`]).
//!
//! Every worker answers UDP echo on its underlay address (`--probe-port`, 50104) and probes
//! every peer's underlay every `--probe-interval-secs`, the first time as soon as the peer
//! set changes. A peer's round-trip time is the lowest of its last [`WINDOW`] samples: the
//! path's own delay, without the spikes a busy worker adds when it answers late (an average
//! ranks a loaded worker as far away; the first sample waits for ARP), while a lasting
//! change shows within [`WINDOW`] probes. A probe not answered within [`timeout`] is lost,
//! and after [`LOSSES_UNKNOWN`] losses in a row the peer's time is unknown again (it ranks
//! last).
//!
//! A probe is 14 bytes: `CNPR`, version 1, kind (0 request, 1 reply), a 64-bit nonce. A reply
//! counts only from the peer the request went to, with a nonce still pending; anything else
//! that arrives (garbage, a stray reply, a replayed one) is ignored. The measuring is a pure
//! [`Estimator`] with time passed in; [`run`] does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// The first bytes of every probe.
pub const MAGIC: [u8; 4] = *b"CNPR";
const VERSION: u8 = 1;
/// The length of a probe.
pub const PACKET_LEN: usize = 14;
/// Losses in a row after which a peer's round-trip time is unknown.
pub const LOSSES_UNKNOWN: u32 = 3;
/// The samples a peer's round-trip time is the lowest of.
pub const WINDOW: usize = 5;

/// One probe datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Request(u64),
    Reply(u64),
}

impl Packet {
    pub fn encode(self) -> [u8; PACKET_LEN] {
        let (kind, nonce) = match self {
            Packet::Request(n) => (0, n),
            Packet::Reply(n) => (1, n),
        };
        let mut b = [0; PACKET_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = kind;
        b[6..].copy_from_slice(&nonce.to_be_bytes());
        b
    }

    /// The probe in `b`; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Packet> {
        if b.len() != PACKET_LEN || b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let nonce = u64::from_be_bytes(b[6..].try_into().ok()?);
        match b[5] {
            0 => Some(Packet::Request(nonce)),
            1 => Some(Packet::Reply(nonce)),
            _ => None,
        }
    }
}

/// How long a probe waits for its reply: the interval, at most 2 s.
pub fn timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(2))
}

#[derive(Debug, Clone, Default)]
struct PeerRtt {
    /// The last samples, oldest first (none: unknown).
    samples: std::collections::VecDeque<Duration>,
    losses: u32,
}

/// The round-trip times of a set of peers, from the probes sent and the replies heard.
#[derive(Debug, Clone)]
pub struct Estimator {
    timeout: Duration,
    peers: BTreeMap<Ipv4Addr, PeerRtt>,
    /// nonce → (peer, when sent).
    pending: BTreeMap<u64, (Ipv4Addr, Instant)>,
    next: u64,
}

impl Estimator {
    /// Nonces start from `seed` (anything hard to guess).
    pub fn new(timeout: Duration, seed: u64) -> Estimator {
        Estimator {
            timeout,
            peers: BTreeMap::new(),
            pending: BTreeMap::new(),
            next: seed,
        }
    }

    /// The peers to measure: new ones start unknown, gone ones are forgotten.
    pub fn set_peers(&mut self, peers: &BTreeSet<Ipv4Addr>) {
        self.peers.retain(|p, _| peers.contains(p));
        for p in peers {
            self.peers.entry(*p).or_default();
        }
        self.pending.retain(|_, (p, _)| peers.contains(p));
    }

    pub fn peers(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.peers.keys().copied()
    }

    /// A probe to `peer` sent at `now`: its nonce.
    pub fn probe(&mut self, peer: Ipv4Addr, now: Instant) -> u64 {
        // An odd step visits every 64-bit value once.
        self.next = self.next.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.pending.insert(self.next, (peer, now));
        self.next
    }

    /// A reply from `from` with `nonce`, heard at `now`. Whether it counted.
    pub fn answered(&mut self, from: Ipv4Addr, nonce: u64, now: Instant) -> bool {
        match self.pending.get(&nonce) {
            Some((peer, _)) if *peer == from => {}
            _ => return false,
        }
        let Some((peer, sent)) = self.pending.remove(&nonce) else {
            return false;
        };
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        let rtt = now.saturating_duration_since(sent);
        if rtt > self.timeout {
            Self::lost(state);
            return true;
        }
        state.losses = 0;
        state.samples.push_back(rtt);
        if state.samples.len() > WINDOW {
            state.samples.pop_front();
        }
        true
    }

    fn lost(state: &mut PeerRtt) {
        state.losses += 1;
        if state.losses >= LOSSES_UNKNOWN {
            state.samples.clear();
        }
    }

    /// Counts the probes older than the timeout at `now` as lost.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, sent))| now.saturating_duration_since(*sent) >= timeout)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            if let Some((peer, _)) = self.pending.remove(&n)
                && let Some(state) = self.peers.get_mut(&peer)
            {
                Self::lost(state);
            }
        }
    }

    /// The peers whose round-trip time is known, with it.
    pub fn rtts(&self) -> BTreeMap<Ipv4Addr, Duration> {
        self.peers
            .iter()
            .filter_map(|(p, s)| s.samples.iter().min().map(|d| (*p, *d)))
            .collect()
    }
}

/// Where and how often [`run`] probes.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub port: u16,
    pub interval: Duration,
}

enum Event {
    Stop,
    LocalChanged,
    PeersChanged,
    Tick,
    Datagram(std::io::Result<(usize, SocketAddr)>),
}

async fn recv(
    sock: &Option<(Ipv4Addr, UdpSocket)>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some((_, s)) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Answers probes on `local:port` (once `local` names an address; again on another when it
/// changes) and probes every address of `peers`, publishing the round-trip times known on
/// `out`, until `shutdown`.
pub async fn run(
    settings: Settings,
    mut local: watch::Receiver<Option<Ipv4Addr>>,
    mut peers: watch::Receiver<BTreeSet<Ipv4Addr>>,
    out: watch::Sender<BTreeMap<Ipv4Addr, Duration>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut est = Estimator::new(timeout(settings.interval), seed());
    est.set_peers(&peers.borrow_and_update());
    let mut sock: Option<(Ipv4Addr, UdpSocket)> = None;
    let mut warned: Option<Ipv4Addr> = None;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 512];
    tokio::pin!(shutdown);
    loop {
        let want = *local.borrow();
        if sock.as_ref().map(|(a, _)| *a) != want {
            sock = None;
            if let Some(addr) = want {
                match UdpSocket::bind((addr, settings.port)).await {
                    Ok(s) => {
                        tracing::info!(address = %addr, port = settings.port, "answering probes");
                        sock = Some((addr, s));
                        warned = None;
                    }
                    Err(e) if warned != Some(addr) => {
                        tracing::warn!(address = %addr, port = settings.port, error = %e, "cannot answer probes yet; retrying");
                        warned = Some(addr);
                    }
                    Err(_) => {}
                }
            }
        }
        let event = tokio::select! {
            _ = &mut shutdown => Event::Stop,
            r = local.changed() => if r.is_ok() { Event::LocalChanged } else { Event::Stop },
            r = peers.changed() => if r.is_ok() { Event::PeersChanged } else { Event::Stop },
            _ = tick.tick() => Event::Tick,
            r = recv(&sock, &mut buf) => Event::Datagram(r),
        };
        match event {
            Event::Stop => return,
            Event::LocalChanged => tick.reset_immediately(),
            Event::PeersChanged => {
                est.set_peers(&peers.borrow_and_update());
                tick.reset_immediately();
            }
            Event::Tick => {
                est.expire(Instant::now());
                if let Some((_, s)) = &sock {
                    let targets: Vec<Ipv4Addr> = est.peers().collect();
                    for peer in targets {
                        let nonce = est.probe(peer, Instant::now());
                        let probe = Packet::Request(nonce).encode();
                        if let Err(e) = s.send_to(&probe, (peer, settings.port)).await {
                            tracing::debug!(peer = %peer, error = %e, "probe not sent");
                        }
                    }
                }
            }
            Event::Datagram(Ok((n, from))) => {
                let (Some(packet), Some((_, s))) = (Packet::decode(&buf[..n]), &sock) else {
                    continue;
                };
                match (packet, from) {
                    (Packet::Request(nonce), _) => {
                        let _ = s.send_to(&Packet::Reply(nonce).encode(), from).await;
                    }
                    (Packet::Reply(nonce), SocketAddr::V4(from))
                        if from.port() == settings.port =>
                    {
                        est.answered(*from.ip(), nonce, Instant::now());
                    }
                    _ => {}
                }
            }
            Event::Datagram(Err(e)) => {
                tracing::debug!(error = %e, "probe socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let now = est.rtts();
        out.send_if_modified(|cur| {
            if *cur == now {
                false
            } else {
                *cur = now;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn packets_round_trip_and_garbage_is_none() {
        for p in [
            Packet::Request(0),
            Packet::Reply(u64::MAX),
            Packet::Request(42),
        ] {
            assert_eq!(Packet::decode(&p.encode()), Some(p));
        }
        let good = Packet::Request(7).encode();
        let mut cases: Vec<Vec<u8>> = vec![vec![], good[..13].to_vec(), [&good[..], &[0]].concat()];
        for (i, v) in [(0, b'X'), (4, 2), (5, 2)] {
            let mut b = good;
            b[i] = v;
            cases.push(b.to_vec());
        }
        for c in cases {
            assert_eq!(Packet::decode(&c), None, "{c:?}");
        }
        // Any bytes at all: no panic.
        let mut x: u32 = 1;
        for len in 0..64 {
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = Packet::decode(&b);
        }
    }

    #[test]
    fn round_trips_are_the_lowest_of_the_last_samples_and_forgotten_after_three_losses() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let mut e = Estimator::new(ms(1000), 1);
        e.set_peers(&BTreeSet::from([a, b]));
        assert!(e.rtts().is_empty(), "unknown until measured");

        let n = e.probe(a, t0);
        assert!(e.answered(a, n, t0 + ms(8)));
        assert_eq!(e.rtts()[&a], ms(8), "the first sample as it is");
        // A replayed reply, one from elsewhere, an unknown nonce: ignored.
        assert!(!e.answered(a, n, t0 + ms(9)));
        let n = e.probe(a, t0 + ms(100));
        assert!(!e.answered(b, n, t0 + ms(101)));
        assert!(!e.answered(a, n ^ 1, t0 + ms(101)));
        assert!(e.answered(a, n, t0 + ms(116)));
        assert_eq!(
            e.rtts()[&a],
            ms(8),
            "a late answer (a busy peer) does not count"
        );
        // A lasting change (20 ms now) shows once the window of 5 has moved past the old
        // samples (8 ms, 16 ms).
        assert_eq!(WINDOW, 5);
        for (k, expect) in [8, 8, 8, 16, 20].into_iter().enumerate() {
            let at = t0 + ms(200 + 100 * k as u64);
            let n = e.probe(a, at);
            assert!(e.answered(a, n, at + ms(20)));
            assert_eq!(e.rtts()[&a], ms(expect), "after {} more", k + 1);
        }

        // Two losses keep the estimate, the third forgets it.
        for k in 1..=3 {
            let at = t0 + ms(2000 * k);
            e.probe(a, at);
            e.expire(at + ms(999));
            assert!(e.rtts().contains_key(&a), "not lost before the timeout");
            e.expire(at + ms(1000));
            assert_eq!(e.rtts().contains_key(&a), k < 3, "after {k} losses");
        }
        // A late reply is a loss; an answer in time makes it known again.
        let n = e.probe(a, t0 + ms(10_000));
        assert!(e.answered(a, n, t0 + ms(11_500)));
        assert!(!e.rtts().contains_key(&a));
        let n = e.probe(a, t0 + ms(12_000));
        assert!(e.answered(a, n, t0 + ms(12_005)));
        assert_eq!(e.rtts()[&a], ms(5));

        // A peer no longer listed is forgotten, with its pending probes.
        let n = e.probe(b, t0 + ms(13_000));
        e.set_peers(&BTreeSet::from([a]));
        assert!(!e.answered(b, n, t0 + ms(13_001)));
        assert_eq!(e.peers().collect::<Vec<_>>(), vec![a]);
    }

    #[test]
    fn the_timeout_is_the_interval_at_most_two_seconds() {
        assert_eq!(timeout(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(timeout(Duration::from_secs(5)), Duration::from_secs(2));
    }

    /// Two probers on loopback addresses measure each other, and survive garbage.
    #[tokio::test]
    async fn two_probers_on_loopback_measure_each_other() {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = Settings {
            port,
            interval: Duration::from_millis(100),
        };
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let (stop_tx, stop_rx) = watch::channel(());
        let mut outs = Vec::new();
        let mut keep = Vec::new();
        for (me, other) in [(a, b), (b, a)] {
            let (local_tx, local_rx) = watch::channel(Some(me));
            let (peers_tx, peers_rx) = watch::channel(BTreeSet::from([other]));
            let (out_tx, out_rx) = watch::channel(BTreeMap::new());
            let mut stop = stop_rx.clone();
            tokio::spawn(run(settings, local_rx, peers_rx, out_tx, async move {
                let _ = stop.changed().await;
            }));
            keep.push((local_tx, peers_tx));
            outs.push(out_rx);
        }
        let garbage = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        for g in [
            &b"hello"[..],
            &[0u8; 0],
            &Packet::Reply(1).encode(),
            &[0xff; 400],
        ] {
            garbage.send_to(g, (a, port)).await.unwrap();
        }
        // A request from anyone is answered.
        garbage
            .send_to(&Packet::Request(99).encode(), (a, port))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), garbage.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(Packet::decode(&buf[..n]), Some(Packet::Reply(99)));
        for (out, other) in outs.iter_mut().zip([b, a]) {
            tokio::time::timeout(
                Duration::from_secs(3),
                out.wait_for(|r| r.contains_key(&other)),
            )
            .await
            .expect("a round-trip time")
            .unwrap();
        }
        drop(stop_tx);
        drop(keep);
    }
}
