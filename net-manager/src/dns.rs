//! The overlay's name resolver: instances resolve a service's job name
//! (`<app>.<app ns>.<service>.<service ns>`, e.g. `clientsrvr.test.nginx.test`) to its
//! service IP through a resolver the net manager answers on the worker's bridge address
//! (UDP port 53); every other name is forwarded to the host's resolvers.
//!
//! Only exact names are ours: a name in the table gets an A record (TTL 5 s, so a service
//! that moves is seen again quickly) or, for any other type, an empty NOERROR answer; any
//! other name goes upstream untouched. Forwarding sends the client's datagram as it came
//! from a fresh ephemeral socket per query and relays the first answer back, so the
//! client's id, EDNS options and flags reach upstream unchanged. Local names are answered in
//! the receiving loop; forwarded queries wait for upstream on tasks of their own, a bounded
//! number at a time, so a slow upstream holds back neither local names nor other queries.
//!
//! The wire code is written here (RFC 1035, the small part a stub resolver needs): a
//! header, one question without compression, one A record pointing back at the question.
//! Anything that does not parse is dropped (no header) or refused with FORMERR, never a
//! panic; UDP only (a truncated upstream answer is relayed with its TC bit, and the client
//! retrying over TCP finds nothing on port 53).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The names the resolver answers: lowercase name (no trailing dot) → IPv4.
pub type Names = BTreeMap<String, Ipv4Addr>;

/// What to do with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Not one of ours: send the datagram to the upstream resolvers.
    Forward,
    /// Not a query (too short for a header, or a response): ignore it.
    Drop,
}

/// How long one upstream server has to answer before the next one is asked.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries waiting for upstream at once; beyond that queries get SERVFAIL.
pub const MAX_IN_FLIGHT: usize = 256;
/// Time to live of the A records the resolver answers, in seconds.
pub const TTL: u32 = 5;
/// Nameservers read from resolv.conf, as glibc (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;

const HEADER_LEN: usize = 12;
/// Largest datagram read from a client or an upstream server.
const MAX_DATAGRAM: usize = 65_535;
/// Longest name on the wire (RFC 1035 §2.3.4), length bytes and the root label included.
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const OPCODE_SHIFT: u16 = 11;
const OPCODE_MASK: u16 = 0x0f;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

/// Response codes (RFC 1035 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NotImp = 4,
}

/// Why a query's question cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Malformed {
    #[error("no question")]
    NoQuestion,
    #[error("{0} questions (one is supported)")]
    Questions(u16),
    #[error("the question ends early")]
    Truncated,
    #[error("a compression pointer or an extended label in the question")]
    LabelType,
    #[error("the name is longer than 255 bytes")]
    NameTooLong,
}

/// A query's header fields the answer needs.
#[derive(Debug, Clone, Copy)]
struct Header {
    id: u16,
    flags: u16,
}

impl Header {
    /// `None` for anything that is not a query: too short, or a response.
    fn parse(datagram: &[u8]) -> Option<Header> {
        let header = datagram.get(..HEADER_LEN)?;
        let h = Header {
            id: u16::from_be_bytes([header[0], header[1]]),
            flags: u16::from_be_bytes([header[2], header[3]]),
        };
        (h.flags & FLAG_QR == 0).then_some(h)
    }

    fn opcode(self) -> u16 {
        (self.flags >> OPCODE_SHIFT) & OPCODE_MASK
    }
}

/// The one question of a query.
#[derive(Debug)]
struct Question<'a> {
    /// Its bytes on the wire (name, type, class), echoed in the reply as they came, so the
    /// client's letter case survives.
    wire: &'a [u8],
    /// The name in lowercase without a trailing dot; `None` when a label holds a byte no
    /// table name has (a dot, a space, anything not printable ASCII): then it is not ours.
    name: Option<String>,
    qtype: u16,
    qclass: u16,
}

fn question_count(datagram: &[u8]) -> u16 {
    u16::from_be_bytes([datagram[4], datagram[5]])
}

/// Reads the question of a query whose header parsed. Records after it (an EDNS OPT record,
/// say) are left alone.
fn parse_question(datagram: &[u8]) -> Result<Question<'_>, Malformed> {
    match question_count(datagram) {
        0 => return Err(Malformed::NoQuestion),
        1 => {}
        n => return Err(Malformed::Questions(n)),
    }
    let mut at = HEADER_LEN;
    let mut name = String::new();
    let mut printable = true;
    loop {
        let len = usize::from(*datagram.get(at).ok_or(Malformed::Truncated)?);
        if len == 0 {
            at += 1;
            break;
        }
        // 0b11 is a compression pointer, 0b01 and 0b10 extended label types: none belongs
        // in a question (it could only point back into the header or at itself).
        if len > MAX_LABEL_LEN {
            return Err(Malformed::LabelType);
        }
        let label = datagram
            .get(at + 1..at + 1 + len)
            .ok_or(Malformed::Truncated)?;
        at += 1 + len;
        if at - HEADER_LEN + 1 > MAX_NAME_LEN {
            return Err(Malformed::NameTooLong);
        }
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' {
                name.push(char::from(b.to_ascii_lowercase()));
            } else {
                printable = false;
            }
        }
    }
    let fixed = datagram.get(at..at + 4).ok_or(Malformed::Truncated)?;
    Ok(Question {
        wire: &datagram[HEADER_LEN..at + 4],
        name: printable.then_some(name),
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

/// A response to `header`'s query: its id, opcode, RD and CD copied, RA set; the question
/// echoed when there is one, then the A record if any.
fn response(
    header: Header,
    authoritative: bool,
    rcode: Rcode,
    question: Option<&Question<'_>>,
    a: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut flags = FLAG_QR
        | FLAG_RA
        | (header.flags & (OPCODE_MASK << OPCODE_SHIFT | FLAG_RD | FLAG_CD))
        | rcode as u16;
    if authoritative {
        flags |= FLAG_AA;
    }
    let qdcount = u16::from(question.is_some());
    let ancount = u16::from(question.is_some() && a.is_some());
    let mut out = Vec::with_capacity(HEADER_LEN + question.map_or(0, |q| q.wire.len()) + 16);
    for field in [header.id, flags, qdcount, ancount, 0, 0] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    if let Some(q) = question {
        out.extend_from_slice(q.wire);
        if let Some(ip) = a {
            // The name is a pointer to the question's, right after the header.
            out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&TTL.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
    }
    out
}

fn lookup(names: &Names, name: &str) -> Option<Ipv4Addr> {
    names
        .get(name)
        .or_else(|| names.get(&format!("{name}.")))
        .copied()
}

/// Pure: what to do with one datagram received from a client.
///
/// A query for a name in `names` (any letter case, with or without a trailing dot) is
/// answered here: type A in class IN gets the name's address, any other type or class an
/// empty NOERROR answer (the name exists, with no such record). Any other name is for
/// upstream. A query that has no question, several, or one that does not parse gets
/// FORMERR; one with an opcode other than QUERY gets NOTIMP; a datagram without a full
/// header, or a response, is dropped.
pub fn answer(query: &[u8], names: &Names) -> Decision {
    let Some(header) = Header::parse(query) else {
        return Decision::Drop;
    };
    if header.opcode() != 0 {
        return Decision::Reply(response(header, false, Rcode::NotImp, None, None));
    }
    let question = match parse_question(query) {
        Ok(q) => q,
        Err(e) => {
            tracing::debug!(id = header.id, error = %e, "malformed query");
            return Decision::Reply(response(header, false, Rcode::FormErr, None, None));
        }
    };
    let Some(ip) = question.name.as_deref().and_then(|n| lookup(names, n)) else {
        return Decision::Forward;
    };
    let a =
        (question.qtype == TYPE_A && matches!(question.qclass, CLASS_IN | CLASS_ANY)).then_some(ip);
    Decision::Reply(response(header, true, Rcode::NoError, Some(&question), a))
}

/// SERVFAIL for a query `answer` chose to forward (it parsed); `None` if it does not parse.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let header = Header::parse(query)?;
    let question = parse_question(query).ok()?;
    Some(response(
        header,
        false,
        Rcode::ServFail,
        Some(&question),
        None,
    ))
}

/// How the resolver forwards.
#[derive(Debug, Clone)]
struct Forwarding {
    upstream: Arc<[SocketAddr]>,
    /// Per upstream server.
    timeout: Duration,
    max_in_flight: usize,
}

/// Serves DNS on `socket` until the task is dropped or aborted: names from `names` (its
/// latest value at each query), others forwarded to `upstream` in order, each server given
/// [`UPSTREAM_TIMEOUT`] before the next is asked too (the first answer from any of them
/// wins), then SERVFAIL. No upstream, or [`MAX_IN_FLIGHT`] queries already forwarded, is
/// SERVFAIL at once. Dropping the future also cancels the queries it forwarded.
pub async fn serve(
    socket: UdpSocket,
    names: watch::Receiver<Arc<Names>>,
    upstream: Vec<SocketAddr>,
) {
    let forwarding = Forwarding {
        upstream: upstream.into(),
        timeout: UPSTREAM_TIMEOUT,
        max_in_flight: MAX_IN_FLIGHT,
    };
    serve_with(socket, names, forwarding).await
}

async fn serve_with(socket: UdpSocket, names: watch::Receiver<Arc<Names>>, forwarding: Forwarding) {
    let socket = Arc::new(socket);
    let mut in_flight = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "dns: cannot receive");
                    // A persistent error must not spin the loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished forwards so the set only holds those still waiting.
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        let query = &buf[..len];
        let decision = answer(query, &names.borrow());
        match decision {
            Decision::Reply(reply) => send(&socket, &reply, client).await,
            Decision::Drop => tracing::trace!(%client, len, "dns: dropped a datagram"),
            Decision::Forward => {
                if forwarding.upstream.is_empty() || in_flight.len() >= forwarding.max_in_flight {
                    tracing::debug!(%client, in_flight = in_flight.len(), "dns: cannot forward");
                    if let Some(reply) = servfail(query) {
                        send(&socket, &reply, client).await;
                    }
                    continue;
                }
                let query = query.to_vec();
                let socket = socket.clone();
                let forwarding = forwarding.clone();
                in_flight.spawn(async move {
                    let reply =
                        match forward(&query, &forwarding.upstream, forwarding.timeout).await {
                            Some(reply) => reply,
                            None => {
                                tracing::debug!(%client, "dns: no upstream answered");
                                let Some(reply) = servfail(&query) else {
                                    return;
                                };
                                reply
                            }
                        };
                    send(&socket, &reply, client).await;
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(e) = socket.send_to(reply, client).await {
        tracing::debug!(%client, error = %e, "dns: cannot send a reply");
    }
}

/// Asks `upstream` in order, giving each server `timeout` before asking the next while still
/// listening to the earlier ones; a server that fails at once (unreachable, port closed)
/// passes to the next at once. The first answer wins; `None` when none came.
async fn forward(query: &[u8], upstream: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    let id = query.get(..2).map(|b| [b[0], b[1]])?;
    let query: Arc<[u8]> = query.into();
    let mut asking = JoinSet::new();
    for &server in upstream {
        asking.spawn(ask(query.clone(), id, server));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, asking.join_next()).await {
                Ok(Some(Ok(Some(reply)))) => return Some(reply),
                // That one failed; the others may still answer.
                Ok(Some(_)) => continue,
                // Every server asked so far failed, or this one is late: the next.
                Ok(None) | Err(_) => break,
            }
        }
    }
    None
}

/// Sends `query` to `server` from a fresh ephemeral socket connected to it (so only that
/// server's datagrams arrive) and waits for a response with the query's id.
async fn ask(query: Arc<[u8]>, id: [u8; 2], server: SocketAddr) -> Option<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let result: std::io::Result<Vec<u8>> = async {
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        socket.send(&query).await?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let len = socket.recv(&mut buf).await?;
            let reply = &buf[..len];
            if reply.len() >= HEADER_LEN && reply[..2] == id && reply[2] & 0x80 != 0 {
                buf.truncate(len);
                return Ok(buf);
            }
            tracing::debug!(%server, len, "dns: ignored a datagram that answers nothing asked");
        }
    }
    .await;
    result
        .map_err(|e| tracing::debug!(%server, error = %e, "dns: upstream failed"))
        .ok()
}

/// The host's resolvers from a resolv.conf text: the addresses of its `nameserver` lines
/// (IPv4 and IPv6, the latter with a `%` scope as an interface name or index), port 53, at
/// most the first three as glibc reads them. Loopback addresses are kept: the net manager
/// runs in the host's namespace, where `127.0.0.53` and the like answer. Comments (`#` or
/// `;`) and other options are skipped, so are addresses that do not parse. No nameserver
/// gives an empty list (glibc would then try the local host; the resolver answers SERVFAIL).
pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        match nameserver(word) {
            Some(server) if servers.len() < MAX_NAMESERVERS => servers.push(server),
            Some(server) => {
                tracing::debug!(%server, "resolv.conf: more than three nameservers; ignored")
            }
            None => tracing::warn!(nameserver = word, "resolv.conf: unusable nameserver"),
        }
    }
    servers
}

fn nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some((ip, 53).into());
    }
    let (ip, scope) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope = match scope.parse::<u32>() {
        Ok(index) => index,
        Err(_) => nix::net::if_::if_nametoindex(scope).ok()?,
    };
    Some(SocketAddrV6::new(ip, 53, 0, scope).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAAA: u16 = 28;
    const MX: u16 = 15;

    /// A query the way a stub resolver sends one: RD set, one question, optionally an EDNS
    /// OPT record after it.
    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = Vec::new();
        for field in [id, FLAG_RD, 1, 0, 0, u16::from(edns)] {
            q.extend_from_slice(&field.to_be_bytes());
        }
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            // Root name, type OPT, payload size 1232, no extended rcode/flags, no options.
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    /// What a client reads in a response.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        id: u16,
        flags: u16,
        rcode: u8,
        question: Option<(String, u16)>,
        /// (type, class, ttl, rdata) of each answer whose name points at the question.
        answers: Vec<(u16, u16, u32, Vec<u8>)>,
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn parse_response(r: &[u8]) -> Parsed {
        assert!(r.len() >= HEADER_LEN, "short response {r:?}");
        let flags = be16(r, 2);
        assert!(flags & FLAG_QR != 0, "not a response");
        let (qd, an) = (be16(r, 4), be16(r, 6));
        assert!(qd <= 1);
        let mut at = HEADER_LEN;
        let question = (qd == 1).then(|| {
            let mut labels = Vec::new();
            while r[at] != 0 {
                let len = usize::from(r[at]);
                labels.push(String::from_utf8_lossy(&r[at + 1..at + 1 + len]).into_owned());
                at += 1 + len;
            }
            let qtype = be16(r, at + 1);
            at += 5;
            (labels.join("."), qtype)
        });
        let mut answers = Vec::new();
        for _ in 0..an {
            assert_eq!(
                &r[at..at + 2],
                &[0xc0, 12],
                "answer name points at the question"
            );
            let rdlen = usize::from(be16(r, at + 10));
            let ttl = u32::from_be_bytes([r[at + 6], r[at + 7], r[at + 8], r[at + 9]]);
            answers.push((
                be16(r, at + 2),
                be16(r, at + 4),
                ttl,
                r[at + 12..at + 12 + rdlen].to_vec(),
            ));
            at += 12 + rdlen;
        }
        assert_eq!(at, r.len(), "trailing bytes");
        Parsed {
            id: be16(r, 0),
            flags,
            rcode: (flags & 0x0f) as u8,
            question,
            answers,
        }
    }

    fn names() -> Names {
        Names::from([
            (
                "clientsrvr.test.nginx.test".into(),
                Ipv4Addr::new(10, 30, 0, 7),
            ),
            ("app.ns.db.ns".into(), Ipv4Addr::new(10, 30, 0, 9)),
        ])
    }

    fn reply(d: Decision) -> Parsed {
        match d {
            Decision::Reply(r) => parse_response(&r),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn a_known_name_gets_its_address() {
        for (name, edns) in [
            ("clientsrvr.test.nginx.test", false),
            ("ClientSrvr.TEST.nginx.test.", true),
        ] {
            let r = reply(answer(&query(0xbeef, name, TYPE_A, edns), &names()));
            assert_eq!(r.id, 0xbeef);
            assert_eq!(r.rcode, 0);
            assert_eq!(
                r.flags & (FLAG_AA | FLAG_RD | FLAG_RA),
                FLAG_AA | FLAG_RD | FLAG_RA
            );
            // The question comes back as asked, letter case included.
            assert_eq!(
                r.question,
                Some((name.trim_end_matches('.').into(), TYPE_A))
            );
            assert_eq!(r.answers, vec![(TYPE_A, CLASS_IN, 5, vec![10, 30, 0, 7])]);
        }
        // RD not asked, not set.
        let mut q = query(1, "app.ns.db.ns", TYPE_A, false);
        q[2] &= !0x01;
        let r = reply(answer(&q, &names()));
        assert_eq!(r.flags & FLAG_RD, 0);
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn table_names_with_a_trailing_dot_match_too() {
        let names = Names::from([("web.ns.api.ns.".into(), Ipv4Addr::new(10, 30, 0, 1))]);
        let r = reply(answer(&query(2, "web.ns.api.ns", TYPE_A, false), &names));
        assert_eq!(r.answers[0].3, vec![10, 30, 0, 1]);
    }

    #[test]
    fn other_types_of_a_known_name_get_nodata() {
        for qtype in [AAAA, MX, 255] {
            let r = reply(answer(&query(3, "app.ns.db.ns", qtype, false), &names()));
            assert_eq!(r.rcode, 0);
            assert!(r.flags & FLAG_AA != 0);
            assert_eq!(r.question, Some(("app.ns.db.ns".into(), qtype)));
            assert!(r.answers.is_empty(), "{qtype}");
        }
        // Class CHAOS: the name is ours, there is nothing in that class.
        let mut q = query(4, "app.ns.db.ns", TYPE_A, false);
        let at = q.len() - 1;
        q[at] = 3;
        assert!(reply(answer(&q, &names())).answers.is_empty());
    }

    #[test]
    fn only_exact_names_are_ours() {
        for name in [
            "other.test.nginx.test",
            "db.ns",
            "x.app.ns.db.ns",
            "example.com",
            "app.ns.db.ns.example.com",
        ] {
            assert_eq!(
                answer(&query(5, name, TYPE_A, false), &names()),
                Decision::Forward,
                "{name}"
            );
        }
        // The root, and a label with a dot in it (`app.ns` as one label) are not ours either.
        let mut root = query(6, "x", TYPE_A, false);
        root.splice(12..14, []);
        assert_eq!(answer(&root, &names()), Decision::Forward);
        let mut dotted = Vec::from(&query(7, "x", TYPE_A, false)[..12]);
        dotted.extend_from_slice(b"\x06app.ns\x02db\x02ns\x00\x00\x01\x00\x01");
        assert_eq!(answer(&dotted, &names()), Decision::Forward);
    }

    #[test]
    fn what_is_not_a_plain_query_is_refused_or_dropped() {
        let q = query(8, "app.ns.db.ns", TYPE_A, false);
        // Opcode 2 (STATUS), 5 (UPDATE): NOTIMP.
        for opcode in [2u8, 5] {
            let mut o = q.clone();
            o[2] |= opcode << 3;
            let r = reply(answer(&o, &names()));
            assert_eq!((r.id, r.rcode, r.question), (8, 4, None));
            assert_eq!((r.flags >> OPCODE_SHIFT) & OPCODE_MASK, u16::from(opcode));
        }
        // No question, two questions: FORMERR.
        for qdcount in [0u8, 2] {
            let mut n = q.clone();
            n[5] = qdcount;
            let r = reply(answer(&n, &names()));
            assert_eq!((r.id, r.rcode, r.question), (8, 1, None));
        }
        // A compression pointer in the question (at itself: a loop if followed): FORMERR.
        let mut p = Vec::from(&q[..12]);
        p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(reply(answer(&p, &names())).rcode, 1);
        // A name longer than 255 bytes: FORMERR.
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(
            reply(answer(&query(9, &long, TYPE_A, false), &names())).rcode,
            1
        );
        let fits = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(61));
        assert_eq!(
            answer(&query(9, &fits, TYPE_A, false), &names()),
            Decision::Forward
        );
        // A response, or less than a header: dropped.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(answer(&resp, &names()), Decision::Drop);
        assert_eq!(answer(&q[..11], &names()), Decision::Drop);
        assert_eq!(answer(&[], &names()), Decision::Drop);
    }

    /// xorshift64*: deterministic bytes without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Whatever comes in: no panic, and any reply is a well-formed response to that id.
    fn check(datagram: &[u8], names: &Names) {
        if let Decision::Reply(r) = answer(datagram, names) {
            let p = parse_response(&r);
            assert_eq!(p.id, be16(datagram, 0));
            assert!(p.answers.len() <= 1);
        }
    }

    #[test]
    fn random_and_damaged_datagrams_never_panic() {
        let names = names();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid = [
            query(10, "clientsrvr.test.nginx.test", TYPE_A, true),
            query(11, "app.ns.db.ns", AAAA, false),
            query(12, "example.com", TYPE_A, false),
        ];
        for q in &valid {
            // Every truncation.
            for len in 0..=q.len() {
                check(&q[..len], &names);
            }
            // Random byte changes, header flags kept a query's so the parser is reached.
            for _ in 0..20_000 {
                let mut d = q.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = HEADER_LEN + rng.below(d.len() - HEADER_LEN);
                    d[at] = rng.next() as u8;
                }
                if rng.below(4) == 0 {
                    d.truncate(rng.below(d.len() + 1));
                }
                check(&d, &names);
            }
        }
        // Pure noise, with the first bytes made to look like a one-question query.
        for _ in 0..50_000 {
            let len = rng.below(80);
            let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= HEADER_LEN && rng.below(2) == 0 {
                d[2] &= 0x07;
                d[4] = 0;
                d[5] = 1;
            }
            check(&d, &names);
        }
    }

    fn shared(names: Names) -> (watch::Sender<Arc<Names>>, watch::Receiver<Arc<Names>>) {
        watch::channel(Arc::new(names))
    }

    /// A resolver on an ephemeral port of 127.0.0.1; dropping the handle stops it.
    struct Resolver {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Resolver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn resolver(
        names: watch::Receiver<Arc<Names>>,
        upstream: Vec<SocketAddr>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Resolver {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let forwarding = Forwarding {
            upstream: upstream.into(),
            timeout,
            max_in_flight,
        };
        let task = tokio::spawn(serve_with(socket, names, forwarding));
        Resolver { addr, task }
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Sends `q` to `server` and reads the reply, failing the test after `within`.
    async fn ask_from(c: &UdpSocket, server: SocketAddr, q: &[u8], within: Duration) -> Parsed {
        c.send_to(q, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, from) = tokio::time::timeout(within, c.recv_from(&mut buf))
            .await
            .expect("no reply in time")
            .unwrap();
        assert_eq!(from, server);
        parse_response(&buf[..len])
    }

    const QUICK: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn serves_known_names_over_udp_and_follows_the_table() {
        let (tx, rx) = shared(names());
        let r = resolver(rx, vec![], QUICK, MAX_IN_FLIGHT).await;
        let c = client().await;

        let a = ask_from(
            &c,
            r.addr,
            &query(21, "clientsrvr.test.nginx.test", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!((a.id, a.rcode), (21, 0));
        assert_eq!(a.answers, vec![(TYPE_A, CLASS_IN, 5, vec![10, 30, 0, 7])]);

        let aaaa = ask_from(
            &c,
            r.addr,
            &query(22, "clientsrvr.test.nginx.test", AAAA, true),
            QUICK,
        )
        .await;
        assert_eq!((aaaa.id, aaaa.rcode), (22, 0));
        assert!(aaaa.answers.is_empty());

        // The service moves; another appears; one goes.
        let mut next = names();
        next.insert(
            "clientsrvr.test.nginx.test".into(),
            Ipv4Addr::new(10, 30, 0, 8),
        );
        next.insert("new.ns.svc.ns".into(), Ipv4Addr::new(10, 30, 0, 10));
        next.remove("app.ns.db.ns");
        tx.send(Arc::new(next)).unwrap();
        let moved = ask_from(
            &c,
            r.addr,
            &query(23, "clientsrvr.test.nginx.test", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!(moved.answers[0].3, vec![10, 30, 0, 8]);
        let new = ask_from(
            &c,
            r.addr,
            &query(24, "new.ns.svc.ns", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!(new.answers[0].3, vec![10, 30, 0, 10]);
        // Gone, and no upstream: SERVFAIL with the question.
        let gone = ask_from(&c, r.addr, &query(25, "app.ns.db.ns", TYPE_A, false), QUICK).await;
        assert_eq!((gone.id, gone.rcode), (25, 2));
        assert_eq!(gone.question, Some(("app.ns.db.ns".into(), TYPE_A)));

        // Noise gets nothing back, and the resolver keeps serving.
        c.send_to(&[1, 2, 3], r.addr).await.unwrap();
        let again = ask_from(
            &c,
            r.addr,
            &query(26, "new.ns.svc.ns", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!(again.id, 26);
    }

    /// A fake upstream on 127.0.0.1 answering every query with the canned record
    /// `192.0.2.1` (without looking at the name), after `delay`.
    async fn fake_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let socket = Arc::new(socket);
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, from) = socket.recv_from(&mut buf).await.unwrap();
                let q = buf[..len].to_vec();
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let header = Header::parse(&q).unwrap();
                    let question = parse_question(&q).unwrap();
                    let r = response(
                        header,
                        false,
                        Rcode::NoError,
                        Some(&question),
                        Some(Ipv4Addr::new(192, 0, 2, 1)),
                    );
                    socket.send_to(&r, from).await.unwrap();
                });
            }
        });
        (addr, task)
    }

    /// A socket on 127.0.0.1 that reads queries and never answers.
    async fn silent_upstream() -> (SocketAddr, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (socket.local_addr().unwrap(), socket)
    }

    /// A 127.0.0.1 port nothing listens on (ICMP port unreachable comes back).
    async fn closed_port() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap()
    }

    #[tokio::test]
    async fn forwards_other_names_upstream_and_relays_the_answer() {
        let (up, up_task) = fake_upstream(Duration::ZERO).await;
        let (_tx, rx) = shared(names());
        let r = resolver(rx, vec![up], QUICK, MAX_IN_FLIGHT).await;
        let c = client().await;
        let f = ask_from(
            &c,
            r.addr,
            &query(0x4242, "example.com", TYPE_A, true),
            QUICK,
        )
        .await;
        assert_eq!((f.id, f.rcode), (0x4242, 0));
        assert_eq!(f.question, Some(("example.com".into(), TYPE_A)));
        assert_eq!(f.answers, vec![(TYPE_A, CLASS_IN, 5, vec![192, 0, 2, 1])]);
        // Known names stay local.
        let local = ask_from(&c, r.addr, &query(31, "app.ns.db.ns", TYPE_A, false), QUICK).await;
        assert_eq!(local.answers[0].3, vec![10, 30, 0, 9]);
        up_task.abort();
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_servfail_after_the_timeout() {
        let (up, _up_socket) = silent_upstream().await;
        let (_tx, rx) = shared(names());
        let timeout = Duration::from_millis(200);
        let r = resolver(rx, vec![up], timeout, MAX_IN_FLIGHT).await;
        let c = client().await;
        let start = std::time::Instant::now();
        let f = ask_from(&c, r.addr, &query(41, "example.com", TYPE_A, false), QUICK).await;
        assert_eq!((f.id, f.rcode), (41, 2));
        assert_eq!(f.question, Some(("example.com".into(), TYPE_A)));
        assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn the_next_upstream_is_asked_when_one_is_late_or_fails() {
        let (_tx, rx) = shared(names());
        let timeout = Duration::from_millis(300);
        let c = client().await;

        // A closed port fails at once: the second server is asked without waiting.
        let (up, up_task) = fake_upstream(Duration::ZERO).await;
        let r = resolver(
            rx.clone(),
            vec![closed_port().await, up],
            Duration::from_secs(5),
            MAX_IN_FLIGHT,
        )
        .await;
        let start = std::time::Instant::now();
        let f = ask_from(&c, r.addr, &query(51, "example.com", TYPE_A, false), QUICK).await;
        assert_eq!(f.answers[0].3, vec![192, 0, 2, 1]);
        assert!(start.elapsed() < QUICK, "{:?}", start.elapsed());
        drop(r);
        up_task.abort();

        // A silent first server: the second is asked after the timeout.
        let (silent, _silent_socket) = silent_upstream().await;
        let (up, up_task) = fake_upstream(Duration::ZERO).await;
        let r = resolver(rx.clone(), vec![silent, up], timeout, MAX_IN_FLIGHT).await;
        let start = std::time::Instant::now();
        let f = ask_from(&c, r.addr, &query(52, "example.com", TYPE_A, false), QUICK).await;
        assert_eq!((f.id, f.answers[0].3.clone()), (52, vec![192, 0, 2, 1]));
        assert!(start.elapsed() >= timeout, "{:?}", start.elapsed());
        drop(r);
        up_task.abort();

        // A slow first server answering after the second was asked still wins.
        let (slow, slow_task) = fake_upstream(Duration::from_millis(400)).await;
        let (silent, _silent_socket) = silent_upstream().await;
        let r = resolver(rx, vec![slow, silent], timeout, MAX_IN_FLIGHT).await;
        let f = ask_from(&c, r.addr, &query(53, "example.com", TYPE_A, false), QUICK).await;
        assert_eq!((f.id, f.rcode, f.answers.len()), (53, 0, 1));
        slow_task.abort();
    }

    #[tokio::test]
    async fn forwarded_queries_do_not_block_each_other_and_are_bounded() {
        let (slow, slow_task) = fake_upstream(Duration::from_millis(1000)).await;
        let (_tx, rx) = shared(names());
        let r = resolver(rx, vec![slow], QUICK, 2).await;
        let (c1, c2, c3) = (client().await, client().await, client().await);
        let start = std::time::Instant::now();
        c1.send_to(&query(61, "one.example", TYPE_A, false), r.addr)
            .await
            .unwrap();
        c2.send_to(&query(62, "two.example", TYPE_A, false), r.addr)
            .await
            .unwrap();
        // Both slow ones are in flight: a third is refused at once, a local name answered.
        let full = ask_from(
            &c3,
            r.addr,
            &query(63, "three.example", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!((full.id, full.rcode), (63, 2));
        let local = ask_from(
            &c3,
            r.addr,
            &query(64, "app.ns.db.ns", TYPE_A, false),
            QUICK,
        )
        .await;
        assert_eq!(local.answers.len(), 1);
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "{:?}",
            start.elapsed()
        );
        // The two slow ones come back together, not one after the other.
        let mut buf = vec![0u8; 4096];
        for (c, id) in [(&c1, 61), (&c2, 62)] {
            let (len, _) = tokio::time::timeout(QUICK, c.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let p = parse_response(&buf[..len]);
            assert_eq!((p.id, p.rcode, p.answers.len()), (id, 0, 1));
        }
        assert!(
            start.elapsed() < Duration::from_millis(1800),
            "{:?}",
            start.elapsed()
        );
        slow_task.abort();
    }

    #[test]
    fn resolv_conf() {
        let text = "\
# Generated by NetworkManager
search example.lan
options edns0 trust-ad
nameserver 127.0.0.53
; nameserver 10.9.9.9
nameserver\t10.0.0.2   # the router
nameserver fe80::1%lo
nameserver not-an-address
nameserver
nameserver 2001:db8::53
";
        let servers = upstream_from_resolv_conf(text);
        let lo = nix::net::if_::if_nametoindex("lo").unwrap();
        assert_eq!(
            servers,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap(),
                SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, lo).into(),
            ]
        );
        assert_eq!(
            upstream_from_resolv_conf(
                "nameserver ::1\nnameserver fe80::2%7\nnameserver 8.8.8.8\nnameserver 1.1.1.1\n"
            ),
            vec![
                "[::1]:53".parse::<SocketAddr>().unwrap(),
                SocketAddrV6::new("fe80::2".parse().unwrap(), 53, 0, 7).into(),
                "8.8.8.8:53".parse().unwrap(),
            ],
            "IPv6, a numeric scope, three at most"
        );
        assert!(upstream_from_resolv_conf("nameserver fe80::1%nosuchif0\n").is_empty());
        assert!(upstream_from_resolv_conf("").is_empty());
        assert!(upstream_from_resolv_conf("search lan\noptions ndots:2\n").is_empty());
    }
}
