//! Per-peer path choice: which way a peer's pod packets leave this node (host-gw, kernel
//! VXLAN, kernel WireGuard, meshd's userspace path), and why.
//!
//! [`PeerPath`] is the decision, with no I/O: it is told what this node and peer can do
//! ([`Offer`]) and how each probed path's probes fared ([`PeerPath::record`]), and it says when
//! to move ([`PeerPath::decide`]). The rules:
//! - a peer starts on the path a previous meshd left it on (adopted), else on its floor
//!   (userspace; the kernel VXLAN path with `datapath = "kernel"`), and moves up as soon as a
//!   better path passes its first probe;
//! - a path that loses [`LOSSES_TO_DEMOTE`] probes in a row is left for the best one below it
//!   that is passing (within 3 probe intervals and a timeout of the break: 2.5 s with a few
//!   peers, longer with many, see [`probe_interval`]);
//! - a path that was left returns only after passing probes without a loss for a quiet period
//!   that doubles with each demotion ([`quiet`]), so a flapping path does not flap the peer;
//! - on a veth underlay, with a floor below it, the kernel VXLAN path is taken only for a peer
//!   known to receive in its kernel ([`receiver`]): for any other it would cost more than the
//!   userspace path.
//!
//! What probing costs is bounded ([`cadence`]): most probes are small, and a node keeps to a
//! probe rate whatever the cluster's size. A small probe's pass never hides a failing pod-sized
//! one ([`PeerPath::probe_size`], [`PeerPath::record_probe`]).
//!
//! [`manager`] runs it: probes, routes and the status.

mod cadence;
pub(crate) mod cell;
pub mod manager;
pub mod mtud;
pub mod receiver;
mod why;

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime};

use crate::kernel::Refusal;
pub use cadence::{
    probe_interval, FULL_PROBE_EVERY, MAX_PROBE_RATE, MIN_PROBE_INTERVAL, SMALL_PROBE,
};
use receiver::ReceiveCheck;
pub use why::{clock, REASON_KINDS};

/// Probes lost in a row that demote a path.
pub const LOSSES_TO_DEMOTE: u32 = 3;
/// The quiet period before a path is returned to after its first demotion.
pub const BASE_QUIET: Duration = Duration::from_secs(10);
/// The longest quiet period.
pub const MAX_QUIET: Duration = Duration::from_secs(160);
/// A path in use this long without a failure forgets its demotions.
pub const FORGIVE_AFTER: Duration = Duration::from_secs(600);

/// The ways out, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    HostGw,
    KernelVxlan,
    KernelWireguard,
    Userspace,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::HostGw => "host-gw",
            PathKind::KernelVxlan => "kernel-vxlan",
            PathKind::KernelWireguard => "kernel-wireguard",
            PathKind::Userspace => "userspace",
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a path is not on offer to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOffered {
    /// The configuration rules it out (the text names the key).
    Config(String),
    /// The kernel refused to make its device.
    Refused(Refusal),
    /// host-gw: the peer is not on this node's L2 segment.
    NotOnSegment,
}

/// One better-than-floor path and whether this peer can have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub kind: PathKind,
    pub available: Result<(), NotOffered>,
}

/// How one probed path is doing.
#[derive(Debug, Clone, Default)]
struct Track {
    lost_in_row: u32,
    passing_since: Option<Instant>,
    ever_passed: bool,
    failing: bool,
    failing_since: Option<SystemTime>,
    demotions: u32,
    sent: u64,
    lost: u64,
    /// Probes sent since the last pod-sized one.
    since_full: u32,
    /// The last pod-sized probe resolved passed.
    full_ok: bool,
}

impl Track {
    fn promotable(&self, now: Instant) -> bool {
        !self.failing
            && self.ever_passed
            && self
                .passing_since
                .is_some_and(|t| now.saturating_duration_since(t) >= quiet(self.demotions))
    }
}

/// The quiet period after `demotions` demotions: none before the first, then
/// [`BASE_QUIET`] doubling up to [`MAX_QUIET`].
pub fn quiet(demotions: u32) -> Duration {
    match demotions {
        0 => Duration::ZERO,
        n => BASE_QUIET
            .saturating_mul(1 << (n - 1).min(8))
            .min(MAX_QUIET),
    }
}

/// One peer's path, the evidence for it, and the way to explain it.
#[derive(Debug, Clone)]
pub struct PeerPath {
    offers: Vec<Offer>,
    tracks: Vec<Track>,
    floor: PathKind,
    /// Why the floor is the floor, when that needs saying (`datapath = "userspace"`).
    floor_reason: Option<String>,
    current: PathKind,
    since: Instant,
    since_wall: SystemTime,
    moves: u64,
    probe_size: u16,
    /// Why its paths cannot be probed on this node, when they cannot (no probe sockets): then
    /// nothing moves it, and the status says so instead of showing probes that never left.
    unprobed: Option<String>,
    /// Where it receives VXLAN, when that decides its path (a veth underlay: [`receiver`]).
    receiver: Option<ReceiveCheck>,
}

/// A move [`PeerPath::decide`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub from: PathKind,
    pub to: PathKind,
    /// The path left was failing its probes (not a promotion).
    pub demotion: bool,
}

impl PeerPath {
    /// `offers` are the paths to probe, best first: those better than `floor`, and the floor
    /// itself when it is probed too (a kernel floor, so its failures are shown); `adopted` the path a previous
    /// meshd left the peer on; `probe_size` the size of the probes (the pod MTU).
    pub fn new(
        offers: Vec<Offer>,
        floor: PathKind,
        floor_reason: Option<String>,
        adopted: Option<PathKind>,
        probe_size: u16,
        now: Instant,
    ) -> PeerPath {
        let usable =
            |k: PathKind| k == floor || offers.iter().any(|o| o.kind == k && o.available.is_ok());
        let current = adopted.filter(|k| usable(*k)).unwrap_or(floor);
        PeerPath {
            tracks: vec![Track::default(); offers.len()],
            offers,
            floor,
            floor_reason,
            current,
            since: now,
            since_wall: SystemTime::now(),
            moves: 0,
            probe_size,
            unprobed: None,
            receiver: None,
        }
    }

    /// Where it receives VXLAN decides whether it may take the kernel VXLAN path (this node's
    /// underlay is a veth): see [`receiver`].
    pub fn check_receiver(&mut self, r: ReceiveCheck) {
        self.receiver = Some(r);
    }

    pub fn receiver(&self) -> Option<&ReceiveCheck> {
        self.receiver.as_ref()
    }

    pub fn receiver_mut(&mut self) -> Option<&mut ReceiveCheck> {
        self.receiver.as_mut()
    }

    /// The receiver check that keeps it off `kind`, if one does: the kernel VXLAN path, above
    /// the floor, for a peer not known to receive in its kernel.
    fn holding(&self, kind: PathKind) -> Option<&ReceiveCheck> {
        self.receiver
            .as_ref()
            .filter(|r| kind == PathKind::KernelVxlan && kind < self.floor && !r.kernel())
    }

    /// `kind` passes its probes now: its last probe was answered, and it is not failing.
    pub fn passing(&self, kind: PathKind) -> bool {
        self.track(kind)
            .is_some_and(|t| t.ever_passed && t.lost_in_row == 0 && !t.failing)
    }

    /// Its paths cannot be probed on this node (`why`): the peer stays where it is.
    pub fn set_unprobed(&mut self, why: String) {
        self.unprobed = Some(why);
    }

    pub fn current(&self) -> PathKind {
        self.current
    }

    pub fn moves(&self) -> u64 {
        self.moves
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    /// The paths to probe: every available offer.
    pub fn probed(&self) -> impl Iterator<Item = PathKind> + '_ {
        self.offers
            .iter()
            .filter(|o| o.available.is_ok())
            .map(|o| o.kind)
    }

    /// The size (IPv4 total length) of the next probe on `kind`: pod-sized until the path has
    /// passed a pod-sized probe, after any loss until one passes again, and every
    /// [`FULL_PROBE_EVERY`]th probe; [`SMALL_PROBE`] otherwise. Counts the probe as sent.
    pub fn probe_size(&mut self, kind: PathKind) -> u16 {
        let Some(i) = self.offers.iter().position(|o| o.kind == kind) else {
            return self.probe_size;
        };
        let t = &mut self.tracks[i];
        let full = !t.full_ok || t.lost_in_row > 0 || t.since_full + 1 >= FULL_PROBE_EVERY;
        if full || self.probe_size <= SMALL_PROBE {
            t.since_full = 0;
            self.probe_size
        } else {
            t.since_full += 1;
            SMALL_PROBE
        }
    }

    /// The size of full probes from now on: the peer's MTU as its search found it. Runs of
    /// losses at the old size end: they were the MTU's, which the search has dealt with.
    pub fn set_probe_size(&mut self, size: u16) {
        self.probe_size = size;
        for t in self.tracks.iter_mut().filter(|t| !t.failing) {
            (t.lost_in_row, t.full_ok) = (0, false);
        }
    }

    /// A pod-sized probe on `kind` came back (`ok`) or timed out.
    pub fn record(&mut self, kind: PathKind, ok: bool, now: Instant) {
        self.record_probe(kind, self.probe_size, ok, now);
    }

    /// A probe of `size` bytes on `kind` (as [`PeerPath::probe_size`] chose it) came back
    /// (`ok`) or timed out. A small probe's pass says nothing while the last pod-sized probe
    /// failed: it must not end the run of losses an MTU black hole makes.
    pub fn record_probe(&mut self, kind: PathKind, size: u16, ok: bool, now: Instant) {
        let Some(i) = self.offers.iter().position(|o| o.kind == kind) else {
            return;
        };
        if size > self.probe_size {
            // Sized for an MTU the search has since found too big: says nothing of the path.
            return;
        }
        let full = size >= self.probe_size;
        let t = &mut self.tracks[i];
        t.sent += 1;
        if full {
            t.full_ok = ok;
        }
        if ok && !t.full_ok {
            return;
        }
        if ok {
            t.lost_in_row = 0;
            t.ever_passed = true;
            t.failing = false;
            t.passing_since.get_or_insert(now);
        } else {
            t.lost += 1;
            t.lost_in_row += 1;
            t.passing_since = None;
            if t.lost_in_row >= LOSSES_TO_DEMOTE && !t.failing {
                t.failing = true;
                t.failing_since = Some(SystemTime::now());
            }
        }
    }

    fn track(&self, kind: PathKind) -> Option<&Track> {
        let i = self.offers.iter().position(|o| o.kind == kind)?;
        self.tracks.get(i)
    }

    fn available(&self, kind: PathKind) -> bool {
        self.offers
            .iter()
            .any(|o| o.kind == kind && o.available.is_ok())
    }

    /// The path the evidence says the peer should be on.
    fn target(&self, now: Instant) -> PathKind {
        for o in &self.offers {
            let k = o.kind;
            if k >= self.floor {
                break;
            }
            if !self.available(k) || self.holding(k).is_some() {
                continue;
            }
            let Some(t) = self.track(k) else { continue };
            let ok = if k == self.current {
                !t.failing
            } else if k < self.current {
                t.promotable(now)
            } else {
                // Stepping down: only onto a path that is passing right now.
                t.ever_passed && t.lost_in_row == 0
            };
            if ok {
                return k;
            }
        }
        self.floor
    }

    /// Move if the evidence says so; the move made, if any.
    pub fn decide(&mut self, now: Instant) -> Option<Move> {
        if let Some(i) = self.offers.iter().position(|o| o.kind == self.current) {
            let t = &mut self.tracks[i];
            if !t.failing && now.saturating_duration_since(self.since) >= FORGIVE_AFTER {
                t.demotions = 0;
            }
        }
        let to = self.target(now);
        if to == self.current {
            return None;
        }
        let from = self.current;
        let demotion = self.track(from).is_some_and(|t| t.failing);
        if demotion {
            if let Some(i) = self.offers.iter().position(|o| o.kind == from) {
                self.tracks[i].demotions += 1;
            }
        }
        self.current = to;
        self.since = now;
        self.since_wall = SystemTime::now();
        self.moves += 1;
        Some(Move { from, to, demotion })
    }

    /// Probes sent and lost per probed path (none when its paths cannot be probed).
    pub fn probe_counts(&self) -> Vec<(PathKind, u64, u64, bool)> {
        if self.unprobed.is_some() {
            return Vec::new();
        }
        self.offers
            .iter()
            .zip(&self.tracks)
            .filter(|(o, _)| o.available.is_ok())
            .map(|(o, t)| (o.kind, t.sent, t.lost, t.failing))
            .collect()
    }

    /// When the peer took its path (wall clock).
    pub fn since_wall(&self) -> SystemTime {
        self.since_wall
    }
}

#[cfg(test)]
mod tests;
