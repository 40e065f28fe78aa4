//! How summaries travel: this node's made from the daemon's reports and pushed to every member,
//! the others' taken chunk by chunk, pulled when missing, and dropped when their reporter goes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::codec::{Encoded, Pull};
use super::publish::{urgent, Tokens, URGENT_BURST};
use super::{
    PathReport, Summary, MAX_ENTRIES, MAX_PULL_BACKOFF, PUBLISH_BURST, PUSH_BURST, PUSH_RATE,
};
use crate::gossip::Gossip;
use crate::wire::{self, Kind};

/// The first wait before a member that does not answer a pull is asked again.
pub(super) const PULL_AFTER: Duration = Duration::from_secs(2);
/// Pulls of missing summaries sent per tick, so a joiner of a large cluster asks gradually.
const PULLS_PER_TICK: usize = 8;
/// Ticks between anti-entropy pulls (1 s at the default tick).
const REFRESH_TICKS: u64 = 4;
/// Ticks between sweeps of departed reporters and old requesters (5 s at the default tick).
const SWEEP_TICKS: u64 = 20;
/// A requester is answered at most this often.
const SERVE_EVERY: Duration = Duration::from_secs(1);

/// Every summary this node makes and holds.
#[derive(Debug)]
pub(crate) struct Summaries {
    pub(super) own: Own,
    /// Members' summaries completed here so far: a change the daemon reacts to.
    pub(super) taken: u64,
    pub(super) reporters: HashMap<String, Reporter>,
    /// The member the last anti-entropy pull went to.
    refresh_after: Option<String>,
    /// Summary datagrams this node may still send now.
    budget: Bucket,
    /// When each requester was last answered.
    served: HashMap<SocketAddr, Instant>,
}

/// This node's summary.
#[derive(Debug, Default)]
pub(super) struct Own {
    /// As last published, sorted by peer.
    pub(super) reports: Vec<PathReport>,
    pub(super) omitted: u32,
    /// The number of reports and of those left out as [`Gossip::set_paths`] last published
    /// them (before the chunk bound), which the next call compares with.
    pub(super) given: (usize, u32),
    pub(super) version: u64,
    pub(super) published_at: Option<Instant>,
    pub(super) encoded: Encoded,
    /// Reports that differ from the published ones, waiting for a publishing token.
    pub(super) pending: Option<(Vec<PathReport>, u32)>,
    pub(super) tokens: Tokens,
    /// The pending reports change what another member acts on at once (`publish.rs`):
    /// published from [`Own::urgent_tokens`] when [`Own::tokens`] has none.
    pub(super) urgent: bool,
    pub(super) urgent_tokens: Tokens,
    /// Members the current version still goes to.
    pub(super) queue: VecDeque<SocketAddr>,
    pub(super) boot_epoch: u64,
}

/// What this node holds of one member's summary.
#[derive(Debug, Default)]
pub(super) struct Reporter {
    pub(super) complete: Option<Complete>,
    pub(super) assembly: Option<Assembly>,
    pub(super) pulled_at: Option<Instant>,
    pub(super) backoff: Duration,
}

#[derive(Debug)]
pub(super) struct Complete {
    pub(super) version: u64,
    pub(super) received: Instant,
    pub(super) reports: Vec<PathReport>,
    pub(super) omitted: u32,
}

#[derive(Debug)]
pub(super) struct Assembly {
    pub(super) version: u64,
    pub(super) omitted: u32,
    pub(super) parts: Vec<Option<Vec<PathReport>>>,
    pub(super) entries: usize,
    pub(super) started: Instant,
}

impl Reporter {
    fn entries(&self) -> usize {
        self.complete.as_ref().map_or(0, |c| c.reports.len())
            + self.assembly.as_ref().map_or(0, |a| a.entries)
    }

    /// Whether a pull is due: nothing complete, or a version stuck half-way, and the backoff
    /// since the last pull passed.
    fn wants_pull(&self, now: Instant) -> bool {
        let stuck = self
            .assembly
            .as_ref()
            .is_some_and(|a| now.saturating_duration_since(a.started) >= PULL_AFTER);
        (self.complete.is_none() || stuck)
            && self
                .pulled_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.backoff)
    }
}

/// A token bucket of `rate` a second up to `cap`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, n: u64, now: Instant) -> bool {
        let refill = (now.saturating_duration_since(self.at).as_millis() as u64)
            .saturating_mul(PUSH_RATE)
            / 1000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(PUSH_BURST);
            self.at = now;
        }
        if n > self.tokens {
            return false;
        }
        self.tokens -= n;
        true
    }
}

impl Summaries {
    pub(crate) fn new(boot_epoch: u32, now: Instant) -> Self {
        Self {
            own: Own {
                tokens: Tokens::full(PUBLISH_BURST),
                urgent_tokens: Tokens::full(URGENT_BURST),
                boot_epoch: u64::from(boot_epoch),
                ..Own::default()
            },
            reporters: HashMap::new(),
            taken: 0,
            refresh_after: None,
            budget: Bucket {
                tokens: PUSH_BURST,
                at: now,
            },
            served: HashMap::new(),
        }
    }

    pub(super) fn held_entries(&self) -> usize {
        self.reporters.values().map(Reporter::entries).sum()
    }
}

impl Gossip {
    /// This node's path to each of its peers, as the daemon sees it now; call it as often as
    /// convenient. A new version of this node's summary is made and pushed when an entry
    /// changed ([`PathReport::differs`]), within the publishing rate ([`super::PUBLISH_EVERY`]).
    /// A node that signs nothing publishes nothing.
    pub fn set_paths(&mut self, mut reports: Vec<PathReport>, now: Instant) {
        if self.signing_key.is_none() {
            return;
        }
        reports.sort_by(|a, b| a.peer.cmp(&b.peer));
        reports.dedup_by(|a, b| a.peer == b.peer);
        let omitted = reports.len().saturating_sub(MAX_ENTRIES) as u32;
        if omitted > 0 {
            // The worst kept when some must go.
            reports.sort_by(|a, b| b.health.cmp(&a.health).then_with(|| a.peer.cmp(&b.peer)));
            reports.truncate(MAX_ENTRIES);
            reports.sort_by(|a, b| a.peer.cmp(&b.peer));
        }
        let own = &mut self.summaries.own;
        let same = own.published_at.is_some()
            && own.given == (reports.len(), omitted)
            && own.reports.iter().zip(&reports).all(|(a, b)| !a.differs(b));
        own.urgent = !same && urgent(&own.reports, &reports);
        own.pending = (!same).then_some((reports, omitted));
        self.publish_summary(now);
    }

    /// The summaries of live members this node holds, each its reporter's word.
    pub fn summaries(&self) -> impl Iterator<Item = Summary<'_>> {
        self.summaries.reporters.iter().filter_map(|(name, r)| {
            let c = r.complete.as_ref()?;
            self.members.get(name).filter(|e| e.is_live())?;
            Some(Summary {
                reporter: name,
                version: c.version,
                received: c.received,
                reports: &c.reports,
                omitted: c.omitted,
            })
        })
    }

    /// This node's own summary as last published.
    pub fn own_summary(&self) -> Option<Summary<'_>> {
        let own = &self.summaries.own;
        Some(Summary {
            reporter: &self.me.name,
            version: own.version,
            received: own.published_at?,
            reports: &own.reports,
            omitted: own.omitted,
        })
    }

    /// How many members' summaries were completed here so far: grows with each new version
    /// taken, so the daemon can react to what members report as it arrives.
    pub fn summaries_taken(&self) -> u64 {
        self.summaries.taken
    }

    /// Each tick: publish what waited for a token, push, pull, sweep.
    pub(crate) fn summary_tick(&mut self, now: Instant) {
        self.publish_summary(now);
        self.push_summary(now);
        self.pull_summaries(now);
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            let members = &self.members;
            self.summaries
                .reporters
                .retain(|name, _| members.get(name).is_some_and(|e| e.is_live()));
            self.summaries
                .served
                .retain(|_, t| now.saturating_duration_since(*t) < SERVE_EVERY);
        }
    }

    /// A member asks for this node's summary if newer than the version it holds.
    pub(crate) fn serve_summary_pull(&mut self, from: SocketAddr, payload: &[u8], now: Instant) {
        let Ok((pull, extra)) = wire::decode_payload::<Pull>(payload) else {
            self.counters.decode_failures += 1;
            return;
        };
        self.counters.unknown_fields += u64::from(extra);
        let own = &self.summaries.own;
        if own.published_at.is_none() || pull.version >= own.version {
            return;
        }
        // Only to a live member's gossip address, once a second each, within the budget: a
        // forged source cannot turn this node's summary against an address outside the cluster.
        let member = self
            .by_addr
            .get(&from)
            .and_then(|n| self.members.get(n))
            .is_some_and(|e| e.is_live());
        let recent = self
            .summaries
            .served
            .get(&from)
            .is_some_and(|t| now.saturating_duration_since(*t) < SERVE_EVERY);
        let n = own.encoded.chunks.len() as u64;
        if !member || recent || !self.summaries.budget.take(n, now) {
            self.counters.summary_pulls_refused += 1;
            return;
        }
        self.summaries.served.insert(from, now);
        for chunk in own.encoded.chunks.clone() {
            self.send(from, Kind::Summary, &chunk);
        }
    }

    /// Sends the current version to the members still waiting for it, within the budget.
    pub(super) fn push_summary(&mut self, now: Instant) {
        let n = self.summaries.own.encoded.chunks.len() as u64;
        while !self.summaries.own.queue.is_empty() && self.summaries.budget.take(n, now) {
            let Some(dst) = self.summaries.own.queue.pop_front() else {
                break;
            };
            for chunk in self.summaries.own.encoded.chunks.clone() {
                self.send(dst, Kind::Summary, &chunk);
            }
        }
    }

    /// Pulls the summaries of live members this node lacks, and every [`REFRESH_TICKS`] asks
    /// one member, round-robin, for a newer version than the one held.
    fn pull_summaries(&mut self, now: Instant) {
        let lacking: Vec<(String, SocketAddr)> = self
            .members
            .values()
            .filter(|e| e.is_live())
            .filter(|e| {
                self.summaries
                    .reporters
                    .get(&e.record.name)
                    .is_none_or(|r| r.wants_pull(now))
            })
            .take(PULLS_PER_TICK)
            .map(|e| (e.record.name.clone(), e.record.gossip_addr))
            .collect();
        for (name, addr) in lacking {
            let r = self.summaries.reporters.entry(name).or_default();
            r.pulled_at = Some(now);
            r.backoff = (r.backoff * 2).clamp(PULL_AFTER, MAX_PULL_BACKOFF);
            let version = r.complete.as_ref().map_or(0, |c| c.version);
            self.send(
                addr,
                Kind::SummaryPull,
                &wire::encode_payload(&Pull { version }),
            );
        }
        if !self.ticks.is_multiple_of(REFRESH_TICKS) {
            return;
        }
        let after = self.summaries.refresh_after.clone();
        let live = |(_, e): &(&String, &crate::view::Entry)| e.is_live();
        let next = match &after {
            Some(a) => self
                .members
                .range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .find(live),
            None => None,
        }
        .or_else(|| self.members.iter().find(live))
        .map(|(n, e)| (n.clone(), e.record.gossip_addr));
        if let Some((name, addr)) = next {
            let version = self
                .summaries
                .reporters
                .get(&name)
                .and_then(|r| r.complete.as_ref())
                .map_or(0, |c| c.version);
            self.summaries.refresh_after = Some(name);
            self.send(
                addr,
                Kind::SummaryPull,
                &wire::encode_payload(&Pull { version }),
            );
        }
    }
}
