//! Reacting to what changes NAT traversal at once, not at the next tick (encrypted mode): the
//! pipeline from two members joining to a relayed, then punched, pair is a chain of steps on
//! several nodes, and at a 2 s tick each step would wait up to a tick.
//!
//! What wakes a reaction:
//! - a peer's endpoint in use moved or started to authenticate traffic (the RX path,
//!   [`crate::link::endpoint::CHANGED`]): this node now observes it somewhere, or sees it
//!   behind a NAT (a relay may keep a port for it and another NAT'd peer);
//! - a member's summary arrived ([`meshd_gossip::Gossip::summaries_taken`]): where members see
//!   this node (its NAT's mapping, learned and advertised), relay ports offered to it;
//! - the peer set changed (a new member, new candidates or public endpoints: punches, relays).
//!
//! A reaction is one pass of what the tick does ([`Membership::publish_paths`]: relay ports
//! kept, relays chosen, the summary handed to gossip, which publishes an urgent change at once,
//! what members observe learnt) and one step of the punch schedules. Reactions are at least
//! [`REACT_GAP`] apart, so a burst of changes (a cluster starting) costs a few passes a second,
//! not one per datagram; each pass is a walk over the links and the summaries held.

use std::time::{Duration, Instant};

use super::Membership;

/// Reactions are at least this far apart.
pub(super) const REACT_GAP: Duration = Duration::from_millis(100);

/// When the next reaction is due.
#[derive(Debug, Default)]
pub(super) struct React {
    /// Due then (none: nothing changed since the last).
    pub(super) at: Option<Instant>,
    last: Option<Instant>,
    /// [`meshd_gossip::Gossip::summaries_taken`] as last seen.
    taken: u64,
}

impl React {
    /// Something changed: react as soon as the gap allows.
    pub(super) fn soon(&mut self) {
        if self.at.is_none() {
            let now = Instant::now();
            self.at = Some(self.last.map_or(now, |l| (l + REACT_GAP).max(now)));
        }
    }

    /// Reacts when gossip completed a member's summary since the last look.
    pub(super) fn if_summaries_taken(&mut self, taken: u64) {
        if taken != self.taken {
            self.taken = taken;
            self.soon();
        }
    }
}

/// Resolves when a reaction is due; never, while none is.
pub(super) async fn due(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Membership {
    /// One reaction: the tick's pass, and a step of the punch schedules.
    pub(super) fn react_now(&mut self) {
        self.react.at = None;
        self.react.last = Some(Instant::now());
        self.publish_paths();
        self.punch(&self.backend.routes().load());
    }
}
