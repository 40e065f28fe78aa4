//! What keeps the state machine's memory and output bounded whatever members send it.
//!
//! - Names: at most [`crate::inbox::MAX_NAMES`] believed at once. Members that are down or
//!   gone (or whose record came without SWIM ever reporting them) are forgotten, record,
//!   binding and all, [`DEPARTED_KEEP`] after they went (never before the subnet reclaim
//!   grace); past three quarters of the cap, the longest gone go first whatever their age.
//!   Live members are never pruned, so a member inventing names fills only the room departed
//!   names would use, and the cap refuses the rest (counted).
//! - Requests: one state dump per requester per second, as before, and all of them within a
//!   token bucket of [`SERVE_BURST`] chunks refilled at [`SERVE_RATE`] per second; a request
//!   beyond it is refused whole and counted. The maps that remember requesters and pulls
//!   forget entries once their period has passed, and hold at most [`MAX_REQUESTERS`].
//! - Output: at most [`MAX_TRANSMITS`] datagrams wait for the daemon; more are dropped and
//!   counted (the daemon drains the queue after every wake-up, so only a flood fills it).

use std::time::{Duration, Instant};

use crate::gossip::Gossip;
use crate::inbox::MAX_NAMES;
use crate::sync::SERVE_EVERY;
use crate::view::{Entry, PULL_EVERY};

/// How long a departed member is remembered: its subnet stays reserved for the reclaim grace
/// (15 min by default) and its name bound to its key for an hour, so a node that restarts
/// within the hour comes back to its binding.
pub(crate) const DEPARTED_KEEP: Duration = Duration::from_secs(3600);
/// State-dump chunks per second, all requesters together: about 1.2 MB/s of 1,200-byte
/// datagrams, a dump of a 1,000-node cluster (about 180 chunks) six times a second.
pub(crate) const SERVE_RATE: u64 = 1024;
/// Chunks that may leave at once: a burst of about 200 joiners of a 100-node cluster.
pub(crate) const SERVE_BURST: u64 = 4096;
/// Requesters (and pulled addresses) remembered at once.
pub(crate) const MAX_REQUESTERS: usize = 1024;
/// Datagrams queued for the daemon at most.
pub(crate) const MAX_TRANSMITS: usize = 8192;
/// Ticks between sweeps (5 s at the default 250 ms tick).
const SWEEP_TICKS: u64 = 20;

/// A token bucket of state-dump chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    tokens: u64,
    at: Instant,
}

impl Budget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            tokens: SERVE_BURST,
            at: now,
        }
    }

    /// Takes `n` chunks if the bucket holds them.
    pub(crate) fn take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        let refill = (elapsed.as_millis() as u64).saturating_mul(SERVE_RATE) / 1000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(SERVE_BURST);
            self.at = now;
        }
        let n = n as u64;
        if n > self.tokens {
            return false;
        }
        self.tokens -= n;
        true
    }
}

impl Gossip {
    /// Housekeeping of the bounded maps; every tick, sweeping every [`SWEEP_TICKS`].
    pub(crate) fn bound_tick(&mut self, now: Instant) {
        if !self.ticks.is_multiple_of(SWEEP_TICKS) && self.inbox().len() < MAX_NAMES {
            return;
        }
        self.served
            .retain(|_, t| now.saturating_duration_since(*t) < SERVE_EVERY);
        self.pulled
            .retain(|_, t| now.saturating_duration_since(*t) < PULL_EVERY);
        self.prune_departed(now);
        // A conflict matters as long as the record it was about is the member's latest.
        let (members, me) = (&self.members, &self.me.name);
        self.reported.retain(|(name, generation, _)| {
            name == me
                || members
                    .get(name)
                    .is_some_and(|e| e.record.generation == *generation)
        });
        self.expire_forgets(now);
    }

    fn prune_departed(&mut self, now: Instant) {
        let keep = DEPARTED_KEEP.max(self.config.reclaim_grace);
        let gone = |e: &Entry| !e.is_live() && e.hold.is_none();
        let mut departed: Vec<(Instant, String)> = self
            .members
            .values()
            .filter(|e| gone(e) && !self.active.contains_key(&e.record.gossip_addr))
            .map(|e| (e.since, e.record.name.clone()))
            .collect();
        departed.sort();
        let over = self.inbox().len().saturating_sub(MAX_NAMES * 3 / 4);
        let doomed: Vec<String> = departed
            .into_iter()
            .enumerate()
            .filter(|(i, (since, _))| *i < over || now.saturating_duration_since(*since) >= keep)
            .map(|(_, (_, name))| name)
            .collect();
        for name in &doomed {
            if let Some(e) = self.members.remove(name) {
                if self.by_addr.get(&e.record.gossip_addr) == Some(name) {
                    self.by_addr.remove(&e.record.gossip_addr);
                }
            }
        }
        let mut inbox = self.inbox.lock();
        for name in &doomed {
            inbox.remove(name);
        }
        // Bindings restored from disk whose member never came back.
        let stale: Vec<String> = inbox
            .names()
            .filter(|(name, k)| {
                **name != self.me.name
                    && !self.members.contains_key(*name)
                    && now.saturating_duration_since(k.since) >= keep
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            inbox.remove(name);
        }
    }
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;
