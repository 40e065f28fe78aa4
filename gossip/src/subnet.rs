//! The subnet pool: the cluster CIDR cut into equal node subnets, and the deterministic pick.
//!
//! There is no central store. A node picks a free subnet starting at a slot derived from a
//! stable hash of its name and probing forward, so that nodes joining at the same moment
//! usually start far apart; when they do collide, [`crate::SubnetClaim::beats`] settles it.

use std::net::Ipv4Addr;

use crate::record::Subnet;

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

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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

    #[test]
    fn bad_prefixes_are_refused() {
        let cidr = "10.244.0.0/16".parse().unwrap();
        assert!(Pool::new(cidr, 8).is_err());
        assert!(Pool::new(cidr, 31).is_err());
    }
}
