//! The peer set: every node this one talks to, wherever it was learnt (the config file's
//! `[[peers]]`, gossip members), merged by one rule. It is the one thing the control plane hands
//! on: [`crate::backend::Backend`] is its only receiver, and applies it in one reconcile step.
//!
//! Nothing here does I/O or touches the data path; the WireGuard half (node keys and the
//! sessions that outlive peer-set changes) is [`wireguard`].

pub mod rejected;
pub mod wireguard;

use ipnet::Ipv4Net;
use meshd_crypto::{PublicKey, SecretId};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A peer as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Underlay address its datagrams come from and ours go to.
    pub address: IpAddr,
    pub subnet: Ipv4Net,
    /// Its WireGuard identity; `None` in cleartext mode (or a member that published no key).
    pub key: Option<PeerKey>,
    /// It receives VXLAN in its kernel (its gossip record says so). Unknown for static peers,
    /// which count as userspace receivers.
    pub kernel_vxlan: bool,
}

impl Peer {
    /// A peer without a WireGuard key (cleartext).
    pub fn clear(name: impl Into<String>, address: IpAddr, subnet: Ipv4Net) -> Peer {
        Peer {
            name: name.into(),
            address,
            subnet,
            key: None,
            kernel_vxlan: false,
        }
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
    pub fn new(statics: Vec<Peer>) -> Self {
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
    pub fn remove_member(&mut self, name: &str) -> bool {
        self.members.remove(name).is_some()
    }

    /// This node's subnet (a gossip lease), which no member may be routed into.
    pub fn own_subnet(&self) -> Option<Ipv4Net> {
        self.own_subnet
    }

    pub fn set_own_subnet(&mut self, subnet: Option<Ipv4Net>) -> bool {
        std::mem::replace(&mut self.own_subnet, subnet) != subnet
    }

    /// The peers to route to: static peers first, then members. A static peer wins over a
    /// member of the same name, and a member whose subnet overlaps one already routed (or this
    /// node's own) waits until gossip settles the conflict.
    pub fn resolve(&self) -> Vec<Peer> {
        let mut all = self.statics.clone();
        for p in self.members.values() {
            let clash = all
                .iter()
                .any(|q| q.name == p.name || overlaps(q.subnet, p.subnet))
                || self.own_subnet.is_some_and(|m| overlaps(m, p.subnet));
            if !clash {
                all.push(p.clone());
            }
        }
        all
    }
}

pub(crate) fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn peer(name: &str, n: u8, subnet: &str) -> Peer {
        Peer::clear(name, IpAddr::from([198, 18, 0, n]), subnet.parse().unwrap())
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
        let names: Vec<_> = set.resolve().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["s", "a"]);
        assert!(set.remove_member("c"));
        assert!(!set.remove_member("c"));
        assert!(!set.set_own_subnet(Some("10.244.4.0/24".parse().unwrap())));
    }
}
