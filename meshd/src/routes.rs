//! The per-packet route table: destination pod address → peer, underlay source → peer.
//!
//! The table is an immutable snapshot. The control plane builds a new one whenever the peer set
//! changes and swaps it in atomically ([`Routes::update`]); data-path workers `load` it once per
//! batch, without a lock. Peer counters live outside the snapshot, keyed by name, so they survive
//! swaps.

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::datapath::wg::{NodeCrypto, WgPeer};
use crate::stats::{DropReason, PeerStats};
use crate::wire::{vtep_mac, MacAddr, VxlanHeader};
use meshd_crypto::{PairKey, PublicKey, SecretId};

/// A peer as the control plane knows it, wherever it was learnt (config file or gossip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: IpAddr,
    pub subnet: Ipv4Net,
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

/// What the data path needs about one peer.
#[derive(Debug)]
pub struct PeerEntry {
    pub name: String,
    pub endpoint: SocketAddr,
    pub subnet: Ipv4Net,
    pub mac: MacAddr,
    pub header: VxlanHeader,
    pub stats: Arc<PeerStats>,
    /// The WireGuard session, in encrypted mode (a lock per peer; it outlives snapshots).
    pub wg: Option<Arc<WgPeer>>,
}

/// Index of a peer in a snapshot.
pub type PeerId = u32;

#[derive(Debug, Default)]
pub struct RouteTable {
    peers: Vec<PeerEntry>,
    /// Non-overlapping subnets sorted by first address: (first, last, peer).
    ranges: Vec<(u32, u32, PeerId)>,
    by_address: HashMap<IpAddr, PeerId>,
    /// WireGuard local index (the 23-bit slot, see `meshd_crypto::wire::local_index_of`) → peer.
    by_index: HashMap<u32, PeerId>,
    /// WireGuard static public key → peer, for handshake initiations.
    by_key: HashMap<PublicKey, PeerId>,
}

impl RouteTable {
    /// Longest-prefix match is unnecessary: node subnets never overlap (config validation and,
    /// later, gossip allocation guarantee it), so a binary search over ranges finds the owner.
    #[inline]
    pub fn lookup_v4(&self, dst: Ipv4Addr) -> Option<PeerId> {
        let a = u32::from(dst);
        let i = self.ranges.partition_point(|&(first, _, _)| first <= a);
        let (_, last, peer) = *self.ranges.get(i.checked_sub(1)?)?;
        (a <= last).then_some(peer)
    }

    /// The peer that sends from underlay address `ip`. By address only: a kernel VXLAN device
    /// picks its UDP source port per flow.
    #[inline]
    pub fn by_source(&self, ip: IpAddr) -> Option<PeerId> {
        self.by_address.get(&ip).copied()
    }

    /// The peer whose session has WireGuard local index `index`.
    #[inline]
    pub fn by_index(&self, index: u32) -> Option<PeerId> {
        self.by_index.get(&index).copied()
    }

    /// The peer with WireGuard static key `key`.
    #[inline]
    pub fn by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    #[inline]
    pub fn peer(&self, id: PeerId) -> &PeerEntry {
        &self.peers[id as usize]
    }

    pub fn peers(&self) -> &[PeerEntry] {
        &self.peers
    }
}

/// The local end of every tunnel.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub vni: u32,
    pub port: u16,
}

/// The swappable snapshot plus the counters that outlive it.
pub struct Routes {
    local: Local,
    current: ArcSwap<RouteTable>,
    stats: Mutex<HashMap<String, Arc<PeerStats>>>,
    /// Keys and the rate limiter in encrypted mode; `None` in cleartext mode.
    crypto: Option<Arc<NodeCrypto>>,
    /// Sessions by peer key: they survive swaps, like the counters.
    sessions: Mutex<HashMap<PublicKey, Arc<WgPeer>>>,
    /// The peer set last applied, for [`Routes::refresh`].
    last: Mutex<Vec<(Peer, Option<PeerKey>)>>,
    /// Drops that belong to no peer (unknown source, no route), by reason.
    pub unattributed: Arc<PeerStats>,
    generation: AtomicU64,
}

impl Routes {
    pub fn new(local: Local) -> Self {
        Self::with_crypto(local, None)
    }

    /// A table whose peers with a public key get a WireGuard session keyed by `crypto`.
    pub fn with_crypto(local: Local, crypto: Option<Arc<NodeCrypto>>) -> Self {
        Routes {
            local,
            current: ArcSwap::from_pointee(RouteTable::default()),
            stats: Mutex::new(HashMap::new()),
            crypto,
            sessions: Mutex::new(HashMap::new()),
            last: Mutex::new(Vec::new()),
            unattributed: Arc::new(PeerStats::default()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn local(&self) -> &Local {
        &self.local
    }

    pub fn crypto(&self) -> Option<&Arc<NodeCrypto>> {
        self.crypto.as_ref()
    }

    /// The snapshot to route a batch with.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// Replace the peer set. Peers no longer present lose their counters.
    pub fn update(&self, peers: &[Peer]) {
        let keyed: Vec<(Peer, Option<PeerKey>)> = peers.iter().map(|p| (p.clone(), None)).collect();
        self.update_keyed(&keyed);
    }

    /// Applies the last peer set again: after the cluster secrets changed, every pair's
    /// preshared key is chosen anew.
    pub fn refresh(&self) {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.update_keyed(&last);
    }

    /// Replace the peer set, with each peer's WireGuard key where known. A peer keeps its
    /// session (and so its keys and counters) while its key stays the same, and moves to a new
    /// preshared key without losing traffic when the secrets the pair shares change; a peer
    /// without a key, or in cleartext mode, has none.
    pub fn update_keyed(&self, peers: &[(Peer, Option<PeerKey>)]) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = peers.to_vec();
        let local_mac = vtep_mac(&self.local.name);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.retain(|name, _| peers.iter().any(|(p, _)| &p.name == name));
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|key, _| {
            peers
                .iter()
                .any(|(_, k)| k.as_ref().map(|k| &k.public) == Some(key))
        });
        let mut entries = Vec::with_capacity(peers.len());
        for (p, key) in peers {
            let mac = vtep_mac(&p.name);
            let s = stats.entry(p.name.clone()).or_default().clone();
            let wg = match (&self.crypto, key) {
                (Some(c), Some(k)) => match sessions.get(&k.public) {
                    Some(w) => {
                        let pair = c.pair_key(&k.public, k.secret_ids.as_deref());
                        let before = w.pair();
                        if w.set_pair(pair) {
                            tracing::info!(
                                peer = %p.name, from = %before.secret, to = %pair.secret,
                                "WireGuard preshared key changes with the shared cluster secret; the current session carries traffic until the new handshake completes"
                            );
                        }
                        if before.agreed {
                            warn_if_no_common_secret(&p.name, &pair);
                        }
                        Some(w.clone())
                    }
                    None => match c.new_peer(k.public, k.secret_ids.as_deref()) {
                        Ok(w) => {
                            warn_if_no_common_secret(&p.name, &w.pair());
                            sessions.insert(k.public, w.clone());
                            Some(w)
                        }
                        Err(e) => {
                            tracing::warn!(peer = %p.name, error = %e, "cannot create a WireGuard session");
                            None
                        }
                    },
                },
                _ => None,
            };
            entries.push(PeerEntry {
                name: p.name.clone(),
                endpoint: SocketAddr::new(p.address, self.local.port),
                subnet: p.subnet,
                mac,
                header: VxlanHeader::new(self.local.vni, local_mac, mac),
                stats: s,
                wg,
            });
        }
        let mut ranges: Vec<(u32, u32, PeerId)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    u32::from(e.subnet.network()),
                    u32::from(e.subnet.broadcast()),
                    i as PeerId,
                )
            })
            .collect();
        ranges.sort_unstable();
        let by_address = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.endpoint.ip(), i as PeerId))
            .collect();
        let with_wg = || {
            entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.wg.as_ref().map(|w| (w, i as PeerId)))
        };
        let by_index = with_wg().map(|(w, i)| (w.index, i)).collect();
        let by_key = with_wg().map(|(w, i)| (w.key, i)).collect();
        self.current.store(Arc::new(RouteTable {
            peers: entries,
            ranges,
            by_address,
            by_index,
            by_key,
        }));
        self.generation.fetch_add(1, Relaxed);
    }

    pub fn count_unattributed(&self, reason: DropReason) {
        self.unattributed.count_drop(reason, 1);
    }
}

/// Logs, at error, a peer that holds none of our cluster secrets.
fn warn_if_no_common_secret(peer: &str, pair: &PairKey) {
    if !pair.agreed {
        tracing::error!(
            peer,
            "no cluster secret in common with this peer: handshakes with it will fail (was a rotation step skipped?)"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn peer(name: &str, addr: &str, subnet: &str) -> Peer {
        Peer {
            name: name.into(),
            address: addr.parse().unwrap(),
            subnet: subnet.parse().unwrap(),
        }
    }

    fn routes() -> Routes {
        let r = Routes::new(Local {
            name: "a".into(),
            vni: 1,
            port: 8472,
        });
        r.update(&[
            peer("c", "198.18.0.3", "10.244.3.0/24"),
            peer("b", "198.18.0.2", "10.244.2.0/24"),
            peer("big", "198.18.0.9", "10.244.128.0/17"),
        ]);
        r
    }

    #[test]
    fn lookup_finds_the_owner_and_nothing_else() {
        let r = routes();
        let t = r.load();
        let name = |a: &str| {
            t.lookup_v4(a.parse().unwrap())
                .map(|id| t.peer(id).name.clone())
        };
        assert_eq!(name("10.244.2.0").as_deref(), Some("b"));
        assert_eq!(name("10.244.2.255").as_deref(), Some("b"));
        assert_eq!(name("10.244.3.17").as_deref(), Some("c"));
        assert_eq!(name("10.244.200.1").as_deref(), Some("big"));
        assert_eq!(name("10.244.4.1"), None);
        assert_eq!(name("10.244.1.1"), None);
        assert_eq!(name("0.0.0.0"), None);
        assert_eq!(name("255.255.255.255"), None);
    }

    #[test]
    fn source_lookup_ignores_port_and_headers_carry_macs() {
        let r = routes();
        let t = r.load();
        let id = t.by_source("198.18.0.2".parse().unwrap()).unwrap();
        let e = t.peer(id);
        assert_eq!(e.name, "b");
        assert_eq!(e.endpoint.port(), 8472);
        assert_eq!(e.mac, vtep_mac("b"));
        assert_eq!(e.header, VxlanHeader::new(1, vtep_mac("a"), vtep_mac("b")));
        assert!(t.by_source("198.18.0.7".parse().unwrap()).is_none());
    }

    #[test]
    fn counters_survive_swaps_and_leave_with_the_peer() {
        let r = routes();
        let before = r
            .load()
            .peer(r.load().by_source("198.18.0.2".parse().unwrap()).unwrap())
            .stats
            .clone();
        before.tx(3, 300);
        r.update(&[peer("b", "198.18.0.2", "10.244.2.0/24")]);
        let t = r.load();
        assert_eq!(t.peers().len(), 1);
        assert_eq!(t.peer(0).stats.snapshot().tx_packets, 3);
        r.update(&[]);
        r.update(&[peer("b", "198.18.0.2", "10.244.2.0/24")]);
        assert_eq!(r.load().peer(0).stats.snapshot().tx_packets, 0);
    }
}
