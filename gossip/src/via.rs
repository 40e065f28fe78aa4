//! Gossip across NAT: where a member's gossip really comes from.
//!
//! foca keys a member by the gossip address in its identity ([`crate::NodeId`]), which is the
//! address the member has on its own network. Behind a NAT nobody else can send to it: its
//! datagrams arrive from the NAT's public address and a port the NAT chose. So every SWIM
//! datagram's sender identity is compared with the address it really came from, and when they
//! differ, what is sent to that identity goes to where it came from instead (a NAT passes
//! answers to the mapping a datagram made). A member reached directly (its datagrams come from
//! its identity's address) has no entry. A member no node can reach at all is still probed
//! through others (SWIM's indirect probes), and its own probes create the mappings its
//! answers need.
//!
//! What this lets a member do: any holder of the cluster secret can send a SWIM datagram
//! naming another member's identity, as it can send any SWIM message (they are sealed with
//! the cluster secret, not signed per member). So where the daemon knows a member's address
//! from traffic that authenticated under its own key (its WireGuard endpoint in use), the
//! member is **pinned** there ([`Via::pin`]): while its gossip keeps coming from that address
//! (within [`PIN_HOLD`]), a datagram naming it from another address moves nothing (it is
//! counted), so a forger would have to send from behind the member's own NAT or silence it
//! first. A member whose NAT moved is followed once it has been quiet at the old address for
//! that long; meanwhile what is sent to it goes to the pinned address **and** to the address
//! that claims it ([`Via::routes`]), so a member whose NAT's address really changed answers
//! probes at once (SWIM's suspicion is shorter than the hold), and a forger gets copies of
//! SWIM datagrams any member can read, never the member's only ones.
//! Before that, an entry only moves where that member's SWIM traffic goes until its own next
//! datagram puts it back. Records, which decide routes, are signed by their owner whichever
//! way they travel. Entries are bounded ([`MAX_VIA`]) and forgotten when not refreshed within
//! [`VIA_TTL`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::identity::NodeId;

/// Members reached through a translated address, at most; the oldest go first past it.
pub(crate) const MAX_VIA: usize = 4096;
/// A translation not refreshed for this long is forgotten (the member went, or its NAT mapping
/// with it); SWIM probes every member far more often.
pub(crate) const VIA_TTL: Duration = Duration::from_secs(60);
/// A pinned member's translation heard within this holds against datagrams from elsewhere;
/// SWIM hears from every member several times a second in a small cluster, and within a few
/// seconds in a large one.
pub(crate) const PIN_HOLD: Duration = Duration::from_secs(3);

/// Identity address → where that member's datagrams come from, and when one last did.
#[derive(Debug, Default)]
pub(crate) struct Via {
    seen: HashMap<SocketAddr, (SocketAddr, Instant)>,
    /// Identity address → the address its owner's authenticated traffic comes from.
    pins: HashMap<SocketAddr, IpAddr>,
    /// Identity address of a pinned member → another address that named it within
    /// [`PIN_HOLD`] (refused, but sent to as well).
    contested: HashMap<SocketAddr, (SocketAddr, Instant)>,
    /// Datagrams naming a pinned member from another address: moved nothing.
    pub(crate) refused: u64,
}

impl Via {
    /// A SWIM datagram (`payload`, a foca message) came from `from`: note where its sender is.
    ///
    /// Returns the sender's identity address when the datagram came through a NAT and was
    /// taken (not refused by a pin): a member behind a NAT is reachable only through the
    /// mappings its own datagrams make, so hearing it is evidence that it is alive
    /// (`evidence.rs`), which keeps it up while others' mappings to it are stale (its NAT
    /// flushed or changed address) until its next datagram to them renews them.
    pub(crate) fn heard(
        &mut self,
        payload: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        // foca's header starts with the sender's identity.
        let (src, _) = postcard::take_from_bytes::<NodeId>(payload).ok()?;
        let ip = SocketAddr::new(src.addr.ip().to_canonical(), src.addr.port());
        if ip == from {
            self.seen.remove(&src.addr);
            return None;
        }
        if let Some(pin) = self.pins.get(&src.addr).filter(|p| **p != from.ip()) {
            let held = self.seen.get(&src.addr).is_some_and(|(via, t)| {
                via.ip() == *pin && now.saturating_duration_since(*t) < PIN_HOLD
            });
            if held {
                self.refused += 1;
                if self.contested.len() < MAX_VIA || self.contested.contains_key(&src.addr) {
                    self.contested.insert(src.addr, (from, now));
                }
                return None;
            }
        }
        if self.seen.len() >= MAX_VIA && !self.seen.contains_key(&src.addr) {
            self.expire(now);
            if self.seen.len() >= MAX_VIA {
                let oldest = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.seen.remove(&k);
                }
            }
        }
        self.contested.remove(&src.addr);
        self.seen.insert(src.addr, (from, now));
        Some(src.addr)
    }

    /// Where to send what is addressed to `addr`.
    pub(crate) fn route(&self, addr: SocketAddr) -> SocketAddr {
        self.seen.get(&addr).map_or(addr, |(via, _)| *via)
    }

    /// Where to send what is addressed to `addr`: [`Via::route`], and the address contesting
    /// a pinned member's, if one does.
    pub(crate) fn routes(&self, addr: SocketAddr) -> [Option<SocketAddr>; 2] {
        let also = self.contested.get(&addr).map(|(a, _)| *a);
        [Some(self.route(addr)), also]
    }

    /// Where the member whose identity address is `addr` is heard from, when not there.
    pub(crate) fn observed(&self, addr: SocketAddr) -> Option<SocketAddr> {
        self.seen.get(&addr).map(|(via, _)| *via)
    }

    /// Pins the member whose identity address is `addr` to `ip` (where its authenticated
    /// traffic comes from), or unpins it (`None`).
    pub(crate) fn pin(&mut self, addr: SocketAddr, ip: Option<IpAddr>) {
        match ip {
            Some(ip) => {
                if self.pins.len() < MAX_VIA || self.pins.contains_key(&addr) {
                    self.pins.insert(addr, ip);
                }
            }
            None => {
                self.pins.remove(&addr);
            }
        }
    }

    /// Forgets translations not refreshed within [`VIA_TTL`].
    pub(crate) fn expire(&mut self, now: Instant) {
        self.seen
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < VIA_TTL);
        self.contested
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < PIN_HOLD);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn swim_from(addr: &str) -> Vec<u8> {
        let id = NodeId {
            addr: addr.parse().unwrap(),
            epoch: 3,
        };
        let mut v = postcard::to_allocvec(&id).unwrap();
        v.extend_from_slice(&[1, 2, 3]);
        v
    }

    #[test]
    fn a_member_behind_nat_is_answered_where_it_came_from_until_it_is_heard_directly() {
        let mut v = Via::default();
        let now = Instant::now();
        let private: SocketAddr = "192.168.1.1:7946".parse().unwrap();
        let public: SocketAddr = "198.18.0.101:40000".parse().unwrap();
        assert_eq!(v.route(private), private);
        assert_eq!(
            v.heard(&swim_from("192.168.1.1:7946"), public, now),
            Some(private)
        );
        assert_eq!(v.route(private), public);
        assert_eq!(v.observed(private), Some(public));
        // Its NAT mapping moved: so do we.
        let moved: SocketAddr = "198.18.0.111:40000".parse().unwrap();
        v.heard(&swim_from("192.168.1.1:7946"), moved, now);
        assert_eq!(v.route(private), moved);
        // Heard from its own address: no translation.
        v.heard(&swim_from("192.168.1.1:7946"), private, now);
        assert_eq!(v.route(private), private);
        // Garbage is ignored; old entries expire.
        v.heard(b"\xff", public, now);
        v.heard(&swim_from("192.168.1.2:7946"), public, now);
        v.expire(now + VIA_TTL);
        assert_eq!(v.observed("192.168.1.2:7946".parse().unwrap()), None);
    }

    #[test]
    fn a_pinned_member_is_not_moved_by_a_datagram_from_elsewhere() {
        let mut v = Via::default();
        let now = Instant::now();
        let private: SocketAddr = "192.168.1.1:7946".parse().unwrap();
        let public: SocketAddr = "198.18.0.101:40000".parse().unwrap();
        v.heard(&swim_from("192.168.1.1:7946"), public, now);
        v.pin(private, Some(public.ip()));
        // Another member claims its identity from its own address: nothing moves, and it is
        // no evidence.
        let forger: SocketAddr = "198.18.0.66:7946".parse().unwrap();
        assert_eq!(v.heard(&swim_from("192.168.1.1:7946"), forger, now), None);
        assert_eq!((v.route(private), v.refused), (public, 1));
        // Sent to as well while it contests (the member's NAT may have moved there): never
        // instead of the pinned one; forgotten after the hold.
        assert_eq!(v.routes(private), [Some(public), Some(forger)]);
        v.expire(now + PIN_HOLD);
        assert_eq!(v.routes(private), [Some(public), None]);
        assert_eq!(v.heard(&swim_from("192.168.1.1:7946"), forger, now), None);
        // A new port of the pinned address (its NAT remapped): followed.
        let remapped: SocketAddr = "198.18.0.101:40001".parse().unwrap();
        v.heard(&swim_from("192.168.1.1:7946"), remapped, now);
        assert_eq!(v.route(private), remapped);
        // Quiet at the pinned address for a while (its NAT's address changed): followed.
        let moved: SocketAddr = "198.18.0.111:40001".parse().unwrap();
        v.heard(&swim_from("192.168.1.1:7946"), moved, now + PIN_HOLD);
        assert_eq!((v.route(private), v.refused), (moved, 2));
        assert_eq!(
            v.routes(private),
            [Some(moved), None],
            "taken: contested no more"
        );
        v.pin(private, None);
        v.heard(&swim_from("192.168.1.1:7946"), public, now);
        assert_eq!(v.route(private), public);
    }
}
