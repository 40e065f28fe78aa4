//! The endpoint in use for one peer, and how it was learned: a candidate (configured,
//! advertised by the peer, observed by another member), or **roamed** to, WireGuard's rule: the
//! source of the last datagram that decrypted and passed the replay check.
//!
//! Two writers, each on a change only: the reconcile step picks a candidate while nothing
//! authenticated the endpoint in use lately ([`EndpointCell::pick`]); an RX worker moves it
//! to where authenticated traffic comes from ([`EndpointCell::heard_from`]). The per-packet
//! work is one `ArcSwap` load and a comparison; a move allocates one `Arc` and takes the
//! change lock, once per move.
//!
//! Several flows from one peer come from several source ports of one address: a datagram from
//! another port of the address in use does not move the endpoint while the one in use is
//! heard (within [`ROAM_QUIET`]), or ever when the peer listens there (an advertised
//! endpoint). A datagram from another address moves it at once: the peer roamed, or its NAT
//! mapping changed.
//!
//! NAT: a peer whose authenticated traffic comes from an address it does not advertise is
//! behind a NAT (as this node sees it); this node is behind one (as the peer sees it) when the
//! peer's signed path summary reports our traffic from an address we do not advertise. Either
//! way the pair needs keepalives to hold the mapping open, and one UDP flow: a NAT (conntrack)
//! passes answers only from the address and port the mapping was made towards, so datagrams
//! from our other source ports would be dropped.

use arc_swap::{ArcSwap, ArcSwapOption};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::peers::{Endpoint, EndpointSource};
use crate::stats::Stamp;

/// A datagram from another port of the address in use moves the endpoint only once the one in
/// use was not heard for this long (another of the peer's flows otherwise).
pub(crate) const ROAM_QUIET: Duration = Duration::from_secs(1);
/// The endpoint in use counts as working while it authenticated something within this: the
/// reconcile step then leaves it alone, and handshakes go to it only. Longer than the NAT
/// keepalive interval, so an idle pair that keeps its mapping keeps its endpoint.
pub(crate) const WORKING: Duration = Duration::from_secs(40);

/// Woken when a peer's endpoint in use moves or starts to authenticate traffic: the gossip
/// driver then reacts at once (what it reports of its peers, the relay ports it keeps and
/// chooses), not at its next tick. A spurious wake-up costs one pass.
pub(crate) static CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The peer is behind a NAT, as this node sees it.
pub(crate) const PEER_NAT: u8 = 1;
/// This node is behind a NAT, as the peer sees it.
pub(crate) const SELF_NAT: u8 = 2;

/// What a peer's summary says of where it sees this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing (yet).
    Nothing,
    /// At an address this node advertises.
    Direct,
    /// At an address this node does not advertise: through a NAT.
    Elsewhere(SocketAddr),
}

/// How the endpoint in use was learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum How {
    /// A candidate of the peer's record (or config), picked by the reconcile step.
    Candidate(EndpointSource),
    /// Authenticated traffic came from there.
    Roamed,
    /// The relay port this member keeps for the pair (no direct path works).
    Relay(Arc<str>),
}

/// The relay port chosen for a pair, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayUse {
    pub(crate) addr: SocketAddr,
    /// The member that keeps it.
    pub(crate) via: Arc<str>,
    /// Why this relay, in a sentence.
    pub(crate) why: String,
}

/// The last change of the endpoint in use.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) how: How,
    pub(crate) at: SystemTime,
    /// What it was before (none for the first).
    pub(crate) from: Option<SocketAddr>,
}

/// The endpoint in use, what authenticated it last, and the pair's NAT state.
#[derive(Debug)]
pub(crate) struct EndpointCell {
    in_use: ArcSwap<SocketAddr>,
    /// When the endpoint in use last authenticated a datagram (`Stamp` ms, 0: never).
    heard: AtomicU64,
    /// The peer listens at the endpoint in use (one it advertises), so other ports of that
    /// address are its other flows, never a move.
    listens: AtomicBool,
    /// [`PEER_NAT`] | [`SELF_NAT`].
    nat: AtomicU8,
    /// Where the peer reports seeing this node's traffic from, when we do not advertise it
    /// (or, while it has reported nothing, where others see this node behind its NAT).
    seen_as: Mutex<Option<SocketAddr>>,
    /// The peer reported this node at an address we advertise: no NAT between us, whatever
    /// others see.
    direct: AtomicBool,
    /// The relay port chosen for the pair, if any (`relay/choose.rs`): a datagram from it does
    /// not move a direct endpoint heard within [`ROAM_QUIET`] (a direct path, once found, wins).
    relay: ArcSwapOption<RelayUse>,
    /// The endpoint in use moved to the relay port: the WireGuard control thread sends the
    /// handshake in flight there at once ([`EndpointCell::take_moved_to_relay`]).
    moved_to_relay: AtomicBool,
    change: Mutex<Change>,
}

impl EndpointCell {
    pub(crate) fn new(first: Option<&Endpoint>) -> Self {
        let addr = first.map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |e| e.addr);
        EndpointCell {
            in_use: ArcSwap::from_pointee(addr),
            heard: AtomicU64::new(0),
            listens: AtomicBool::new(true),
            nat: AtomicU8::new(0),
            seen_as: Mutex::new(None),
            direct: AtomicBool::new(false),
            relay: ArcSwapOption::empty(),
            moved_to_relay: AtomicBool::new(false),
            change: Mutex::new(Change {
                how: How::Candidate(first.map_or(EndpointSource::Configured, |e| e.source.clone())),
                at: SystemTime::now(),
                from: None,
            }),
        }
    }

    /// Where datagrams go now.
    #[inline]
    pub(crate) fn get(&self) -> SocketAddr {
        **self.in_use.load()
    }

    /// An authenticated datagram came from `src` (the RX path, per datagram that decrypted).
    /// `advertised`: whether `src` is one of the peer's own endpoints, asked only on a move.
    #[inline]
    pub(crate) fn heard_from(
        &self,
        src: SocketAddr,
        now: Stamp,
        advertised: impl FnOnce(SocketAddr) -> bool,
    ) {
        let cur = self.get();
        let listens = self.listens.load(Ordering::Relaxed);
        // From the endpoint in use, or from another of its flows where it listens: heard.
        if cur == src || (listens && cur.ip() == src.ip()) {
            let was = self.heard.load(Ordering::Relaxed);
            if was != now.raw() {
                self.heard.store(now.raw(), Ordering::Relaxed);
                if Stamp::from_raw(was).is_none_or(|t| t.age(now) >= WORKING) {
                    started_working();
                }
            }
            return;
        }
        if cur.ip() == src.ip() || self.is_relay(src) {
            let quiet = Stamp::from_raw(self.heard.load(Ordering::Relaxed))
                .is_none_or(|t| t.age(now) >= ROAM_QUIET);
            if !quiet {
                return;
            }
        }
        self.roam(src, now, advertised(src));
    }

    /// Whether `src` is the pair's relay port (asked only when `src` is not the endpoint in
    /// use: one load).
    #[inline]
    fn is_relay(&self, src: SocketAddr) -> bool {
        self.relay.load().as_deref().is_some_and(|r| r.addr == src)
    }

    /// Whether the endpoint in use is the pair's relay port.
    pub(crate) fn relayed(&self) -> bool {
        self.is_relay(self.get())
    }

    /// Whether the endpoint in use moved to the relay port since the last call.
    pub(crate) fn take_moved_to_relay(&self) -> bool {
        self.moved_to_relay.load(Ordering::Relaxed)
            && self.moved_to_relay.swap(false, Ordering::Relaxed)
    }

    /// The relay port chosen for the pair (`None`: none).
    pub(crate) fn relay(&self) -> Option<RelayUse> {
        self.relay.load().as_deref().cloned()
    }

    /// Sets the pair's relay port, `to` kept by member `via`, and moves the endpoint in use
    /// there when it authenticated nothing lately or was the previous relay port (that relay is
    /// gone or worse): switching between relay and direct is a move of this one endpoint, the
    /// session untouched. True when the endpoint in use moved.
    pub(crate) fn set_relay(&self, to: Option<RelayUse>, now: Stamp) -> bool {
        let old = self.relay().map(|r| r.addr);
        if self.relay.load().as_deref() != to.as_ref() {
            self.relay.store(to.clone().map(Arc::new));
        }
        let Some(RelayUse { addr, via, .. }) = to else {
            return false;
        };
        let cur = self.get();
        // Stay on a working endpoint unless it is the previous relay's port.
        let stay = old != Some(cur) && self.working(now);
        if cur == addr || stay {
            return false;
        }
        let mut c = self.change.lock().unwrap_or_else(|p| p.into_inner());
        self.in_use.store(Arc::new(addr));
        self.listens.store(false, Ordering::Relaxed);
        self.moved_to_relay.store(true, Ordering::Relaxed);
        *c = Change {
            how: How::Relay(via),
            at: SystemTime::now(),
            from: Some(cur),
        };
        true
    }

    #[cold]
    fn roam(&self, to: SocketAddr, now: Stamp, listens: bool) {
        let mut c = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.get();
        self.in_use.store(Arc::new(to));
        self.heard.store(now.raw(), Ordering::Relaxed);
        self.listens.store(listens, Ordering::Relaxed);
        self.set_nat_bit(PEER_NAT, !listens);
        *c = Change {
            how: How::Roamed,
            at: SystemTime::now(),
            from: Some(from),
        };
        CHANGED.notify_one();
    }

    /// The reconcile step's pick: `best` (the record's first candidate) becomes the endpoint in
    /// use unless the one in use authenticated traffic lately. True when it moved.
    pub(crate) fn pick(&self, best: &Endpoint, now: Stamp) -> bool {
        if self.get() == best.addr || self.working(now) {
            return false;
        }
        let mut c = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.get();
        self.in_use.store(Arc::new(best.addr));
        self.listens.store(true, Ordering::Relaxed);
        self.set_nat_bit(PEER_NAT, false);
        *c = Change {
            how: How::Candidate(best.source.clone()),
            at: SystemTime::now(),
            from: Some(from),
        };
        true
    }

    /// Whether the endpoint in use authenticated something within [`WORKING`].
    pub(crate) fn working(&self, now: Stamp) -> bool {
        Stamp::from_raw(self.heard.load(Ordering::Relaxed)).is_some_and(|t| t.age(now) < WORKING)
    }

    /// When the endpoint in use last authenticated something.
    pub(crate) fn heard(&self) -> Option<Stamp> {
        Stamp::from_raw(self.heard.load(Ordering::Relaxed))
    }

    /// The pair's NAT bits ([`PEER_NAT`], [`SELF_NAT`]).
    #[inline]
    pub(crate) fn nat(&self) -> u8 {
        self.nat.load(Ordering::Relaxed)
    }

    /// What the peer's signed summary says of this node: `Seen::Elsewhere(at)`, an address we
    /// do not advertise (this node is behind a NAT towards it); `Seen::Direct`, one we do (no
    /// NAT between us, remembered until it says otherwise); `Seen::Nothing` yet. `behind`:
    /// where other members see this node behind its NAT, if any do: until the peer says
    /// otherwise, it is presumed to see the same, and the pair starts its keepalives (the
    /// first makes the mapping a peer behind no NAT of its own needs to answer).
    pub(crate) fn set_seen(&self, seen: Seen, behind: Option<SocketAddr>) {
        let at = match seen {
            Seen::Elsewhere(at) => {
                self.direct.store(false, Ordering::Relaxed);
                Some(at)
            }
            Seen::Direct => {
                self.direct.store(true, Ordering::Relaxed);
                None
            }
            Seen::Nothing => behind.filter(|_| !self.direct.load(Ordering::Relaxed)),
        };
        *self.seen_as.lock().unwrap_or_else(|p| p.into_inner()) = at;
        self.set_nat_bit(SELF_NAT, at.is_some());
    }

    pub(crate) fn seen_as(&self) -> Option<SocketAddr> {
        *self.seen_as.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_nat_bit(&self, bit: u8, on: bool) {
        if on {
            self.nat.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.nat.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// The last change of the endpoint in use.
    pub(crate) fn change(&self) -> Change {
        self.change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The endpoint in use authenticated its first datagram (lately): worth a reaction.
#[cold]
fn started_working() {
    CHANGED.notify_one();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ep(a: &str) -> Endpoint {
        Endpoint {
            addr: a.parse().unwrap(),
            source: EndpointSource::Gossiped,
        }
    }

    #[test]
    fn authenticated_traffic_moves_the_endpoint_and_a_candidate_does_not_move_a_working_one() {
        let cell = EndpointCell::new(Some(&ep("192.168.1.1:51820")));
        let t0 = Stamp::now();
        let nat: SocketAddr = "198.18.0.101:51820".parse().unwrap();
        // From the address in use: heard, nothing moves.
        cell.heard_from("192.168.1.1:51820".parse().unwrap(), t0, |_| true);
        assert_eq!(cell.nat(), 0);
        // Another port of an address it listens at: another of its flows.
        cell.heard_from("192.168.1.1:52660".parse().unwrap(), t0, |_| true);
        assert_eq!(cell.get(), "192.168.1.1:51820".parse().unwrap());
        // From its NAT: it roamed, and it is behind NAT.
        cell.heard_from(nat, t0, |_| false);
        assert_eq!(cell.get(), nat);
        assert_eq!(cell.nat(), PEER_NAT);
        assert_eq!(cell.change().how, How::Roamed);
        // Another mapping of the same NAT while the one in use is heard: no move.
        let other: SocketAddr = "198.18.0.101:40000".parse().unwrap();
        cell.heard_from(other, t0, |_| false);
        assert_eq!(cell.get(), nat);
        // A record's candidate does not move a working endpoint.
        assert!(!cell.pick(&ep("192.168.1.9:51820"), t0));
        assert_eq!(cell.get(), nat);
        assert!(cell.working(t0));
        // Seen through a NAT by the peer: our bit.
        let public: SocketAddr = "198.18.0.55:51820".parse().unwrap();
        cell.set_seen(Seen::Elsewhere(public), None);
        assert_eq!(cell.nat(), PEER_NAT | SELF_NAT);
        // Seen directly: no bit, even while others see us through a NAT.
        cell.set_seen(Seen::Direct, Some(public));
        assert_eq!(cell.nat(), PEER_NAT);
        cell.set_seen(Seen::Nothing, Some(public));
        assert_eq!(cell.nat(), PEER_NAT);
    }

    #[test]
    fn a_node_behind_nat_presumes_it_towards_a_peer_that_said_nothing_yet() {
        let cell = EndpointCell::new(Some(&ep("198.18.0.30:51820")));
        let public: SocketAddr = "198.18.0.101:4000".parse().unwrap();
        cell.set_seen(Seen::Nothing, None);
        assert_eq!(cell.nat(), 0);
        cell.set_seen(Seen::Nothing, Some(public));
        assert_eq!((cell.nat(), cell.seen_as()), (SELF_NAT, Some(public)));
    }

    #[test]
    fn a_relay_port_is_taken_while_nothing_works_and_a_direct_path_wins_over_it() {
        let cell = EndpointCell::new(Some(&ep("192.168.2.1:51820")));
        let t0 = Stamp::now();
        let relay: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let use_relay = |addr: SocketAddr, via: &str| RelayUse {
            addr,
            via: Arc::from(via),
            why: "test".into(),
        };
        // Nothing works: the relay port becomes the endpoint in use.
        assert!(cell.set_relay(Some(use_relay(relay, "pub1")), t0));
        assert_eq!(
            (cell.get(), cell.change().how),
            (relay, How::Relay(Arc::from("pub1")))
        );
        cell.heard_from(relay, t0, |_| false);
        // The relay dies: its replacement takes over at once, though the old one worked.
        let other: SocketAddr = "198.18.0.2:41000".parse().unwrap();
        assert!(cell.set_relay(Some(use_relay(other, "pub2")), t0));
        assert_eq!(cell.get(), other);
        cell.heard_from(other, t0, |_| false);
        // A direct path answers: it takes over; the relay's copies do not move it back
        // while the direct one is heard.
        let direct: SocketAddr = "198.18.0.102:5000".parse().unwrap();
        cell.heard_from(direct, t0, |_| false);
        assert_eq!(cell.get(), direct);
        cell.heard_from(other, t0, |_| false);
        assert_eq!(cell.get(), direct);
        assert!(!cell.set_relay(Some(use_relay(other, "pub2")), t0));
        // Once the direct path is quiet, the relayed datagrams move it back.
        let later = Stamp::from_raw(t0.raw() + 2_000).unwrap();
        cell.heard_from(other, later, |_| false);
        assert_eq!(cell.get(), other);
    }
}
