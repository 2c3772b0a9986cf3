//! Address pools: service and instance IPs from `10.30.0.0/16`, worker subnets (`/26`) from
//! `10.18.0.0`. One pool type serves both: a range of IPv4 addresses taken in steps (1 for
//! single addresses, 64 for `/26` subnets). Allocation walks forward from a cursor, so an
//! address that was just released is not handed out again at once; released addresses do
//! return to the pool (Oakestra never recycles them).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Why an address cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{ip} is outside {range}")]
    OutsideRange { ip: Ipv4Addr, range: String },
    #[error("{0} is already in use")]
    Taken(Ipv4Addr),
    #[error("no free address left in {0}")]
    Exhausted(String),
}

/// Addresses a pending change took from a pool, kept beside it instead of in a copy of it (a
/// pool holds one entry per address in use: copying 50,000 of them per placement was most of
/// the root's time). [`Ipv4Pool::apply`] adds them once the change is applied; a change that
/// is dropped simply drops them.
#[derive(Debug, Default)]
pub struct Taken {
    addrs: BTreeSet<u32>,
    /// The pool's cursor after these allocations.
    cursor: Option<u32>,
}

/// A pool of IPv4 addresses (or subnet bases) from `first` to `last`, `step` apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Pool {
    first: u32,
    last: u32,
    step: u32,
    used: BTreeSet<u32>,
    /// Where the next search starts.
    cursor: u32,
}

impl Ipv4Pool {
    /// A pool of every `step`-th address from `first` to `last` (inclusive).
    pub fn new(first: Ipv4Addr, last: Ipv4Addr, step: u32) -> Self {
        let (first, last) = (u32::from(first), u32::from(last));
        Ipv4Pool {
            first,
            last: last.max(first),
            step: step.max(1),
            used: BTreeSet::new(),
            cursor: first,
        }
    }

    /// Service and instance addresses: `10.30.0.1` to `10.30.255.254`.
    pub fn service_addresses() -> Self {
        Ipv4Pool::new(
            Ipv4Addr::new(10, 30, 0, 1),
            Ipv4Addr::new(10, 30, 255, 254),
            1,
        )
    }

    /// Worker subnets: one `/26` each, from `10.18.0.0` to `10.29.255.192`.
    pub fn worker_subnets() -> Self {
        Ipv4Pool::new(
            Ipv4Addr::new(10, 18, 0, 0),
            Ipv4Addr::new(10, 29, 255, 192),
            64,
        )
    }

    /// The range as text, for messages.
    pub fn range(&self) -> String {
        format!(
            "{}-{}",
            Ipv4Addr::from(self.first),
            Ipv4Addr::from(self.last)
        )
    }

    /// How many addresses the pool holds in all.
    pub fn capacity(&self) -> u32 {
        // saturating and max(1): a pool read back from storage may not have come through `new`
        self.last.saturating_sub(self.first) / self.step.max(1) + 1
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        (self.first..=self.last).contains(&v) && (v - self.first).is_multiple_of(self.step.max(1))
    }

    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&u32::from(ip))
    }

    /// Takes the next free address after the cursor, wrapping around once.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, AddressError> {
        let mut t = Taken::default();
        let ip = self.allocate_in(&mut t)?;
        self.apply(t);
        Ok(ip)
    }

    /// [`Ipv4Pool::allocate`] into `t`: the next address free both here and in `t`, after
    /// the cursor as `t` left it. The pool itself is not changed.
    pub fn allocate_in(&self, t: &mut Taken) -> Result<Ipv4Addr, AddressError> {
        if (self.used.len() + t.addrs.len()) as u64 >= u64::from(self.capacity()) {
            return Err(AddressError::Exhausted(self.range()));
        }
        let cursor = t.cursor.unwrap_or(self.cursor);
        let mut v = if self.contains(Ipv4Addr::from(cursor)) {
            cursor
        } else {
            self.first
        };
        loop {
            if !self.used.contains(&v) && !t.addrs.contains(&v) {
                t.addrs.insert(v);
                t.cursor = Some(self.advance(v));
                return Ok(Ipv4Addr::from(v));
            }
            v = self.advance(v);
        }
    }

    /// Adds what a change took ([`Ipv4Pool::allocate_in`], [`Ipv4Pool::reserve_in`]).
    pub fn apply(&mut self, t: Taken) {
        self.used.extend(t.addrs);
        if let Some(c) = t.cursor {
            self.cursor = c;
        }
    }

    fn advance(&self, v: u32) -> u32 {
        match v.checked_add(self.step.max(1)) {
            Some(n) if n <= self.last => n,
            _ => self.first,
        }
    }

    /// Takes a specific address (a user-pinned `rr_ip`).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), AddressError> {
        let mut t = Taken::default();
        self.reserve_in(&mut t, ip)?;
        self.apply(t);
        Ok(())
    }

    /// [`Ipv4Pool::reserve`] into `t`; the pool itself is not changed.
    pub fn reserve_in(&self, t: &mut Taken, ip: Ipv4Addr) -> Result<(), AddressError> {
        if !self.contains(ip) {
            return Err(AddressError::OutsideRange {
                ip,
                range: self.range(),
            });
        }
        let v = u32::from(ip);
        if self.used.contains(&v) || !t.addrs.insert(v) {
            return Err(AddressError::Taken(ip));
        }
        Ok(())
    }

    /// Returns an address to the pool; `false` if it was not in use.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.used.remove(&u32::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn service_pool_hands_out_addresses_in_order_and_reuses_released_ones_later() {
        let mut p = Ipv4Pool::service_addresses();
        assert_eq!(p.capacity(), 65534);
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.1"));
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.2"));
        assert!(p.release(ip("10.30.0.1")));
        assert!(!p.release(ip("10.30.0.1")));
        // not reused at once: the cursor moves on
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.3"));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn a_change_takes_addresses_beside_the_pool_until_it_is_applied() {
        let mut p = Ipv4Pool::new(ip("10.30.0.1"), ip("10.30.0.4"), 1);
        p.allocate().unwrap();
        let mut t = Taken::default();
        assert_eq!(p.allocate_in(&mut t).unwrap(), ip("10.30.0.2"));
        p.reserve_in(&mut t, ip("10.30.0.4")).unwrap();
        assert_eq!(
            p.reserve_in(&mut t, ip("10.30.0.4")),
            Err(AddressError::Taken(ip("10.30.0.4")))
        );
        assert_eq!(
            p.reserve_in(&mut t, ip("10.30.0.1")),
            Err(AddressError::Taken(ip("10.30.0.1")))
        );
        assert_eq!(p.allocate_in(&mut t).unwrap(), ip("10.30.0.3"));
        assert!(matches!(
            p.allocate_in(&mut t),
            Err(AddressError::Exhausted(_))
        ));
        // The pool is unchanged until the change is applied.
        assert_eq!(p.in_use(), 1);
        p.apply(t);
        assert_eq!(p.in_use(), 4);
        assert!(p.release(ip("10.30.0.2")));
        // The cursor moved past what the change took: the released address comes next.
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.2"));
    }

    #[test]
    fn pinned_addresses() {
        let mut p = Ipv4Pool::service_addresses();
        p.reserve(ip("10.30.30.30")).unwrap();
        assert_eq!(
            p.reserve(ip("10.30.30.30")),
            Err(AddressError::Taken(ip("10.30.30.30")))
        );
        assert!(matches!(
            p.reserve(ip("192.168.178.4")),
            Err(AddressError::OutsideRange { .. })
        ));
        assert!(matches!(
            p.reserve(ip("10.30.0.0")),
            Err(AddressError::OutsideRange { .. })
        ));
        // allocation skips what was pinned
        let mut small = Ipv4Pool::new(ip("10.30.0.1"), ip("10.30.0.3"), 1);
        small.reserve(ip("10.30.0.1")).unwrap();
        assert_eq!(small.allocate().unwrap(), ip("10.30.0.2"));
    }

    #[test]
    fn exhaustion_and_wrap_around() {
        let mut p = Ipv4Pool::new(ip("10.30.0.1"), ip("10.30.0.3"), 1);
        let all: Vec<_> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(all, [ip("10.30.0.1"), ip("10.30.0.2"), ip("10.30.0.3")]);
        assert!(matches!(p.allocate(), Err(AddressError::Exhausted(_))));
        p.release(ip("10.30.0.2"));
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.2"));
    }

    #[test]
    fn worker_subnets_are_slash_26() {
        let mut p = Ipv4Pool::worker_subnets();
        assert_eq!(p.allocate().unwrap(), ip("10.18.0.0"));
        assert_eq!(p.allocate().unwrap(), ip("10.18.0.64"));
        assert!(!p.contains(ip("10.18.0.65")));
        assert!(p.contains(ip("10.29.255.192")));
        assert_eq!(p.capacity(), 12 * 256 * 4);
    }

    #[test]
    fn a_corrupt_stored_pool_does_not_hang_or_panic() {
        let p: Ipv4Pool = serde_json::from_str(
            r#"{"first":169738241,"last":169738240,"step":0,"used":[],"cursor":5}"#,
        )
        .unwrap();
        let mut p = p;
        assert_eq!(p.capacity(), 1);
        assert_eq!(p.allocate().unwrap(), ip("10.30.0.1"));
        assert!(p.allocate().is_err());
    }

    #[test]
    fn the_pool_persists_as_json() {
        let mut p = Ipv4Pool::service_addresses();
        p.allocate().unwrap();
        p.reserve(ip("10.30.9.9")).unwrap();
        let back: Ipv4Pool = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
