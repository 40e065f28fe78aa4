//! Hole punching for one peer (encrypted mode): both ends behind NATs that keep one public
//! port whoever they send to, and no working direct endpoint between them (nothing, or a relay).
//!
//! Each attempt has a start time, in wall-clock milliseconds, that both ends share: the end
//! whose attempt falls due first asks the other in its signed record
//! ([`meshd_gossip::NodeRecord::punch`]: a name and a time, never an address), which gossip
//! carries through the members both reach; at the start both send a short burst of handshake
//! initiations to the other's public candidates. Each side's burst opens its own NAT's mapping
//! towards the other's public endpoint, so the other side's datagrams pass it, and a handshake
//! completes: the endpoint in use roams to the public endpoint, and the pair is
//! `direct (punched)`.
//!
//! Attempts repeat with backoff ([`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`]) while the pair
//! has no working direct endpoint (nothing, or a relay: a pair starts relayed); a change of either side's public endpoints resets it. A request
//! from the peer is honoured at most once per [`MIN_GAP`], and only within [`ACCEPT_PAST`] /
//! [`ACCEPT_FUTURE`] of now, so neither a member nor a replayed record can make this node
//! send more than a burst per second, and only ever to that member's own candidates.
//!
//! The cell is written by the gossip driver (schedule, requests) and the WireGuard control
//! thread (the burst), each a few times a second, never by the data path.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first retry comes this long after the first attempt; each one after waits twice as long.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How far ahead of its request an attempt starts: time for gossip to carry the request (a
/// record reaches the members in a few 100 ms gossip rounds). A request that arrives late is
/// honoured at once: the requester's burst opened its NAT towards the peer already, so the
/// peer's later burst still gets through it.
pub(crate) const LEAD: Duration = Duration::from_millis(300);
/// Handshake initiations sent per burst, one per control tick (100 ms).
pub(crate) const SHOTS: u8 = 5;
/// A request from the peer is honoured at most once per this.
pub(crate) const MIN_GAP: Duration = Duration::from_secs(1);
/// A request whose start is further in the past than this is stale: ignored.
pub(crate) const ACCEPT_PAST: Duration = Duration::from_secs(5);
/// A request whose start is further ahead than this is refused (a wrong clock or a lie).
pub(crate) const ACCEPT_FUTURE: Duration = Duration::from_secs(5);

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the pair is to hole punching.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Mode {
    /// Not needed: the pair reaches each other (or one side is public).
    #[default]
    Idle,
    /// Both behind NAT, no working direct endpoint: attempts with backoff.
    Trying,
    /// Cannot be expected to work: why (a NAT that maps each destination anew, as members
    /// observe it). Attempts go on with backoff all the same, at the peer's own port too: a
    /// NAT that gave another host's port away to one destination keeps it for the next.
    NotPunchable(String),
}

/// A punch that worked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Punched {
    /// Wall-clock ms when the endpoint first authenticated after the burst.
    pub(crate) at_ms: u64,
    /// Attempts it took.
    pub(crate) attempts: u32,
    /// The public endpoint it reached.
    pub(crate) endpoint: SocketAddr,
}

/// One peer's punch state.
#[derive(Debug, Default)]
pub(crate) struct PunchState {
    pub(crate) mode: Mode,
    /// Attempts since the pair started trying (or since the last reset).
    pub(crate) attempts: u32,
    pub(crate) backoff: Duration,
    /// Wall-clock ms of the next own attempt (0: now).
    pub(crate) next_ms: u64,
    /// The start of the burst armed (0: none), and the shots it has left.
    pub(crate) burst_ms: u64,
    pub(crate) shots_left: u8,
    /// The request this node publishes for the peer (start ms), while trying.
    pub(crate) request_ms: Option<u64>,
    /// The start of the last request honoured, and when (wall-clock ms).
    honoured: (u64, u64),
    /// Both sides' public endpoints when the backoff last reset.
    fingerprint: u64,
    /// The last punch that worked, while the endpoint it reached still works.
    pub(crate) punched: Option<Punched>,
    /// Bursts sent (all attempts, for the status).
    pub(crate) bursts: u64,
    /// A punch just worked here: one keepalive goes to the peer, so that it hears this node
    /// too (the handshake's initiator hears nothing else from its responder until data flows).
    pub(crate) hello: bool,
}

impl PunchState {
    /// Sets the mode; leaving `Trying` forgets the schedule and the request.
    pub(crate) fn set_mode(&mut self, mode: Mode) {
        if self.mode == mode {
            return;
        }
        if mode != Mode::Idle {
            // From `not punchable` (what members observe of a NAT was stale) the attempts so
            // far still count.
            if self.mode == Mode::Idle {
                self.attempts = 0;
            }
            self.backoff = FIRST_BACKOFF;
            self.next_ms = 0;
        } else {
            self.request_ms = None;
            self.burst_ms = 0;
            self.shots_left = 0;
        }
        self.mode = mode;
    }

    /// Either side's public endpoints changed (`fingerprint` differs): the next attempt is now,
    /// and the backoff starts again.
    pub(crate) fn endpoints_are(&mut self, fingerprint: u64) {
        if self.fingerprint != fingerprint {
            self.fingerprint = fingerprint;
            self.backoff = FIRST_BACKOFF;
            self.next_ms = 0;
        }
    }

    /// While trying, the own attempt falls due: a request to publish, starting [`LEAD`] from
    /// now, and a burst armed then. True when one was made.
    pub(crate) fn attempt_if_due(&mut self, now: u64) -> bool {
        if self.mode == Mode::Idle || now < self.next_ms {
            return false;
        }
        let start = now + LEAD.as_millis() as u64;
        self.request_ms = Some(start);
        self.arm(start);
        true
    }

    /// The peer asks for a punch starting at `at` (from its signed record). Honoured while
    /// the pair has no working direct endpoint, within the accepted window and at most once per
    /// [`MIN_GAP`]; true when it was.
    pub(crate) fn requested(&mut self, at: u64, now: u64) -> bool {
        let fresh = at + ACCEPT_PAST.as_millis() as u64 >= now
            && at <= now + ACCEPT_FUTURE.as_millis() as u64;
        let (last_at, last_when) = self.honoured;
        let ok = self.mode != Mode::Idle
            && fresh
            && at != last_at
            && now >= last_when + MIN_GAP.as_millis() as u64
            && self.burst_ms.abs_diff(at) >= MIN_GAP.as_millis() as u64;
        if ok {
            self.honoured = (at, now);
            self.arm(at.max(now));
        }
        ok
    }

    fn arm(&mut self, start: u64) {
        self.attempts += 1;
        self.burst_ms = start;
        self.shots_left = SHOTS;
        self.next_ms = start + self.backoff.as_millis() as u64;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The control thread's tick: whether a shot of the armed burst goes out now.
    pub(crate) fn shoot(&mut self, now: u64) -> bool {
        if self.shots_left == 0 || self.burst_ms == 0 || now < self.burst_ms {
            return false;
        }
        if self.shots_left == SHOTS {
            self.bursts += 1;
        }
        self.shots_left -= 1;
        true
    }

    /// The endpoint in use works: a punch worked if this node made or honoured an attempt
    /// since the pair last worked, and it is at the peer's NAT. Either way the pair stops
    /// trying.
    pub(crate) fn reached(&mut self, endpoint: SocketAddr, public: bool, now: u64) {
        if self.attempts > 0 && public {
            self.punched = Some(Punched {
                at_ms: now,
                attempts: self.attempts,
                endpoint,
            });
            self.hello = true;
        }
        if self
            .punched
            .as_ref()
            .is_some_and(|p| p.endpoint != endpoint)
        {
            self.punched = None;
        }
        self.set_mode(Mode::Idle);
        self.attempts = 0;
    }
}

/// The cell a link holds.
#[derive(Debug, Default)]
pub(crate) struct PunchCell(Mutex<PunchState>);

impl PunchCell {
    pub(crate) fn lock(&self) -> MutexGuard<'_, PunchState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn attempts_back_off_and_reset_when_endpoints_change() {
        let mut s = PunchState::default();
        assert!(!s.attempt_if_due(1000), "idle: no attempt");
        s.set_mode(Mode::Trying);
        assert!(s.attempt_if_due(1000));
        assert_eq!((s.request_ms, s.attempts), (Some(1300), 1));
        assert!(!s.shoot(1200), "not before the start");
        for _ in 0..SHOTS {
            assert!(s.shoot(1300));
        }
        assert!(!s.shoot(1400), "a burst is {SHOTS} shots");
        assert!(!s.attempt_if_due(3000));
        assert!(s.attempt_if_due(3300));
        assert_eq!(s.next_ms, 3600 + 4000);
        s.endpoints_are(7);
        assert!(s.attempt_if_due(4000), "changed endpoints: now");
        assert_eq!(s.next_ms, 4300 + 2000);
    }

    #[test]
    fn requests_are_honoured_only_while_trying_fresh_and_spaced() {
        let mut s = PunchState::default();
        assert!(
            !s.requested(10_000, 10_000),
            "the pair works: nothing to punch"
        );
        s.set_mode(Mode::Trying);
        assert!(!s.requested(100_000, 10_000), "too far ahead");
        assert!(!s.requested(1_000, 10_000), "stale");
        assert!(s.requested(10_500, 10_000));
        assert!(!s.requested(10_500, 10_100), "the same request again");
        assert!(!s.requested(10_700, 10_200), "within the gap");
        assert!(s.requested(12_000, 11_100));
        assert_eq!(s.attempts, 2);
    }

    #[test]
    fn a_public_endpoint_reached_while_trying_is_a_punch() {
        let ep: SocketAddr = "198.18.0.102:51820".parse().unwrap();
        let mut s = PunchState::default();
        s.set_mode(Mode::Trying);
        s.reached(ep, true, 5);
        assert!(s.punched.is_none(), "no attempt made: not a punch");
        s.set_mode(Mode::NotPunchable(
            "b1's NAT maps each destination anew".into(),
        ));
        assert!(s.requested(10_500, 10_000), "the peer may know better");
        s.reached(ep, true, 10_600);
        assert_eq!(s.punched.as_ref().map(|p| p.attempts), Some(1));
        assert!(s.hello, "one keepalive so the peer hears this node");
        s.set_mode(Mode::Trying);
        s.attempt_if_due(1);
        s.reached(ep, true, 9);
        assert_eq!(s.punched.as_ref().map(|p| p.attempts), Some(1));
        assert_eq!(s.mode, Mode::Idle);
        s.reached("192.168.2.1:51820".parse().unwrap(), false, 10);
        assert!(s.punched.is_none(), "another endpoint now");
    }
}
