//! The peer set: every node this one talks to, wherever it was learnt (the config file's
//! `[[peers]]`, gossip members), merged by one rule ([`resolve`]) after each subnet is checked
//! ([`claims`]); what is refused, and why, is kept for the status ([`refused`]). It is the one
//! thing the control plane hands on: [`crate::backend::Backend`] is its only receiver, and
//! applies it in one reconcile step.
//!
//! Nothing here does I/O or touches the data path; the WireGuard half (node keys and the
//! sessions that outlive peer-set changes) is [`wireguard`].

pub(crate) mod claims;
pub(crate) mod refused;
pub(crate) mod rejected;
mod resolve;
pub mod wireguard;

use ipnet::Ipv4Net;
use meshd_crypto::{PublicKey, SecretId};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

pub use claims::Claim;
use claims::Guard;
use refused::{Refusals, Refused};

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
    /// It receives VXLAN in its kernel (its gossip record says so). Meaningless for static
    /// peers: the path manager finds out where they receive (`paths::receiver`).
    pub kernel_vxlan: bool,
}

/// One address and port a peer may be reached at, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub source: EndpointSource,
}

/// Where an endpoint candidate comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointSource {
    /// The config file's `[[peers]]` (or `--peer`), at the cluster's data port.
    Configured,
    /// The member's own gossip record: where it says it listens (its `address`).
    Gossiped,
    /// The member's own gossip record: where other members observe it from (its NAT's public
    /// endpoint, learned without configuration).
    Learned,
    /// Another member's signed path summary: where that member (named) sees this peer's
    /// traffic come from. Only ever a candidate to try.
    ObservedBy(std::sync::Arc<str>),
}

impl EndpointSource {
    /// How the status says it.
    pub(crate) fn text(&self) -> String {
        match self {
            EndpointSource::Configured => "configured".into(),
            EndpointSource::Gossiped => "advertised".into(),
            EndpointSource::Learned => "advertised (observed by others)".into(),
            EndpointSource::ObservedBy(by) => format!("observed by {by}"),
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
#[derive(Debug, Default)]
pub struct PeerSet {
    statics: Vec<Peer>,
    members: BTreeMap<String, Member>,
    own_subnet: Option<Ipv4Net>,
    guard: Guard,
    refusals: Refusals,
}

/// A gossip member: its peer, and how it holds its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) peer: Peer,
    pub(crate) claim: Claim,
}

impl PeerSet {
    pub(crate) fn new(statics: Vec<Peer>) -> Self {
        PeerSet {
            statics,
            ..PeerSet::default()
        }
    }

    /// Adds or replaces a gossip member that holds its subnet as a picked claim of stamp 0;
    /// true when the set changed.
    pub fn upsert_member(&mut self, peer: Peer) -> bool {
        self.upsert_claimed(peer, Claim::default())
    }

    /// Adds or replaces a gossip member holding its subnet as `claim` says; true when the set
    /// changed.
    pub fn upsert_claimed(&mut self, peer: Peer, claim: Claim) -> bool {
        let member = Member { peer, claim };
        self.members.get(&member.peer.name) != Some(&member) && {
            self.members.insert(member.peer.name.clone(), member);
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

    /// What every subnet is checked against (the cluster, this node's networks).
    pub(crate) fn set_guard(&mut self, guard: Guard) {
        self.guard = guard;
    }

    /// The peers to route: static peers first, then members by name. Each subnet is checked,
    /// and overlaps are settled by one order ([`resolve`]); what is refused is recorded (and
    /// logged once per change) for the status.
    pub(crate) fn resolve(&mut self) -> Vec<&Peer> {
        let (routed, refused) =
            resolve::settle(&self.statics, &self.members, self.own_subnet, &self.guard);
        self.refusals.update(refused, Instant::now());
        routed
    }

    /// The peers refused at the last resolve, and the refusals since start.
    pub(crate) fn refused(&self) -> (Vec<Refused>, u64) {
        self.refusals.snapshot()
    }
}

#[cfg(test)]
mod tests;
