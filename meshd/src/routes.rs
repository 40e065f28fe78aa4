//! The per-packet route table: destination pod address → peer ([`RouteTable::route`]), and for
//! received datagrams underlay source, WireGuard index or key → peer.
//!
//! The table is an immutable snapshot of the peers' links ([`crate::link::PeerLink`]). The
//! reconcile step builds a new one whenever a link comes, goes or changes and swaps it in
//! atomically ([`Routes::install`]); data-path workers `load` it once per batch, without a
//! lock. What outlives a snapshot (counters, the endpoint in use, the session) lives on the
//! link, which every snapshot shares.

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::sync::Arc;

pub use crate::link::Local;
use crate::link::PeerLink;
use crate::peers::wireguard::WgPeer;
use crate::stats::PeerStats;
use crate::wire::ip::v4_dst;
use meshd_crypto::PublicKey;

/// One peer in a snapshot: its link, and what the data path reads of it without a lock (the
/// session and subnet as of this snapshot; a change swaps in a new snapshot).
#[derive(Debug)]
pub struct PeerEntry {
    pub(crate) link: Arc<PeerLink>,
    pub subnet: Ipv4Net,
    /// The WireGuard session, in encrypted mode (a lock per peer; it outlives snapshots).
    pub wg: Option<Arc<WgPeer>>,
}

impl Deref for PeerEntry {
    type Target = PeerLink;
    #[inline]
    fn deref(&self) -> &PeerLink {
        &self.link
    }
}

/// Index of a peer in a snapshot.
pub(crate) type PeerId = u32;

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
    /// The peer that owns a packet's destination. Node subnets are IPv4 for now: an IPv6
    /// packet has no owner yet.
    #[inline]
    pub(crate) fn route(&self, packet: &[u8]) -> Option<PeerId> {
        match packet.first()? >> 4 {
            4 => self.lookup_v4(v4_dst(packet)?),
            _ => None,
        }
    }

    /// Longest-prefix match is unnecessary: node subnets never overlap (config validation and,
    /// later, gossip allocation guarantee it), so a binary search over ranges finds the owner.
    #[inline]
    pub(crate) fn lookup_v4(&self, dst: Ipv4Addr) -> Option<PeerId> {
        let a = u32::from(dst);
        let i = self.ranges.partition_point(|&(first, _, _)| first <= a);
        let (_, last, peer) = *self.ranges.get(i.checked_sub(1)?)?;
        (a <= last).then_some(peer)
    }

    /// The peer that sends from underlay address `ip`. By address only: a kernel VXLAN device
    /// picks its UDP source port per flow.
    #[inline]
    pub(crate) fn by_source(&self, ip: IpAddr) -> Option<PeerId> {
        self.by_address.get(&ip).copied()
    }

    /// The peer whose session has WireGuard local index `index`.
    #[inline]
    pub(crate) fn by_index(&self, index: u32) -> Option<PeerId> {
        self.by_index.get(&index).copied()
    }

    /// The peer with WireGuard static key `key`.
    #[inline]
    pub(crate) fn by_key(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    #[inline]
    pub fn peer(&self, id: PeerId) -> &PeerEntry {
        &self.peers[id as usize]
    }

    pub(crate) fn peers(&self) -> &[PeerEntry] {
        &self.peers
    }

    /// Gives every peer `mtu`, as path-MTU discovery would: for tests and fuzz targets that
    /// need a table without a control plane.
    #[doc(hidden)]
    pub fn set_mtus(&self, mtu: u16) {
        for p in &self.peers {
            p.set_mtu(mtu);
        }
    }
}

/// The swappable snapshot, and the counter of drops no peer owns.
pub struct Routes {
    local: Local,
    current: ArcSwap<RouteTable>,
    /// Drops that belong to no peer (unknown source, no route), by reason.
    pub(crate) unattributed: Arc<PeerStats>,
}

impl Routes {
    pub fn new(local: Local) -> Self {
        Routes {
            local,
            current: ArcSwap::from_pointee(RouteTable::default()),
            unattributed: Arc::new(PeerStats::default()),
        }
    }

    /// The local end of every tunnel.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// The snapshot to route a batch with.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// Swap in a table of `links` (the reconcile step's call).
    pub fn install(&self, links: &[Arc<PeerLink>]) {
        let entries: Vec<PeerEntry> = links
            .iter()
            .map(|l| {
                let a = l.applied();
                PeerEntry {
                    link: l.clone(),
                    subnet: a.peer.subnet,
                    wg: a.wg.clone(),
                }
            })
            .collect();
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
        let mut by_address = HashMap::with_capacity(entries.len());
        by_address.extend(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.endpoint().ip(), i as PeerId)),
        );
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
    }

    /// Cleartext peers straight into a table, links and all: for tests and fuzz targets that
    /// need a table without a control plane.
    #[doc(hidden)]
    pub fn install_clear(&self, peers: &[crate::peers::Peer]) {
        let mut links = crate::link::registry::Links::new(self.local.clone(), None, 1500);
        self.install(&links.reconcile(peers, 0).links);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::peers::Peer;
    use crate::wire::{vtep_mac, VxlanHeader};
    use std::net::SocketAddr;

    fn peer(name: &str, addr: &str, subnet: &str) -> Peer {
        Peer::clear(
            name,
            SocketAddr::new(addr.parse().unwrap(), 8472),
            subnet.parse().unwrap(),
        )
    }

    fn routes_only() -> Routes {
        Routes::new(Local {
            name: "a".into(),
            vni: 1,
            port: 8472,
        })
    }

    fn routes() -> Routes {
        let r = routes_only();
        r.install_clear(&[
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
        assert_eq!(e.endpoint().port(), 8472);
        assert_eq!(e.mac, vtep_mac("b"));
        assert_eq!(e.header, VxlanHeader::new(1, vtep_mac("a"), vtep_mac("b")));
        assert!(t.by_source("198.18.0.7".parse().unwrap()).is_none());
    }

    /// Counters live on the link: they survive snapshots, and go with the peer.
    #[test]
    fn counters_survive_swaps_and_leave_with_the_peer() {
        let r = routes_only();
        let mut links = crate::link::registry::Links::new(r.local().clone(), None, 1500);
        let mut install = |peers: &[Peer]| r.install(&links.reconcile(peers, 0).links);
        install(&[
            peer("c", "198.18.0.3", "10.244.3.0/24"),
            peer("b", "198.18.0.2", "10.244.2.0/24"),
        ]);
        let t = r.load();
        let before = &t
            .peer(t.by_source("198.18.0.2".parse().unwrap()).unwrap())
            .stats;
        before.tx(3, 300, 300);
        install(&[peer("b", "198.18.0.2", "10.244.2.0/24")]);
        let t = r.load();
        assert_eq!(t.peers().len(), 1);
        assert_eq!(t.peer(0).stats.snapshot().tx_packets, 3);
        install(&[]);
        install(&[peer("b", "198.18.0.2", "10.244.2.0/24")]);
        assert_eq!(r.load().peer(0).stats.snapshot().tx_packets, 0);
    }
}
