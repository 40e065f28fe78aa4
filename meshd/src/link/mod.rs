//! One object per peer: [`PeerLink`], everything this node has observed and chosen for one
//! peer, kept while the peer stays and changed in place when its record changes.
//!
//! The peer set ([`crate::peers`]) says what is desired; the link holds what is: its counters,
//! its WireGuard session, its endpoint candidates and the endpoint in use, its path and why,
//! the MTU its packets get. Every field has one writer:
//!
//! | field | writer | readers |
//! |---|---|---|
//! | `stats` | data-path workers (relaxed atomics) | status, gossip evidence |
//! | record, candidates, session | the reconcile step ([`registry::Links`]) | data path (lock-free), status, path manager |
//! | endpoint in use (`ep`) | the reconcile step while it authenticated nothing lately; RX roaming on authenticated traffic ([`endpoint`]) | data path (lock-free), status |
//! | candidates observed by others, NAT seen by the peer | the gossip driver (`daemon/membership/observed.rs`) | WireGuard control thread, status |
//! | keepalive bookkeeping | the WireGuard control thread | itself |
//! | `mtu` (the node's until discovery finds the peer's) | the path manager's MTU search ([`crate::paths::mtud`]) | data path (lock-free), status, MSS clamping |
//! | path cell (path, route, entries, MTU search) | the path manager ([`crate::paths::manager`]) | status |
//!
//! The route-table snapshot ([`crate::routes::RouteTable`]) and the path manager hold the same
//! `Arc<PeerLink>`, so nothing is joined by name at read time.

pub(crate) mod endpoint;
pub(crate) mod punch;
pub mod registry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::paths::cell::PathCell;
use crate::peers::wireguard::WgPeer;
use crate::peers::{Endpoint, Peer};
use crate::stats::{PeerStats, Stamp};
use crate::wire::{vtep_mac, MacAddr, VxlanHeader};
use endpoint::EndpointCell;

/// The local end of every tunnel: this node's name (its VTEP MAC), VNI and data port.
#[derive(Debug, Clone)]
pub struct Local {
    pub name: String,
    pub vni: u32,
    pub port: u16,
}

/// Everything known about one peer.
pub struct PeerLink {
    pub(crate) name: String,
    /// Its VTEP MAC, from its name.
    pub(crate) mac: MacAddr,
    /// The VXLAN header our datagrams to it carry.
    pub(crate) header: VxlanHeader,
    /// Counters; they live as long as the link.
    pub stats: PeerStats,
    /// The endpoint datagrams go to (swapped whole: TX reads it without a lock), how it was
    /// learned, and the pair's NAT state.
    pub(crate) ep: EndpointCell,
    /// The control thread's keepalive bookkeeping: the session's data count at its last look,
    /// and when that count last moved (`Stamp` ms).
    pub(crate) keepalive_seen: AtomicU64,
    pub(crate) keepalive_at: AtomicU64,
    /// Hole punching towards it ([`punch`]): the gossip driver schedules, the control thread
    /// sends the bursts.
    pub(crate) punch: punch::PunchCell,
    /// The last handshake initiation the control thread sent it, for a punch burst to send
    /// again while that handshake is in flight.
    pub(crate) last_initiation: Mutex<Vec<u8>>,
    /// Where other members see this peer's traffic come from (their signed summaries say so),
    /// when its record does not name it: candidates to try, written by the gossip driver.
    observed: Mutex<Vec<Endpoint>>,
    /// The MTU of pod packets to it: the node's until path-MTU discovery finds the path's.
    mtu: AtomicU16,
    /// What the reconcile step last applied: the record, where it came from, the session.
    applied: Mutex<Applied>,
    /// The path manager's per-peer state.
    path: Mutex<Option<PathCell>>,
}

/// The reconcile step's half of a link.
pub(crate) struct Applied {
    pub(crate) peer: Peer,
    /// The WireGuard session, in encrypted mode.
    pub(crate) wg: Option<Arc<WgPeer>>,
    /// The keyring epoch the session's preshared key was chosen under.
    pub(crate) keyring_epoch: u64,
}

impl PeerLink {
    pub(crate) fn new(
        local: &Local,
        peer: Peer,
        wg: Option<Arc<WgPeer>>,
        mtu: u16,
        keyring_epoch: u64,
    ) -> Self {
        let mac = vtep_mac(&peer.name);
        let ep = EndpointCell::new(peer.endpoints.first());
        PeerLink {
            name: peer.name.clone(),
            mac,
            header: VxlanHeader::new(local.vni, vtep_mac(&local.name), mac),
            stats: PeerStats::default(),
            ep,
            keepalive_seen: AtomicU64::new(0),
            keepalive_at: AtomicU64::new(0),
            punch: punch::PunchCell::default(),
            last_initiation: Mutex::new(Vec::new()),
            observed: Mutex::new(Vec::new()),
            mtu: AtomicU16::new(mtu),
            applied: Mutex::new(Applied {
                peer,
                wg,
                keyring_epoch,
            }),
            path: Mutex::new(None),
        }
    }

    /// Where its datagrams go now.
    #[inline]
    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.ep.get()
    }

    /// A datagram from `src` authenticated as this peer's (RX, WireGuard): the endpoint in use
    /// follows it ([`EndpointCell::heard_from`]); a move is logged.
    #[inline]
    pub(crate) fn heard_from(&self, src: SocketAddr, now: Stamp) {
        self.ep.heard_from(src, now, |to| {
            tracing::info!(peer = %self.name, from = %self.endpoint(), %to, "peer endpoint roamed: its authenticated traffic comes from there");
            self.applied().peer.endpoints.iter().any(|e| {
                e.addr == to
                    && matches!(
                        e.source,
                        crate::peers::EndpointSource::Configured
                            | crate::peers::EndpointSource::Gossiped
                    )
            })
        });
    }

    /// Whether its datagrams leave from the data port alone: the pair is behind a NAT, which
    /// passes answers only from the address and port its mapping was made towards.
    #[inline]
    pub(crate) fn one_flow(&self) -> bool {
        self.ep.nat() != 0
    }

    /// The MTU of pod packets to this peer: the one source of the per-peer value (the data
    /// path's "fragmentation needed", the kernel route's `mtu`, MSS clamping, the status).
    #[inline]
    pub(crate) fn mtu(&self) -> u16 {
        self.mtu.load(Ordering::Relaxed)
    }

    /// Sets the MTU of pod packets to this peer (the path manager's MTU search, its one
    /// writer).
    pub(crate) fn set_mtu(&self, mtu: u16) {
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    /// The record it was last reconciled with.
    pub(crate) fn peer(&self) -> Peer {
        self.applied().peer.clone()
    }

    /// Its endpoint candidates, best first, with where each came from: its record's (or
    /// config's), then those other members observed.
    pub(crate) fn candidates(&self) -> Vec<Endpoint> {
        let mut all = self.applied().peer.endpoints.clone();
        let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(
            observed
                .iter()
                .filter(|o| !all.iter().any(|e| e.addr == o.addr))
                .cloned()
                .collect::<Vec<_>>(),
        );
        all
    }

    /// Its public endpoints (behind its NAT): those its record advertises as observed by
    /// others, and those members observed; the only addresses hole punching sends to.
    pub(crate) fn public_candidates(&self) -> Vec<SocketAddr> {
        self.candidates()
            .into_iter()
            .filter(|c| {
                matches!(
                    c.source,
                    crate::peers::EndpointSource::Learned
                        | crate::peers::EndpointSource::ObservedBy(_)
                )
            })
            .map(|c| c.addr)
            .collect()
    }

    /// Where a punch burst goes: its public endpoints, and its own (advertised) port at each of
    /// their addresses. A NAT that keeps ports maps the peer's port unchanged towards a new
    /// destination unless another host behind it holds that mapping: two nodes behind one
    /// masquerade, both on port 51820, are seen at another port by the members one of them
    /// reached first, and at their own port by a new peer.
    pub(crate) fn punch_targets(&self) -> Vec<SocketAddr> {
        let public = self.public_candidates();
        let ports: Vec<u16> = self
            .applied()
            .peer
            .endpoints
            .iter()
            .filter(|e| {
                matches!(
                    e.source,
                    crate::peers::EndpointSource::Gossiped
                        | crate::peers::EndpointSource::Configured
                )
            })
            .map(|e| e.addr.port())
            .collect();
        let mut all = public.clone();
        for a in &public {
            for &port in &ports {
                all.push(SocketAddr::new(a.ip(), port));
            }
        }
        let mut seen = Vec::with_capacity(all.len());
        all.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        all
    }

    /// Sets the candidates other members observed (the gossip driver's call).
    pub(crate) fn set_observed(&self, observed: Vec<Endpoint>) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = observed;
    }

    /// Its WireGuard session, in encrypted mode.
    #[cfg(test)]
    pub(crate) fn wg(&self) -> Option<Arc<WgPeer>> {
        self.applied().wg.clone()
    }

    pub(crate) fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path manager's cell (`None` until the manager admits the peer).
    pub(crate) fn path(&self) -> MutexGuard<'_, Option<PathCell>> {
        self.path.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}
