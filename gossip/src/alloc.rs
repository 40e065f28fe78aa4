//! Subnet claims: pick, announce, and settle conflicts without a central store.
//!
//! A claim carries a Lamport stamp (one more than any stamp this node has seen). When two live
//! nodes claim the same subnet every node agrees on the winner ([`SubnetClaim::beats`]: an
//! explicit claim, then the older stamp, then the lower name); the loser picks again, excluding
//! every subnet it knows to be held, and announces the new claim. Subnets of down members stay
//! held for [`crate::Config::reclaim_grace`].

use std::collections::HashSet;
use std::time::Instant;

use crate::gossip::Gossip;
use crate::record::{Lease, Subnet, SubnetClaim, SubnetRequest};
use crate::view::MemberState;
use crate::Event;

/// Ticks between full conflict sweeps (5 s at the default 250 ms tick).
const CONFLICT_SWEEP_TICKS: u64 = 20;

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
    /// The contested subnet.
    pub subnet: Subnet,
    /// The other claimant.
    pub other: String,
    /// Whether this node keeps the subnet (it won, or its claim is explicit).
    pub kept: bool,
    /// Whether either claim was configured explicitly: an operator must act (log at error).
    pub explicit: bool,
}

impl Gossip {
    pub(crate) fn start_claim(&mut self, request: SubnetRequest, now: Instant) {
        let claim = match request {
            SubnetRequest::Auto => None,
            SubnetRequest::Persisted(lease) if self.pool.holds(&lease.subnet) => {
                Some(SubnetClaim {
                    subnet: lease.subnet,
                    stamp: lease.stamp,
                    explicit: false,
                })
            }
            SubnetRequest::Persisted(_) => None,
            SubnetRequest::Explicit(subnet) => Some(SubnetClaim {
                subnet,
                stamp: 0,
                explicit: true,
            }),
        };
        match claim {
            Some(c) => {
                self.lamport = self.lamport.max(c.stamp);
                self.hold(c);
            }
            None => {
                self.claim = ClaimState::Pending { since: now };
                self.publish_record();
            }
        }
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

    /// Every subnet held by a live member, or by a down one still within its grace period.
    pub fn held_subnets(&self, now: Instant) -> HashSet<Subnet> {
        let grace = self.config.reclaim_grace;
        self.members
            .values()
            .filter(|e| match e.state {
                Some(MemberState::Alive | MemberState::Suspect) | None => true,
                Some(MemberState::Down | MemberState::Left) => now.duration_since(e.since) < grace,
            })
            .filter_map(|e| e.record.subnet.map(|c| c.subnet))
            .collect()
    }

    fn pick_and_claim(&mut self, now: Instant) {
        let mut taken = self.held_subnets(now);
        if let Some(old) = self.own_claim() {
            taken.insert(old.subnet);
        }
        match self.pool.pick(&self.me.name, &taken) {
            Some(subnet) => {
                self.lamport += 1;
                self.hold(SubnetClaim {
                    subnet,
                    stamp: self.lamport,
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

    /// Settles any conflict between our claim and a live member's.
    pub(crate) fn check_conflicts(&mut self, now: Instant) {
        let Some(mine) = self.own_claim() else { return };
        let rivals: Vec<(String, u64, SubnetClaim)> = self
            .members
            .values()
            .filter(|e| e.is_live())
            .filter_map(|e| {
                let c = e.record.subnet?;
                (c.subnet == mine.subnet).then(|| (e.record.name.clone(), e.record.generation, c))
            })
            .collect();
        let mut lost = false;
        for (other, generation, theirs) in rivals {
            let we_win = mine.beats(&self.me.name, &theirs, &other);
            let explicit = mine.explicit || theirs.explicit;
            let kept = we_win || mine.explicit;
            lost |= !kept;
            if self.reported.insert((other.clone(), generation)) {
                self.events.push_back(Event::SubnetConflict(SubnetConflict {
                    subnet: mine.subnet,
                    other,
                    kept,
                    explicit,
                }));
            }
        }
        if lost {
            self.pick_and_claim(now);
        }
    }
}
