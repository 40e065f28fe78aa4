//! The peer set: every node this one talks to, wherever it was learnt (the config file's
//! `[[peers]]`, gossip members), merged by one rule. It is the one thing the control plane hands
//! on: [`crate::backend::Backend`] is its only receiver, and applies it in one reconcile step.
//!
//! Nothing here does I/O or touches the data path; the WireGuard half (node keys and the
//! sessions that outlive peer-set changes) is [`wireguard`].

pub(crate) mod rejected;
pub mod wireguard;

use ipnet::Ipv4Net;
use meshd_crypto::{PublicKey, SecretId};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// A peer as the control plane knows it: what is desired, not what is observed (that lives on
/// its [`crate::link::PeerLink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Where it can be reached, best first, each with where we learnt it. Never empty once
    /// admitted to the peer set (a member that publishes none is not routed).
    pub endpoints: Vec<Endpoint>,
    pub subnet: Ipv4Net,
    /// Its WireGuard identity; `None` in cleartext mode (or a member that published no key).
    pub key: Option<PeerKey>,
    /// It receives VXLAN in its kernel (its gossip record says so). Unknown for static peers,
    /// which count as userspace receivers.
    pub kernel_vxlan: bool,
}

/// One address and port a peer may be reached at, and who said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub source: EndpointSource,
}

/// Where an endpoint candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSource {
    /// The config file's `[[peers]]` (or `--peer`), at the cluster's data port.
    Configured,
    /// The member's own gossip record.
    Gossiped,
}

impl EndpointSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Configured => "configured",
            EndpointSource::Gossiped => "gossiped",
        }
    }
}

impl Peer {
    /// A peer without a WireGuard key (cleartext), reached at `endpoint`.
    pub fn clear(name: impl Into<String>, endpoint: SocketAddr, subnet: Ipv4Net) -> Peer {
        Peer {
            name: name.into(),
            endpoints: vec![Endpoint {
                addr: endpoint,
                source: EndpointSource::Configured,
            }],
            subnet,
            key: None,
            kernel_vxlan: false,
        }
    }

    /// The endpoint to send to first.
    pub(crate) fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoints.first().map(|e| e.addr)
    }

    /// The underlay address of its first endpoint: what the kernel paths (FDB entries, host-gw
    /// gateways) point at.
    pub(crate) fn address(&self) -> Option<IpAddr> {
        self.endpoint().map(|e| e.ip())
    }
}

/// A peer's WireGuard identity: its public key and, when it published them (gossip), the ids
/// of the cluster secrets it holds, which pick the pair's preshared key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    pub public: PublicKey,
    pub secret_ids: Option<Vec<SecretId>>,
}

impl PeerKey {
    /// A key with no published secret ids (a static peer): the pair uses our primary secret.
    pub fn fixed(public: PublicKey) -> Self {
        Self {
            public,
            secret_ids: None,
        }
    }
}

/// Static peers, gossip members and this node's own subnet, and the rule that merges them.
#[derive(Debug, Default, Clone)]
pub struct PeerSet {
    statics: Vec<Peer>,
    members: BTreeMap<String, Peer>,
    own_subnet: Option<Ipv4Net>,
}

impl PeerSet {
    pub(crate) fn new(statics: Vec<Peer>) -> Self {
        PeerSet {
            statics,
            ..PeerSet::default()
        }
    }

    /// Adds or replaces a gossip member; true when the set changed.
    pub fn upsert_member(&mut self, peer: Peer) -> bool {
        self.members.get(&peer.name) != Some(&peer) && {
            self.members.insert(peer.name.clone(), peer);
            true
        }
    }

    /// Withdraws a gossip member; true when it was there.
    pub(crate) fn remove_member(&mut self, name: &str) -> bool {
        self.members.remove(name).is_some()
    }

    /// This node's subnet (a gossip lease), which no member may be routed into.
    pub(crate) fn own_subnet(&self) -> Option<Ipv4Net> {
        self.own_subnet
    }

    pub(crate) fn set_own_subnet(&mut self, subnet: Option<Ipv4Net>) -> bool {
        std::mem::replace(&mut self.own_subnet, subnet) != subnet
    }

    /// The peers to route to: static peers first, then members. A static peer wins over a
    /// member of the same name, and a member whose subnet overlaps one already routed (or this
    /// node's own) waits until gossip settles the conflict. O(N log N): names in a hash set,
    /// routed subnets in an ordered map of ranges.
    pub(crate) fn resolve(&self) -> Vec<&Peer> {
        let mut all: Vec<&Peer> = self.statics.iter().collect();
        let mut names: HashSet<&str> = all.iter().map(|p| p.name.as_str()).collect();
        let mut taken = Ranges::default();
        for p in &all {
            taken.insert(p.subnet);
        }
        if let Some(own) = self.own_subnet {
            taken.insert(own);
        }
        for p in self.members.values() {
            if names.contains(p.name.as_str()) || taken.overlaps(p.subnet) || p.endpoints.is_empty()
            {
                continue;
            }
            names.insert(&p.name);
            taken.insert(p.subnet);
            all.push(p);
        }
        all
    }
}

/// Address ranges, for overlap checks in O(log N) without an allocation per range. Ranges
/// may overlap one another (statics are validated apart, our own subnet is not), so each start
/// keeps the widest end seen there, and a query looks at the ranges that start between its
/// first address less the widest range seen and its last address.
#[derive(Default)]
struct Ranges {
    /// First address → the last address of the widest range starting there.
    by_first: BTreeMap<u32, u32>,
    /// The widest range length seen, which bounds how far back an overlapping range can start.
    widest: u32,
}

impl Ranges {
    fn insert(&mut self, n: Ipv4Net) {
        let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
        let end = self.by_first.entry(first).or_insert(last);
        *end = (*end).max(last);
        self.widest = self.widest.max(last - first);
    }

    fn overlaps(&self, n: Ipv4Net) -> bool {
        let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
        let from = first.saturating_sub(self.widest);
        self.by_first
            .range(from..=last)
            .any(|(_, end)| *end >= first)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn peer(name: &str, n: u8, subnet: &str) -> Peer {
        Peer::clear(
            name,
            SocketAddr::from(([198, 18, 0, n], 8472)),
            subnet.parse().unwrap(),
        )
    }

    #[test]
    fn statics_win_and_overlapping_members_wait() {
        let mut set = PeerSet::new(vec![peer("s", 9, "10.244.9.0/24")]);
        assert!(set.upsert_member(peer("a", 1, "10.244.1.0/24")));
        assert!(
            !set.upsert_member(peer("a", 1, "10.244.1.0/24")),
            "no change"
        );
        assert!(
            set.upsert_member(peer("s", 2, "10.244.2.0/24")),
            "same name as a static"
        );
        assert!(
            set.upsert_member(peer("b", 3, "10.244.9.0/25")),
            "inside the static's"
        );
        assert!(set.upsert_member(peer("c", 4, "10.244.4.0/24")));
        assert!(set.set_own_subnet(Some("10.244.4.0/24".parse().unwrap())));
        let names: Vec<_> = set.resolve().into_iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["s", "a"]);
        assert!(set.remove_member("c"));
        assert!(!set.remove_member("c"));
        assert!(!set.set_own_subnet(Some("10.244.4.0/24".parse().unwrap())));
    }

    /// Overlaps are found whichever side starts first, whatever the prefix lengths.
    #[test]
    fn overlaps_of_any_length_wait() {
        let mut set = PeerSet::new(vec![peer("big", 9, "10.244.128.0/17")]);
        set.upsert_member(peer("a", 1, "10.244.2.0/24"));
        set.upsert_member(peer("b", 2, "10.244.2.0/23"));
        set.upsert_member(peer("c", 3, "10.244.3.0/24"));
        set.upsert_member(peer("d", 4, "10.244.200.0/24"));
        set.upsert_member(peer("e", 5, "10.244.0.0/16"));
        set.upsert_member(peer("f", 6, "10.244.4.0/24"));
        let names: Vec<_> = set.resolve().into_iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["big", "a", "c", "f"]);
    }
}
