//! Subnet claims: pick, announce, and settle conflicts without a central store.
//!
//! A claim carries a Lamport stamp: one more than any stamp this node has seen, never above
//! [`MAX_STAMP`] (a stamp beyond it, from the wire, is refused and moves no clock, so nothing a
//! member sends can make the `+ 1` overflow). Claims and static peers' subnets (reservations:
//! the node that routes to a static peer publishes its subnet in its record,
//! [`crate::NodeRecord::reserved`], so every node learns it) are *holds* on address ranges, and
//! two holds conflict when they share an address, one containing the other, not only when
//! they are equal.
//!
//! Every node orders overlapping holds the same way ([`Precedence`]): the narrower range first,
//! so a wide hold (a static `/17`, an explicit `/23`) never displaces the node subnets inside
//! it and the cluster is never renumbered for it; at equal size a reservation, then an explicit
//! claim, then a picked one; then the older stamp; then the lower name. A picked claim that
//! loses moves: its node picks again, avoiding every subnet that overlaps a hold it knows. An
//! explicit claim that loses is kept by its node and reported (an operator must act), and the
//! other nodes do not route it while it loses. Subnets of down members stay held for
//! [`crate::Config::reclaim_grace`]. Claims and reservations this node does not count at all
//! ([`crate::Pool::check`]: outside the cluster, the wrong size, an implausible stamp) neither
//! move anyone nor block a pick.

use std::time::Instant;

use crate::gossip::Gossip;
use crate::precedence::{Precedence, Settled};
use crate::record::{Lease, NodeRecord, Subnet, SubnetClaim, SubnetRequest};
use crate::subnet::Ranges;
use crate::view::{Entry, MemberState};
use crate::Event;

/// Ticks between full conflict sweeps (5 s at the default 250 ms tick).
const CONFLICT_SWEEP_TICKS: u64 = 20;

/// The highest claim stamp counted. A stamp grows by one per pick anywhere in the cluster, and
/// 2^32 picks is one a second for 136 years: a stamp beyond that came from no real cluster.
/// An absolute bound rather than one relative to this node's clock: a node that joins a
/// long-lived cluster legitimately sees stamps far ahead of its own 0.
pub const MAX_STAMP: u64 = 1 << 32;

/// Where this node stands with its own subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimState {
    /// No subnet yet: waiting for the state sync (or `claim_delay`) before picking.
    Pending { since: Instant },
    /// Holding `me.subnet`.
    Held,
    /// The pool had no free subnet at the last try; retried every tick.
    Exhausted,
}

/// A conflict over a subnet this node claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetConflict {
    /// This node's contested subnet.
    pub subnet: Subnet,
    /// The other hold's subnet: `subnet` itself, or one that contains it or lies inside it.
    pub theirs: Subnet,
    /// The other claimant: a member, or with `reserved` the node (perhaps this one) that
    /// routes a static peer there.
    pub other: String,
    /// Whether this node's claim wins ([`Precedence`]).
    pub won: bool,
    /// Why the winner wins.
    pub settled: Settled,
    /// Whether this node keeps the subnet (it won, or its claim is explicit).
    pub kept: bool,
    /// Whether this node's claim, or (against a member) the other one, was configured
    /// explicitly: an operator must act (log at error).
    pub explicit: bool,
    /// The other hold is a static peer's subnet ([`crate::NodeRecord::reserved`]).
    pub reserved: bool,
}

impl Gossip {
    pub(crate) fn start_claim(&mut self, request: SubnetRequest, now: Instant) {
        let claim = match request {
            SubnetRequest::Auto => None,
            SubnetRequest::Persisted(lease) => {
                let claim = SubnetClaim {
                    subnet: lease.subnet,
                    // A lease written before stamps were bounded may hold any value.
                    stamp: lease.stamp.min(MAX_STAMP),
                    explicit: false,
                };
                let me = self.me.name.clone();
                let ours = Precedence::claim(&claim, &me);
                let beaten = self.me.reserved.iter().copied().find(|r| {
                    r.overlaps(&claim.subnet) && Precedence::reserved(r, &me).beats(&ours)
                });
                match beaten {
                    // We route a static peer there now: the lease is void, pick another.
                    Some(r) => {
                        let conflict = self.conflict(claim, r, me, None);
                        self.report(conflict, 0);
                        None
                    }
                    None => self.pool.holds(&claim.subnet).then_some(claim),
                }
            }
            SubnetRequest::Explicit(subnet) => Some(SubnetClaim {
                subnet,
                stamp: 0,
                explicit: true,
            }),
        };
        match claim {
            Some(c) => {
                self.observe_stamp(c.stamp);
                self.hold(c);
                self.check_conflicts(now);
            }
            None => {
                self.claim = ClaimState::Pending { since: now };
                self.publish_record();
            }
        }
    }

    /// Moves this node's Lamport clock up to `stamp`, a stamp read from a record; one beyond
    /// [`MAX_STAMP`] moves nothing (its claim is refused, [`crate::Pool::check`]).
    pub(crate) fn observe_stamp(&mut self, stamp: u64) {
        if stamp <= MAX_STAMP {
            self.lamport = self.lamport.max(stamp);
        }
    }

    /// The stamp of a new claim: one more than any seen, held at [`MAX_STAMP`] (a cluster
    /// pushed there by a member settles its ties by name, and never wraps).
    fn next_stamp(&mut self) -> u64 {
        self.lamport = self.lamport.saturating_add(1).min(MAX_STAMP);
        self.lamport
    }

    /// Claims now if we were waiting and the state sync finished or the delay ran out.
    pub(crate) fn claim_tick(&mut self, now: Instant) {
        match self.claim {
            ClaimState::Pending { since } => {
                let synced = self.is_synced();
                if synced || now.duration_since(since) >= self.config.claim_delay {
                    self.pick_and_claim(now);
                }
            }
            ClaimState::Exhausted => self.pick_and_claim(now),
            // Conflicts are checked as records arrive; this sweep is the safety net.
            ClaimState::Held if self.ticks.is_multiple_of(CONFLICT_SWEEP_TICKS) => {
                self.check_conflicts(now)
            }
            ClaimState::Held => {}
        }
    }

    /// Every subnet claimed by a live member, or by a down one still within its grace
    /// period, that this node counts ([`crate::Pool::check`]).
    pub fn held_subnets(&self, now: Instant) -> Vec<Subnet> {
        self.held_entries(now)
            .filter_map(|e| self.counted_claim(e))
            .map(|c| c.subnet)
            .collect()
    }

    /// Every static peer's subnet known and counted: this node's, and those of the members
    /// whose subnets are held ([`Gossip::held_subnets`]).
    pub fn reserved_subnets(&self, now: Instant) -> Vec<Subnet> {
        let theirs = self
            .held_entries(now)
            .flat_map(|e| e.record.reserved.iter());
        self.me
            .reserved
            .iter()
            .chain(theirs)
            .filter(|r| self.pool.check_reserved(r).is_ok())
            .copied()
            .collect()
    }

    fn held_entries(&self, now: Instant) -> impl Iterator<Item = &Entry> {
        let grace = self.config.reclaim_grace;
        self.members.values().filter(move |e| match e.state {
            Some(MemberState::Alive | MemberState::Suspect) | None => true,
            Some(MemberState::Down | MemberState::Left) => now.duration_since(e.since) < grace,
        })
    }

    /// A member's claim, if this node counts it.
    fn counted_claim(&self, e: &Entry) -> Option<SubnetClaim> {
        e.record.subnet.filter(|c| self.pool.check(c).is_ok())
    }

    /// Picks a subnet that overlaps no hold this node knows (claims, reservations, our own
    /// previous claim), and claims it.
    fn pick_and_claim(&mut self, now: Instant) {
        let mut taken: Ranges<()> = Ranges::default();
        for s in self
            .held_subnets(now)
            .iter()
            .chain(&self.reserved_subnets(now))
            .chain(self.own_claim().map(|c| c.subnet).as_ref())
        {
            taken.insert_subnet(s, ());
        }
        match self
            .pool
            .pick(&self.me.name, |s| taken.find_subnet(s).is_some())
        {
            Some(subnet) => {
                let stamp = self.next_stamp();
                self.hold(SubnetClaim {
                    subnet,
                    stamp,
                    explicit: false,
                });
            }
            None => {
                if self.claim != ClaimState::Exhausted {
                    self.events.push_back(Event::SubnetExhausted);
                }
                self.claim = ClaimState::Exhausted;
            }
        }
    }

    fn hold(&mut self, claim: SubnetClaim) {
        self.me.subnet = Some(claim);
        self.claim = ClaimState::Held;
        self.publish_record();
        self.events.push_back(Event::SubnetAssigned(Lease {
            subnet: claim.subnet,
            stamp: claim.stamp,
        }));
    }

    /// Settles every conflict between our claim and a hold that overlaps it: a live member's
    /// counted claim, or a static peer's subnet (ours or a live member's). A picked claim that
    /// loses any of them moves.
    pub(crate) fn check_conflicts(&mut self, now: Instant) {
        let Some(mine) = self.own_claim() else { return };
        let mut holds: Vec<(String, u64, Subnet, Option<SubnetClaim>)> = self
            .me
            .reserved
            .iter()
            .filter(|r| r.overlaps(&mine.subnet))
            .map(|r| (self.me.name.clone(), 0, *r, None))
            .collect();
        for e in self.members.values().filter(|e| e.is_live()) {
            let (name, generation) = (&e.record.name, e.record.generation);
            for r in e
                .record
                .reserved
                .iter()
                .filter(|r| r.overlaps(&mine.subnet))
            {
                if self.pool.check_reserved(r).is_ok() {
                    holds.push((name.clone(), generation, *r, None));
                }
            }
            if let Some(c) = self
                .counted_claim(e)
                .filter(|c| c.subnet.overlaps(&mine.subnet))
            {
                holds.push((name.clone(), generation, c.subnet, Some(c)));
            }
        }
        let mut lost = false;
        for (other, generation, subnet, claim) in holds {
            let conflict = self.conflict(mine, subnet, other, claim);
            lost |= !conflict.won;
            self.report(conflict, generation);
        }
        if lost && !mine.explicit {
            self.pick_and_claim(now);
        }
    }

    /// The conflict between our claim `mine` and `theirs`, held by `other`: its claim `claim`,
    /// or without one a static peer's subnet it routes.
    fn conflict(
        &self,
        mine: SubnetClaim,
        theirs: Subnet,
        other: String,
        claim: Option<SubnetClaim>,
    ) -> SubnetConflict {
        let ours = Precedence::claim(&mine, &self.me.name);
        let rival = match &claim {
            Some(c) => Precedence::claim(c, &other),
            None => Precedence::reserved(&theirs, &other),
        };
        let (won, settled) = (ours.beats(&rival), ours.settled(&rival));
        SubnetConflict {
            subnet: mine.subnet,
            theirs,
            other,
            won,
            settled,
            kept: won || mine.explicit,
            explicit: mine.explicit || claim.is_some_and(|c| c.explicit),
            reserved: claim.is_none(),
        }
    }

    /// Reports a conflict once per (other node, its record's generation, kind of hold).
    fn report(&mut self, conflict: SubnetConflict, generation: u64) {
        let key = (conflict.other.clone(), generation, conflict.reserved);
        if self.reported.insert(key) {
            self.events.push_back(Event::SubnetConflict(conflict));
        }
    }
}

/// Whether `record` may contest `mine`: it claims or reserves a subnet that overlaps it. (The
/// check itself, [`Gossip::check_conflicts`], leaves out what this node does not count.)
pub(crate) fn contests(record: &NodeRecord, mine: Subnet) -> bool {
    record.subnet.is_some_and(|c| c.subnet.overlaps(&mine))
        || record.reserved.iter().any(|r| r.overlaps(&mine))
}

#[cfg(test)]
#[path = "alloc_tests.rs"]
mod tests;
