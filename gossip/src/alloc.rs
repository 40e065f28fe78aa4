//! Subnet claims: pick, announce, and settle conflicts without a central store.
//!
//! A claim carries a Lamport stamp (one more than any stamp this node has seen). When two live
//! nodes claim the same subnet every node agrees on the winner ([`SubnetClaim::beats`]: an
//! explicit claim, then the older stamp, then the lower name); the loser picks again, excluding
//! every subnet it knows to be held, and announces the new claim. Subnets of down members stay
//! held for [`crate::Config::reclaim_grace`].
//!
//! Static peers' subnets are claims too, stronger than any: the node that routes to them
//! publishes them in its record ([`crate::NodeRecord::reserved`]), so every node learns them
//! by gossip although only that node's config lists them. No pick lands on one, a picked claim
//! on one moves, and an explicit claim on one is kept and reported as explicit (an operator
//! must choose).

use std::collections::HashSet;
use std::time::Instant;

use crate::gossip::Gossip;
use crate::record::{Lease, NodeRecord, Subnet, SubnetClaim, SubnetRequest};
use crate::view::{Entry, MemberState};
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
    /// The other claimant: a member, or with `reserved` the node (perhaps this one) that
    /// routes a static peer there.
    pub other: String,
    /// Whether this node keeps the subnet (it won, or its claim is explicit).
    pub kept: bool,
    /// Whether either claim was configured explicitly: an operator must act (log at error).
    pub explicit: bool,
    /// The other claim is a static peer's subnet ([`crate::NodeRecord::reserved`]), which no
    /// member's claim beats.
    pub reserved: bool,
}

impl Gossip {
    pub(crate) fn start_claim(&mut self, request: SubnetRequest, now: Instant) {
        let claim = match request {
            SubnetRequest::Auto => None,
            SubnetRequest::Persisted(lease)
                if self.me.reserved.iter().any(|r| r.overlaps(&lease.subnet)) =>
            {
                // We route a static peer there now: the lease is void, pick another.
                self.report_reserved(lease.subnet, self.me.name.clone(), 0, false);
                None
            }
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
                self.check_conflicts(now);
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
        self.held_entries(now)
            .filter_map(|e| e.record.subnet.map(|c| c.subnet))
            .collect()
    }

    /// Every static peer's subnet known: this node's, and those of the members whose subnets
    /// are held ([`Gossip::held_subnets`]).
    pub fn reserved_subnets(&self, now: Instant) -> Vec<Subnet> {
        let theirs = self
            .held_entries(now)
            .flat_map(|e| e.record.reserved.iter());
        self.me.reserved.iter().chain(theirs).copied().collect()
    }

    fn held_entries(&self, now: Instant) -> impl Iterator<Item = &Entry> {
        let grace = self.config.reclaim_grace;
        self.members.values().filter(move |e| match e.state {
            Some(MemberState::Alive | MemberState::Suspect) | None => true,
            Some(MemberState::Down | MemberState::Left) => now.duration_since(e.since) < grace,
        })
    }

    fn pick_and_claim(&mut self, now: Instant) {
        let mut taken = self.held_subnets(now);
        if let Some(old) = self.own_claim() {
            taken.insert(old.subnet);
        }
        let reserved = self.reserved_subnets(now);
        let is_taken = |s: &Subnet| taken.contains(s) || reserved.iter().any(|r| r.overlaps(s));
        match self.pool.pick(&self.me.name, is_taken) {
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

    /// Settles any conflict between our claim and a live member's, or a static peer's.
    pub(crate) fn check_conflicts(&mut self, now: Instant) {
        let Some(mine) = self.own_claim() else { return };
        // A static peer's subnet is routed outside gossip: no claim of ours can win it.
        let mut lost = false;
        if let Some((owner, generation)) = self.reserver_of(&mine.subnet) {
            lost = !mine.explicit;
            self.report_reserved(mine.subnet, owner, generation, mine.explicit);
        }
        let rivals: Vec<(String, u64, SubnetClaim)> = self
            .members
            .values()
            .filter(|e| e.is_live())
            .filter_map(|e| {
                let c = e.record.subnet?;
                (c.subnet == mine.subnet).then(|| (e.record.name.clone(), e.record.generation, c))
            })
            .collect();
        for (other, generation, theirs) in rivals {
            let we_win = mine.beats(&self.me.name, &theirs, &other);
            let explicit = mine.explicit || theirs.explicit;
            let kept = we_win || mine.explicit;
            lost |= !kept;
            if self.reported.insert((other.clone(), generation, false)) {
                self.events.push_back(Event::SubnetConflict(SubnetConflict {
                    subnet: mine.subnet,
                    other,
                    kept,
                    explicit,
                    reserved: false,
                }));
            }
        }
        if lost {
            self.pick_and_claim(now);
        }
    }

    /// Who routes a static peer into `subnet`: this node (generation 0: its reservations never
    /// change), or a live member, with its record's generation.
    fn reserver_of(&self, subnet: &Subnet) -> Option<(String, u64)> {
        if self.me.reserved.iter().any(|r| r.overlaps(subnet)) {
            return Some((self.me.name.clone(), 0));
        }
        self.members
            .values()
            .filter(|e| e.is_live())
            .find(|e| e.record.reserved.iter().any(|r| r.overlaps(subnet)))
            .map(|e| (e.record.name.clone(), e.record.generation))
    }

    /// Reports a claim on a static peer's subnet, once per reserving record. Only an explicit
    /// claim is kept there, so `kept` also says whether an operator must act.
    fn report_reserved(&mut self, subnet: Subnet, other: String, generation: u64, kept: bool) {
        if self.reported.insert((other.clone(), generation, true)) {
            self.events.push_back(Event::SubnetConflict(SubnetConflict {
                subnet,
                other,
                kept,
                explicit: kept,
                reserved: true,
            }));
        }
    }
}

/// Whether `record` contests `mine`: it claims the same subnet or routes a static peer in it.
pub(crate) fn contests(record: &NodeRecord, mine: Subnet) -> bool {
    record.subnet.is_some_and(|c| c.subnet == mine)
        || record.reserved.iter().any(|r| r.overlaps(&mine))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::{Config, ConfigError};
    use crate::record::MAX_RESERVED;
    use crate::sim::Sim;

    fn run_past_claim_delay(g: &mut Gossip, t0: Instant) {
        let mut now = t0;
        while now < t0 + g.config.claim_delay + g.config.tick {
            now = g.poll_timeout().unwrap();
            g.handle_timeout(now);
        }
    }

    #[test]
    fn only_reservations_inside_the_cluster_are_published_and_their_number_is_bounded() {
        let now = Instant::now();
        let inside: Subnet = "10.244.9.0/25".parse().unwrap();
        let around: Subnet = "10.0.0.0/8".parse().unwrap();
        let mut local = Sim::local_node(0, SubnetRequest::Auto);
        local.reserved = vec!["10.99.0.0/24".parse().unwrap(), inside, around, inside];
        let g = Gossip::new(Config::default(), local.clone(), 1, now).unwrap();
        assert_eq!(g.local_record().reserved, [around, inside]);
        local.reserved = (0..=MAX_RESERVED)
            .map(|i| Subnet::new([10, 244, i as u8, 0].into(), 24).unwrap())
            .collect();
        let err = Gossip::new(Config::default(), local, 1, now).err();
        assert_eq!(err, Some(ConfigError::TooManyReserved(MAX_RESERVED + 1)));
    }

    /// A static peer added on the subnet this node held: the lease is given up (and the
    /// conflict reported) and a lone node picks around the reservation.
    #[test]
    fn a_persisted_lease_on_our_own_static_peer_is_given_up() {
        let t0 = Instant::now();
        let cfg = Config::default();
        let pool = cfg.pool().unwrap();
        // The slot node-0 picks first, so that a pick that ignored the reservation lands on it.
        let first = pool.pick("node-0", |_| false).unwrap();
        let mut local = Sim::local_node(
            0,
            SubnetRequest::Persisted(Lease {
                subnet: first,
                stamp: 3,
            }),
        );
        local.reserved = vec![first];
        let mut g = Gossip::new(cfg, local, 1, t0).unwrap();
        assert_eq!(g.lease(), None);
        run_past_claim_delay(&mut g, t0);
        let lease = g.lease().unwrap();
        assert!(!lease.subnet.overlaps(&first), "{}", lease.subnet);
        let events: Vec<Event> = std::iter::from_fn(|| g.poll_event()).collect();
        let conflict = SubnetConflict {
            subnet: first,
            other: "node-0".into(),
            kept: false,
            explicit: false,
            reserved: true,
        };
        assert!(
            events.contains(&Event::SubnetConflict(conflict)),
            "{events:?}"
        );
    }
}
