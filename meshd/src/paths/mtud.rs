//! Path-MTU discovery for one peer, sans-IO: [`MtuSearch`] says which probe sizes to send and
//! when, is told what came back, and says which MTU the peer's pod packets may have. The path
//! manager sends the probes (on the path the peer's packets take) and applies the result
//! ([`crate::link::PeerLink::set_mtu`]).
//!
//! A search in the spirit of RFC 8899 (PLPMTUD) and RFC 4821:
//! - nothing is probed for a peer without pod traffic: its MTU holds (the pod MTU, labelled
//!   unconfirmed, for a peer nobody has talked to), so discovery never sends to an idle peer,
//!   nor starts a WireGuard handshake with it. The first tick that sees traffic to a peer whose
//!   MTU was not confirmed within [`CONFIRM_BUSY`] probes it at once: on most paths that one
//!   probe confirms it. A peer is idle [`IDLE_AFTER`] after its last traffic, a search under
//!   way ends [`SEARCH_IDLE_AFTER`] after it (so a burst that met a black hole gets its answer);
//! - a size is *too big* only when its probe is lost [`STRIKES`] times while the small probe
//!   sent beside it each time comes back: loss of both is an outage, not an MTU, and counts
//!   for nothing;
//! - a failing size at or below the MTU in use is a black hole: the MTU drops at once to the
//!   largest size this search has seen pass (the floor when none), and the search goes on by
//!   halves between that and the failing size until one byte apart;
//! - found, the MTU is confirmed with one probe of its own size every [`CONFIRM_BUSY`] while
//!   the peer carries traffic (a path whose MTU shrank is a black hole found by those), and a
//!   search upward starts once the MTU has been below the ceiling for [`RAISE_AFTER`] and the
//!   peer carries traffic (a path that grew again).
//!
//! The floor ([`floor`]) is an underlay packet of [`FLOOR_UNDERLAY`] bytes, the IPv6 minimum,
//! less the encapsulation: it is assumed to pass and never probed.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::SMALL_PROBE;

/// The underlay packet size every path is assumed to carry: the IPv6 minimum MTU (RFC 8200).
pub const FLOOR_UNDERLAY: u16 = 1280;
/// Losses of one size, each beside a small probe that came back, that make it too big.
pub const STRIKES: u32 = 2;
/// How long an MTU probe (or the small one beside it) may take to come back: short, so a
/// search of a dozen sizes takes seconds; a slower path only finds a smaller MTU than it has,
/// which is safe, and searches up again later.
pub const MTU_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the MTU in use is confirmed while the peer carries traffic: a path whose MTU
/// shrank under a transfer is found within this and two probe timeouts (a pair of probes
/// every 2 s is about 1.5 KB/s, requests and replies, next to a flow of at least 40 KB/s).
pub const CONFIRM_BUSY: Duration = Duration::from_secs(2);
/// How long after its last pod traffic a peer is idle, and nothing is probed: longer than
/// the kernel paths' traffic counters are read apart (every 5 s), so a steady flow on a kernel
/// path never looks idle between two readings.
pub const IDLE_AFTER: Duration = Duration::from_secs(10);
/// How long after the last pod traffic a search under way goes on: long enough for a search
/// from the ceiling to the floor (a dozen sizes, each lost at most [`STRIKES`] times).
pub const SEARCH_IDLE_AFTER: Duration = Duration::from_secs(30);
/// How long an MTU below the ceiling is kept before a search upward.
pub const RAISE_AFTER: Duration = Duration::from_secs(600);
/// How soon a probe pair that found the path down (both lost) is sent again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The floor for an encapsulation of `overhead` bytes (the outer headers pod packets get).
pub fn floor(overhead: u16) -> u16 {
    FLOOR_UNDERLAY.saturating_sub(overhead)
}

/// How the MTU in use was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MtuSource {
    /// The configured (pod) MTU: discovery is off.
    Configured,
    /// Not confirmed by a probe yet (no pod traffic to the peer yet, or no probe came back):
    /// the pod MTU, or what a previous meshd found (from the route it left).
    Unconfirmed,
    /// A probe of this size came back.
    Probed,
    /// Nothing above the floor passed: the floor, assumed.
    Floor,
}

impl MtuSource {
    pub fn as_str(self) -> &'static str {
        match self {
            MtuSource::Configured => "configured",
            MtuSource::Unconfirmed => "unconfirmed",
            MtuSource::Probed => "probed",
            MtuSource::Floor => "floor",
        }
    }
}

/// A change of the MTU in use, for the log (once per change, not per probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuChange {
    pub from: u16,
    pub to: u16,
    /// The MTU in use stopped passing probes while small ones came back.
    pub black_hole: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sizes above `lo` and below `hi` are unknown; `size` is being probed.
    Search { lo: u16, hi: u16, size: u16 },
    /// The MTU in use is the answer; it is confirmed from time to time.
    Found { raise_at: Option<Instant> },
}

/// One probe pair awaiting its results.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    size: u16,
    big: Option<bool>,
    small: Option<bool>,
}

/// One peer's path-MTU search (see the module's text).
#[derive(Debug, Clone)]
pub struct MtuSearch {
    floor: u16,
    ceiling: u16,
    mtu: u16,
    source: MtuSource,
    confirmed: Option<SystemTime>,
    phase: Phase,
    /// Strikes against the size probed now.
    strikes: u32,
    in_flight: Option<InFlight>,
    next_at: Instant,
    /// When the peer last carried pod traffic (`None`: never).
    traffic_at: Option<Instant>,
    change: Option<MtuChange>,
    /// MTU probe bytes sent (requests, as IPv4 total lengths), for the cost's measure.
    probe_bytes: u64,
}

impl MtuSearch {
    /// A search between `floor` and `ceiling` (the pod MTU), starting at the ceiling with the
    /// peer's first pod traffic.
    pub fn new(floor: u16, ceiling: u16, now: Instant) -> MtuSearch {
        let floor = floor.min(ceiling);
        MtuSearch {
            floor,
            ceiling,
            mtu: ceiling,
            source: MtuSource::Unconfirmed,
            confirmed: None,
            phase: Phase::Search {
                lo: floor,
                hi: ceiling + 1,
                size: ceiling,
            },
            strikes: 0,
            in_flight: None,
            next_at: now,
            traffic_at: None,
            change: None,
            probe_bytes: 0,
        }
    }

    /// Start from `mtu` rather than the ceiling (what a previous meshd found, from the route
    /// it left): kept until probes say otherwise.
    pub fn resume(&mut self, mtu: u16) {
        self.mtu = mtu.clamp(self.floor, self.ceiling);
    }

    /// The MTU pod packets to the peer may have now.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn source(&self) -> MtuSource {
        self.source
    }

    /// When a probe of the MTU in use last came back (wall clock).
    pub fn confirmed(&self) -> Option<SystemTime> {
        self.confirmed
    }

    pub fn searching(&self) -> bool {
        matches!(self.phase, Phase::Search { .. })
    }

    /// Nothing is probed now: the peer carried no pod traffic lately (or ever).
    pub fn idle(&self, now: Instant) -> bool {
        let window = if self.searching() {
            SEARCH_IDLE_AFTER
        } else {
            IDLE_AFTER
        };
        self.traffic_at
            .is_none_or(|t| now.saturating_duration_since(t) >= window)
    }

    /// The peer never carried pod traffic (since this search began).
    pub fn untouched(&self) -> bool {
        self.traffic_at.is_none()
    }

    /// Bytes of MTU probes sent so far (IPv4 total lengths of the requests, small ones too).
    pub fn probe_bytes(&self) -> u64 {
        self.probe_bytes
    }

    /// The size of the MTU probe to send now, if one is due; the caller sends it and a
    /// [`SMALL_PROBE`] beside it, on the path the peer's packets take, and reports both with
    /// [`MtuSearch::record`]. `busy`: the peer carried pod traffic (not probes) since the
    /// last call. Nothing is due while the peer is idle ([`MtuSearch::idle`]).
    pub fn poll(&mut self, now: Instant, busy: bool) -> Option<u16> {
        if busy {
            self.traffic_at = Some(now);
        }
        if self.in_flight.is_some() || self.idle(now) {
            return None;
        }
        if let Phase::Found { raise_at } = self.phase {
            if raise_at.is_some_and(|t| now >= t) && self.mtu < self.ceiling {
                self.phase = Phase::Search {
                    lo: self.mtu,
                    hi: self.ceiling + 1,
                    size: self.ceiling,
                };
                self.strikes = 0;
                self.next_at = now;
            }
        }
        if now < self.next_at {
            return None;
        }
        let size = match self.phase {
            Phase::Search { size, .. } => size,
            Phase::Found { .. } => self.mtu,
        };
        self.in_flight = Some(InFlight {
            size,
            big: None,
            small: None,
        });
        self.probe_bytes += u64::from(size) + u64::from(SMALL_PROBE);
        Some(size)
    }

    /// A probe of `size` bytes asked for by [`MtuSearch::poll`] (or the small one beside it,
    /// [`SMALL_PROBE`] bytes) came back (`ok`) or timed out. Anything else is ignored.
    pub fn record(&mut self, size: u16, ok: bool, now: Instant) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        if size == f.size && f.big.is_none() {
            f.big = Some(ok);
        } else if size == SMALL_PROBE && f.small.is_none() {
            f.small = Some(ok);
        } else {
            return;
        }
        // A big probe back settles the pair without waiting for the small one.
        let done = match (f.big, f.small) {
            (Some(true), _) => Some(true),
            (Some(false), Some(true)) => Some(false),
            (Some(false), Some(false)) | (None, Some(false)) => None,
            _ => return,
        };
        let size = f.size;
        self.in_flight = None;
        match done {
            Some(true) => self.passed(size, now),
            Some(false) => self.failed(size, now),
            None => self.next_at = now + RETRY_AFTER,
        }
    }

    /// The change of the MTU in use since the last call, if any (to log once).
    pub fn take_change(&mut self) -> Option<MtuChange> {
        self.change.take()
    }

    /// Start over (the peer moved to another path): the MTU in use stays until probes say
    /// otherwise.
    pub fn restart(&mut self, now: Instant) {
        self.phase = Phase::Search {
            lo: self.floor,
            hi: self.ceiling + 1,
            size: self.ceiling,
        };
        self.strikes = 0;
        self.in_flight = None;
        self.next_at = now;
    }

    fn passed(&mut self, size: u16, now: Instant) {
        self.strikes = 0;
        if size >= self.mtu {
            self.confirmed = Some(SystemTime::now());
        }
        if size > self.mtu || (size == self.mtu && self.source != MtuSource::Probed) {
            self.set(size, MtuSource::Probed, false);
        }
        match self.phase {
            Phase::Search { hi, .. } => {
                self.next_search(size, hi, now);
            }
            Phase::Found { .. } => self.next_at = now + CONFIRM_BUSY,
        }
    }

    fn failed(&mut self, size: u16, now: Instant) {
        self.strikes += 1;
        if self.strikes < STRIKES {
            // Once more, at once.
            self.next_at = now;
            return;
        }
        self.strikes = 0;
        let (lo, searching) = match self.phase {
            Phase::Search { lo, .. } => (lo, true),
            // The MTU in use failed: a black hole. Search again from the floor.
            Phase::Found { .. } => (self.floor, false),
        };
        if size <= self.mtu {
            let source = if lo > self.floor {
                MtuSource::Probed
            } else {
                MtuSource::Floor
            };
            self.set(lo, source, true);
        }
        self.next_search(lo, size, now);
        if searching && self.source == MtuSource::Floor && !self.searching() {
            // Nothing above the floor passed: the floor itself is probed once at once, so a
            // path of exactly that size shows as probed.
            self.next_at = now;
        }
    }

    /// `lo` passes and `hi` does not: probe halfway, or stop when they are one byte apart.
    fn next_search(&mut self, lo: u16, hi: u16, now: Instant) {
        self.next_at = now;
        if hi.saturating_sub(lo) <= 1 {
            if self.mtu == self.floor && self.source != MtuSource::Probed {
                self.source = MtuSource::Floor;
            }
            self.phase = Phase::Found {
                raise_at: (self.mtu < self.ceiling).then(|| now + RAISE_AFTER),
            };
            self.next_at = now + CONFIRM_BUSY;
            return;
        }
        let size = lo + (hi - lo) / 2;
        self.phase = Phase::Search { lo, hi, size };
    }

    fn set(&mut self, mtu: u16, source: MtuSource, black_hole: bool) {
        let from = self.change.map_or(self.mtu, |c| c.from);
        self.source = source;
        if mtu == self.mtu {
            return;
        }
        self.mtu = mtu;
        self.change = (from != mtu).then_some(MtuChange {
            from,
            to: mtu,
            black_hole,
        });
    }
}

#[cfg(test)]
#[path = "mtud_tests.rs"]
mod tests;
