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
    /// Every relay port members offer for the pair, and their relays (`relay/choose.rs`): the
    /// peer may use another than this node chose (it held other offers at the time), and
    /// roaming follows it there.
    offered: ArcSwap<Vec<(SocketAddr, Arc<str>)>>,
    /// The endpoint in use was an offered relay port that is offered no more (its relay died).
    relay_gone: AtomicBool,
    /// Relay ports offered since the WireGuard control thread last looked: each gets one
    /// datagram, so every relay offering the pair learns this side's port, whichever relay the
    /// peer ends up sending through ([`EndpointCell::take_fresh_offers`]).
    fresh_offers: Mutex<Vec<SocketAddr>>,
    has_fresh: AtomicBool,
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
            offered: ArcSwap::from_pointee(Vec::new()),
            relay_gone: AtomicBool::new(false),
            fresh_offers: Mutex::new(Vec::new()),
            has_fresh: AtomicBool::new(false),
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
            || self.offered.load().iter().any(|(a, _)| *a == src)
    }

    /// The relay that keeps `addr` for the pair, if it is a relay port chosen or offered.
    pub(crate) fn relay_via(&self, addr: SocketAddr) -> Option<Arc<str>> {
        if let Some(r) = self.relay.load().as_deref().filter(|r| r.addr == addr) {
            return Some(r.via.clone());
        }
        let offered = self.offered.load();
        offered
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, v)| v.clone())
    }

    /// Every relay port offered for the pair now, with its relay; call before
    /// [`EndpointCell::set_relay`]. An endpoint in use that was one and is offered no more
    /// (its relay died) is left at the next `set_relay`.
    pub(crate) fn set_offered(&self, offered: Vec<(SocketAddr, Arc<str>)>) {
        let before = self.offered.load();
        if **before == offered {
            return;
        }
        let cur = self.get();
        let had = |l: &[(SocketAddr, Arc<str>)]| l.iter().any(|(a, _)| *a == cur);
        if had(&before) && !had(&offered) {
            self.relay_gone.store(true, Ordering::Relaxed);
        }
        let fresh = offered
            .iter()
            .filter(|(a, _)| !before.iter().any(|(b, _)| b == a))
            .map(|(a, _)| *a);
        let mut list = self.fresh_offers.lock().unwrap_or_else(|p| p.into_inner());
        list.extend(fresh);
        self.has_fresh.store(!list.is_empty(), Ordering::Relaxed);
        self.offered.store(Arc::new(offered));
    }

    /// The relay ports offered since the last call (the control thread's, every tick: one
    /// load while there are none).
    pub(crate) fn take_fresh_offers(&self) -> Vec<SocketAddr> {
        if !self.has_fresh.swap(false, Ordering::Relaxed) {
            return Vec::new();
        }
        std::mem::take(&mut *self.fresh_offers.lock().unwrap_or_else(|p| p.into_inner()))
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
    /// there when it authenticated nothing lately, or when it is a relay's port that is offered
    /// no more (that relay died or is suspect). A working endpoint stays: a direct one, and a
    /// relay's port still offered (the one the pair started on, or the one the peer chose,
    /// which roaming followed), so both sides stay on one relay while it lives. Switching
    /// between relay and direct is a move of this one endpoint, the session untouched. True
    /// when the endpoint in use moved.
    pub(crate) fn set_relay(&self, to: Option<RelayUse>, now: Stamp) -> bool {
        let old = self.relay().map(|r| r.addr);
        if self.relay.load().as_deref() != to.as_ref() {
            self.relay.store(to.clone().map(Arc::new));
        }
        let gone = self.relay_gone.swap(false, Ordering::Relaxed);
        let Some(RelayUse { addr, via, .. }) = to else {
            return false;
        };
        let cur = self.get();
        // Stay on a working endpoint (a direct one, or the port of a relay the peer chose),
        // unless it is the relay this node chose before (the chooser keeps that one while it
        // is near the best: `relay::choose`), or a relay's port offered no more (its relay
        // died or is suspect).
        let stay = !gone && old != Some(cur) && self.working(now);
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
#[path = "endpoint_tests.rs"]
mod tests;
