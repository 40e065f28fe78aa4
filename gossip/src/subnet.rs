//! The subnet pool: the cluster CIDR cut into equal node subnets, the deterministic pick, and
//! what a claim or a reservation must be for this node to count it at all ([`Pool::check`]).
//!
//! There is no central store. A node picks a free subnet starting at a slot derived from a
//! stable hash of its name and probing forward, so that nodes joining at the same moment
//! usually start far apart; when they do collide, [`crate::Precedence`] settles it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::alloc::MAX_STAMP;
use crate::record::{Subnet, SubnetClaim};

/// The most node subnets one explicit claim may span: 16 (a /20 where nodes get /24s, 4,094
/// pod addresses). More than any node runs pods (the kubelet's default is 110), so a larger
/// claim is a typo or an attempt to starve the pool, and is refused.
pub const MAX_CLAIM_SLOTS: u64 = 16;

/// Why a pool cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The node prefix is shorter than the cluster prefix or longer than 30.
    #[error(
        "node prefix /{node} does not fit in cluster /{cluster} (or leaves no host addresses)"
    )]
    PrefixMismatch {
        /// Cluster CIDR prefix.
        cluster: u8,
        /// Node subnet prefix.
        node: u8,
    },
}

/// Why a member's claim (or a reservation it publishes) is not counted: every node refuses it
/// on its own, by the same rule, so it is neither routed nor able to move anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimFault {
    /// Not inside this node's cluster CIDR: most often the member runs with another
    /// `cluster-cidr` than this node.
    #[error("{subnet} is outside this node's cluster-cidr {cidr} (the member's cluster-cidr differs, or its subnet is mistyped)")]
    OutsideCluster {
        /// The claimed subnet.
        subnet: Subnet,
        /// This node's cluster CIDR.
        cidr: Subnet,
    },
    /// A picked claim that is not a node subnet, or an explicit one smaller than a node subnet.
    #[error("{subnet} is not a /{node} node subnet (nor, configured, an aligned block of them)")]
    Prefix {
        /// The claimed subnet.
        subnet: Subnet,
        /// The node prefix of this cluster.
        node: u8,
    },
    /// An explicit claim of more than [`MAX_CLAIM_SLOTS`] node subnets, or a reservation of the
    /// whole cluster CIDR.
    #[error("{subnet} is too large: a claim spans at most {MAX_CLAIM_SLOTS} node subnets, a static peer's subnet less than the whole cluster-cidr")]
    TooLarge {
        /// The claimed subnet.
        subnet: Subnet,
    },
    /// The claim's Lamport stamp lies beyond [`MAX_STAMP`]: no cluster counts that many picks.
    #[error("its claim stamp {stamp} is implausibly far ahead (the bound is {MAX_STAMP})")]
    StampAhead {
        /// The stamp received.
        stamp: u64,
    },
}

/// The set of node subnets a cluster CIDR holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cidr: Subnet,
    node_prefix: u8,
}

/// More slots than this are never probed one by one: we stop after this many candidates so a
/// pick stays cheap in a /8 cut into /30s; the pool is then reported exhausted.
const MAX_PROBES: u64 = 1 << 20;

impl Pool {
    /// Cuts `cidr` into subnets of `node_prefix`.
    pub fn new(cidr: Subnet, node_prefix: u8) -> Result<Self, PoolError> {
        if node_prefix < cidr.prefix() || node_prefix > 30 {
            return Err(PoolError::PrefixMismatch {
                cluster: cidr.prefix(),
                node: node_prefix,
            });
        }
        Ok(Self { cidr, node_prefix })
    }

    /// The cluster CIDR.
    pub fn cidr(&self) -> Subnet {
        self.cidr
    }

    /// How many node subnets the pool holds.
    pub fn len(&self) -> u64 {
        1u64 << (self.node_prefix - self.cidr.prefix())
    }

    /// Never true: a pool holds at least one subnet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `subnet` is one of this pool's node subnets.
    pub fn holds(&self, subnet: &Subnet) -> bool {
        subnet.prefix() == self.node_prefix && self.cidr.contains(subnet)
    }

    /// The prefix length of a node subnet.
    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    /// Whether a member's claim is one this node counts: inside the cluster CIDR, a node subnet
    /// (or, configured explicitly, an aligned block of at most [`MAX_CLAIM_SLOTS`] of them, never
    /// the whole cluster CIDR unless it is one node subnet), with a plausible stamp.
    pub fn check(&self, claim: &SubnetClaim) -> Result<(), ClaimFault> {
        let subnet = claim.subnet;
        if !self.cidr.contains(&subnet) {
            return Err(ClaimFault::OutsideCluster {
                subnet,
                cidr: self.cidr,
            });
        }
        let prefix = subnet.prefix();
        if prefix > self.node_prefix || (prefix < self.node_prefix && !claim.explicit) {
            return Err(ClaimFault::Prefix {
                subnet,
                node: self.node_prefix,
            });
        }
        let slots = 1u64 << (self.node_prefix - prefix);
        if slots > MAX_CLAIM_SLOTS || (slots > 1 && prefix == self.cidr.prefix()) {
            return Err(ClaimFault::TooLarge { subnet });
        }
        if claim.stamp > MAX_STAMP {
            return Err(ClaimFault::StampAhead { stamp: claim.stamp });
        }
        Ok(())
    }

    /// Whether a static peer's subnet (a reservation) is one this node counts: inside the
    /// cluster CIDR and not all of it. Any size below that: a static peer may be one host.
    pub fn check_reserved(&self, subnet: &Subnet) -> Result<(), ClaimFault> {
        if !self.cidr.contains(subnet) {
            return Err(ClaimFault::OutsideCluster {
                subnet: *subnet,
                cidr: self.cidr,
            });
        }
        if subnet.prefix() == self.cidr.prefix() {
            return Err(ClaimFault::TooLarge { subnet: *subnet });
        }
        Ok(())
    }

    /// The `index`-th node subnet (taken modulo the pool size).
    pub fn nth(&self, index: u64) -> Subnet {
        let step = 1u64 << (32 - u32::from(self.node_prefix));
        let offset = (index % self.len()) * step;
        let base = u64::from(u32::from(self.cidr.addr()));
        let addr = Ipv4Addr::from(u32::try_from(base + offset).unwrap_or(u32::MAX));
        Subnet::new(addr, self.node_prefix).unwrap_or(self.cidr)
    }

    /// Picks the first subnet not `taken`, probing from a slot derived from `name`.
    pub fn pick(&self, name: &str, taken: impl Fn(&Subnet) -> bool) -> Option<Subnet> {
        let start = fnv1a(name.as_bytes());
        (0..self.len().min(MAX_PROBES))
            .map(|i| self.nth(start.wrapping_add(i)))
            .find(|s| !taken(s))
    }
}

/// Address ranges, for overlap checks in O(log N) without an allocation per range, each with a
/// value (who holds it). Ranges may overlap one another (contested claims), so each start keeps
/// the widest range seen there, and a query looks at the ranges that start between its first
/// address less the widest range seen and its last address. One definition for gossip's picks
/// and the daemon's peer set.
#[derive(Debug, Clone)]
pub struct Ranges<T> {
    /// First address → the last address of the widest range starting there, and its value.
    by_first: BTreeMap<u32, (u32, T)>,
    /// The widest range length seen, which bounds how far back an overlapping range can start.
    widest: u32,
}

impl<T> Default for Ranges<T> {
    fn default() -> Self {
        Ranges {
            by_first: BTreeMap::new(),
            widest: 0,
        }
    }
}

impl<T: Copy> Ranges<T> {
    /// Adds `first..=last` held by `value`.
    pub fn insert(&mut self, first: u32, last: u32, value: T) {
        let end = self.by_first.entry(first).or_insert((last, value));
        if last > end.0 {
            *end = (last, value);
        }
        self.widest = self.widest.max(last.saturating_sub(first));
    }

    /// The value of a range that shares an address with `first..=last`, if any does.
    pub fn find(&self, first: u32, last: u32) -> Option<T> {
        let from = first.saturating_sub(self.widest);
        self.by_first
            .range(from..=last)
            .find(|(_, (end, _))| *end >= first)
            .map(|(_, (_, v))| *v)
    }

    /// Adds `subnet` held by `value`.
    pub fn insert_subnet(&mut self, subnet: &Subnet, value: T) {
        let (first, last) = bounds(subnet);
        self.insert(first, last, value);
    }

    /// The value of a range that overlaps `subnet`, if any does.
    pub fn find_subnet(&self, subnet: &Subnet) -> Option<T> {
        let (first, last) = bounds(subnet);
        self.find(first, last)
    }
}

/// The first and last address of `subnet`, as integers.
fn bounds(subnet: &Subnet) -> (u32, u32) {
    let first = u32::from(subnet.addr());
    (first, first | !subnet.mask())
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A claim for tests: `s` parsed, explicit or picked, at `stamp`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_claim(s: &str, explicit: bool, stamp: u64) -> SubnetClaim {
    SubnetClaim {
        subnet: s.parse().unwrap(),
        stamp,
        explicit,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashSet;

    fn pool() -> Pool {
        Pool::new("10.244.0.0/16".parse().unwrap(), 24).unwrap()
    }

    #[test]
    fn default_pool_has_256_slots() {
        let p = pool();
        assert_eq!(p.len(), 256);
        assert_eq!(p.nth(0).to_string(), "10.244.0.0/24");
        assert_eq!(p.nth(255).to_string(), "10.244.255.0/24");
        assert_eq!(p.nth(256), p.nth(0));
        assert!(p.holds(&"10.244.7.0/24".parse().unwrap()));
        assert!(!p.holds(&"10.245.7.0/24".parse().unwrap()));
        assert!(!p.holds(&"10.244.7.0/25".parse().unwrap()));
    }

    #[test]
    fn pick_is_deterministic_and_skips_taken() {
        let p = pool();
        let none = |_: &Subnet| false;
        let first = p.pick("node-a", none).unwrap();
        assert_eq!(p.pick("node-a", none), Some(first));
        let taken: HashSet<_> = [first].into_iter().collect();
        let second = p.pick("node-a", |s| taken.contains(s)).unwrap();
        assert_ne!(first, second);
        assert!(p.holds(&second));
    }

    #[test]
    fn full_pool_yields_nothing() {
        let p = Pool::new("10.0.0.0/30".parse().unwrap(), 30).unwrap();
        let taken: HashSet<_> = [p.nth(0)].into_iter().collect();
        assert_eq!(p.pick("x", |s| taken.contains(s)), None);
    }

    use super::test_claim as claim;

    /// Inside the cluster, the node prefix, or (explicit) an aligned block of up to 16; a
    /// plausible stamp. Reservations: inside and not the whole cluster.
    #[test]
    fn claims_are_checked_against_the_cluster() {
        let p = pool();
        assert_eq!(p.check(&claim("10.244.7.0/24", false, 3)), Ok(()));
        assert_eq!(p.check(&claim("10.244.6.0/23", true, 3)), Ok(()));
        assert_eq!(p.check(&claim("10.244.16.0/20", true, 3)), Ok(()));
        let outside = claim("198.18.0.0/24", true, 0);
        assert!(matches!(
            p.check(&outside),
            Err(ClaimFault::OutsideCluster { .. })
        ));
        let around = claim("10.0.0.0/8", true, 0);
        assert!(matches!(
            p.check(&around),
            Err(ClaimFault::OutsideCluster { .. })
        ));
        for (s, explicit) in [("10.244.6.0/23", false), ("10.244.7.0/25", true)] {
            assert!(
                matches!(
                    p.check(&claim(s, explicit, 1)),
                    Err(ClaimFault::Prefix { .. })
                ),
                "{s}"
            );
        }
        for s in ["10.244.0.0/19", "10.244.0.0/16"] {
            assert!(
                matches!(
                    p.check(&claim(s, true, 1)),
                    Err(ClaimFault::TooLarge { .. })
                ),
                "{s}"
            );
        }
        assert_eq!(p.check(&claim("10.244.7.0/24", false, MAX_STAMP)), Ok(()));
        assert_eq!(
            p.check(&claim("10.244.7.0/24", false, u64::MAX)),
            Err(ClaimFault::StampAhead { stamp: u64::MAX })
        );
        let one = Pool::new("10.9.0.0/24".parse().unwrap(), 24).unwrap();
        assert_eq!(one.check(&claim("10.9.0.0/24", true, 0)), Ok(()));
        // Reservations: any size inside the cluster, not the cluster itself.
        assert_eq!(
            p.check_reserved(&"10.244.128.0/17".parse().unwrap()),
            Ok(())
        );
        assert_eq!(p.check_reserved(&"10.244.9.9/32".parse().unwrap()), Ok(()));
        assert!(p.check_reserved(&"10.244.0.0/16".parse().unwrap()).is_err());
        assert!(p.check_reserved(&"10.0.0.0/8".parse().unwrap()).is_err());
    }

    /// Overlap by containment, whichever side starts first, whatever the sizes.
    #[test]
    fn ranges_find_any_overlap() {
        let mut r = Ranges::default();
        let s = |t: &str| t.parse::<Subnet>().unwrap();
        r.insert_subnet(&s("10.244.128.0/17"), 'a');
        r.insert_subnet(&s("10.244.2.0/24"), 'b');
        r.insert_subnet(&s("10.244.2.0/23"), 'c');
        assert_eq!(r.find_subnet(&s("10.244.200.0/24")), Some('a'));
        assert_eq!(r.find_subnet(&s("10.244.3.0/24")), Some('c'));
        assert_eq!(r.find_subnet(&s("10.244.2.128/25")), Some('c'));
        assert_eq!(r.find_subnet(&s("10.244.0.0/16")), Some('c'));
        assert_eq!(r.find_subnet(&s("10.244.4.0/24")), None);
        assert_eq!(r.find_subnet(&s("10.244.127.0/24")), None);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        let cidr = "10.244.0.0/16".parse().unwrap();
        assert!(Pool::new(cidr, 8).is_err());
        assert!(Pool::new(cidr, 31).is_err());
    }
}
