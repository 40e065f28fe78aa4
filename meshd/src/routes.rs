//! The per-packet route table: destination pod address → peer ([`RouteTable::route`]), and for
//! received datagrams underlay source, WireGuard index or key → peer.
//!
//! The table is an immutable snapshot. The backend builds a new one whenever the peer set
//! changes and swaps it in atomically ([`Routes::install`]); data-path workers `load` it once per
//! batch, without a lock. Peer counters live outside the snapshot, keyed by name, so they survive
//! swaps; so do WireGuard sessions, which [`crate::peers::wireguard::Sessions`] keeps.

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::peers::wireguard::WgPeer;
use crate::peers::Peer;
use crate::stats::PeerStats;
use crate::wire::ip::v4_dst;
use crate::wire::{vtep_mac, MacAddr, VxlanHeader};
use meshd_crypto::PublicKey;

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
    /// The peer that owns a packet's destination. Node subnets are IPv4 for now: an IPv6
    /// packet has no owner yet.
    #[inline]
    pub fn route(&self, packet: &[u8]) -> Option<PeerId> {
        match packet.first()? >> 4 {
            4 => self.lookup_v4(v4_dst(packet)?),
            _ => None,
        }
    }

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
    /// Drops that belong to no peer (unknown source, no route), by reason.
    pub unattributed: Arc<PeerStats>,
}

impl Routes {
    pub fn new(local: Local) -> Self {
        Routes {
            local,
            current: ArcSwap::from_pointee(RouteTable::default()),
            stats: Mutex::new(HashMap::new()),
            unattributed: Arc::new(PeerStats::default()),
        }
    }

    /// The snapshot to route a batch with.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    /// Swap in a table for `peers`, each with its WireGuard session where it has one
    /// (`sessions[i]` belongs to `peers[i]`; missing entries mean none, as in cleartext mode).
    /// Peers no longer present lose their counters.
    pub fn install(&self, peers: &[Peer], sessions: Vec<Option<Arc<WgPeer>>>) {
        let local_mac = vtep_mac(&self.local.name);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.retain(|name, _| peers.iter().any(|p| &p.name == name));
        let mut sessions = sessions.into_iter();
        let entries: Vec<PeerEntry> = peers
            .iter()
            .map(|p| {
                let mac = vtep_mac(&p.name);
                PeerEntry {
                    name: p.name.clone(),
                    endpoint: SocketAddr::new(p.address, self.local.port),
                    subnet: p.subnet,
                    mac,
                    header: VxlanHeader::new(self.local.vni, local_mac, mac),
                    stats: stats.entry(p.name.clone()).or_default().clone(),
                    wg: sessions.next().flatten(),
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
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn peer(name: &str, addr: &str, subnet: &str) -> Peer {
        Peer::clear(name, addr.parse().unwrap(), subnet.parse().unwrap())
    }

    fn routes() -> Routes {
        let r = Routes::new(Local {
            name: "a".into(),
            vni: 1,
            port: 8472,
        });
        r.install(
            &[
                peer("c", "198.18.0.3", "10.244.3.0/24"),
                peer("b", "198.18.0.2", "10.244.2.0/24"),
                peer("big", "198.18.0.9", "10.244.128.0/17"),
            ],
            Vec::new(),
        );
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
        r.install(&[peer("b", "198.18.0.2", "10.244.2.0/24")], Vec::new());
        let t = r.load();
        assert_eq!(t.peers().len(), 1);
        assert_eq!(t.peer(0).stats.snapshot().tx_packets, 3);
        r.install(&[], Vec::new());
        r.install(&[peer("b", "198.18.0.2", "10.244.2.0/24")], Vec::new());
        assert_eq!(r.load().peer(0).stats.snapshot().tx_packets, 0);
    }
}
