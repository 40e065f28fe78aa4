//! When this node's summary gets a new version: a change an operator would see waits for a
//! publishing token ([`PUBLISH_BURST`] at once, then one per [`PUBLISH_EVERY`]: the picture is
//! for people); a change another member acts on at once is **urgent** and goes out without one,
//! from a bucket of its own ([`URGENT_BURST`] at once, then one per [`URGENT_EVERY`]):
//! - where the reporter observes a peer's authenticated traffic or gossip (the peer learns its
//!   NAT's mapping from it, and whether it is behind one: its keepalives, the relay a pair
//!   needs and hole punching all wait for that);
//! - a relay port the reporter offers that it did not before (the pair waits for it).
//!
//! Either way the push is paced by the datagram budget ([`super::PUSH_RATE`]), so a node whose
//! NAT flaps costs one version a second at most, and the network never more than that budget.
//! A version made before the last one reached every member goes first to those still waiting
//! (at 500 members a push round takes some 8 s), so no member is always last.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{codec, PathReport, PUBLISH_BURST, PUBLISH_EVERY};
use crate::gossip::Gossip;

/// Urgent versions made at once (a node's start: its peers' gossip seen, then their traffic,
/// then relay ports).
pub(super) const URGENT_BURST: u32 = 4;
/// Then one urgent version per this, at most.
pub(super) const URGENT_EVERY: Duration = Duration::from_secs(1);

/// A token bucket of whole versions: `burst` at most, one more per `every`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tokens {
    left: u32,
    refilled: Option<Instant>,
}

impl Tokens {
    pub(super) fn full(burst: u32) -> Self {
        Tokens {
            left: burst,
            refilled: None,
        }
    }

    /// Full: its clock runs from now; short: one more per `every`.
    fn refill(&mut self, burst: u32, every: Duration, now: Instant) {
        if self.left >= burst {
            self.refilled = Some(now);
        } else if self
            .refilled
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.left += 1;
            self.refilled = Some(now);
        }
    }

    fn take(&mut self) -> bool {
        let some = self.left > 0;
        self.left = self.left.saturating_sub(1);
        some
    }
}

/// Whether `next` (sorted by peer, like `published`) changes what another member acts on at
/// once: a new or moved observed endpoint, or a relay port not offered before.
pub(super) fn urgent(published: &[PathReport], next: &[PathReport]) -> bool {
    next.iter().any(|r| {
        let was = published
            .binary_search_by(|o| o.peer.as_str().cmp(&r.peer))
            .ok()
            .and_then(|i| published.get(i));
        let moved = |now: Option<std::net::SocketAddr>, then: Option<std::net::SocketAddr>| {
            now.is_some() && now != then
        };
        match was {
            None => r.observed.is_some() || r.observed_gossip.is_some() || !r.relays.is_empty(),
            Some(w) => {
                moved(r.observed, w.observed)
                    || moved(r.observed_gossip, w.observed_gossip)
                    || r.relays.iter().any(|x| !w.relays.contains(x))
            }
        }
    })
}

impl Gossip {
    /// Publishes the pending reports if a token is left (an urgent one for an urgent change),
    /// and queues the push.
    pub(super) fn publish_summary(&mut self, now: Instant) {
        let own = &mut self.summaries.own;
        let Some(key) = self.signing_key.as_ref() else {
            return;
        };
        own.tokens.refill(PUBLISH_BURST, PUBLISH_EVERY, now);
        own.urgent_tokens.refill(URGENT_BURST, URGENT_EVERY, now);
        if own.pending.is_none() || !(own.tokens.take() || own.urgent && own.urgent_tokens.take()) {
            return;
        }
        let Some((reports, omitted)) = own.pending.take() else {
            return;
        };
        own.urgent = false;
        own.version = own.version.max(own.boot_epoch << 32) + 1;
        own.encoded = codec::encode(
            &self.me.name,
            own.version,
            &reports,
            omitted,
            key,
            self.max_packet,
        );
        own.given = (reports.len(), omitted);
        own.omitted = own.encoded.omitted;
        // What did not fit the chunk bound is the tail, left out and counted.
        let mut reports = reports;
        let sent = reports
            .len()
            .saturating_sub((own.omitted - omitted) as usize);
        reports.truncate(sent);
        own.reports = reports;
        own.published_at = Some(now);
        // Members still waiting for the previous version get this one first, then the rest:
        // versions faster than a push round (urgent ones, a large cluster) reach everyone.
        let live: HashSet<SocketAddr> = (self.members.values())
            .filter(|e| e.is_live())
            .map(|e| e.record.gossip_addr)
            .collect();
        let mut queue: VecDeque<SocketAddr> =
            (own.queue.drain(..)).filter(|a| live.contains(a)).collect();
        let waiting: HashSet<SocketAddr> = queue.iter().copied().collect();
        let rest = (self.members.values())
            .filter(|e| e.is_live() && !waiting.contains(&e.record.gossip_addr))
            .map(|e| e.record.gossip_addr);
        queue.extend(rest);
        own.queue = queue;
        self.push_summary(now);
    }
}
