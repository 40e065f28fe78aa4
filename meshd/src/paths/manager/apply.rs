//! A reconcile pass reaches the kernel: links that came are admitted (their VXLAN entries, their
//! offers, where they start), links that went are forgotten (route and entries removed, retried
//! until the kernel agrees), and links that changed are updated in place: only what changed is
//! redone, and the path's hysteresis stays.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::{Desired, Manager};
use crate::kernel::{routes, vxlan};
use crate::link::PeerLink;
use crate::paths::cell::PathCell;
use crate::paths::mtud::MtuSearch;
use crate::paths::{PathKind, PeerPath};
use crate::peers::Peer;

impl Manager {
    /// Bring the kernel objects in step with a new pass.
    pub(super) async fn apply(&mut self, d: Desired) {
        let own_changed = self.own != d.own_subnet;
        self.own = d.own_subnet;
        let peers: Vec<Peer> = d.links.iter().map(|l| l.peer()).collect();
        self.sync_wireguard(&peers);
        let wanted: HashSet<&str> = d.links.iter().map(|l| l.name.as_str()).collect();
        let gone: Vec<String> = self
            .links
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(link) = self.links.remove(&name) {
                self.forget(&link).await;
            }
        }
        for (link, peer) in d.links.iter().zip(peers) {
            match self.links.get(&link.name) {
                Some(held) if Arc::ptr_eq(held, link) => self.update(link, &peer).await,
                Some(held) => {
                    // The same peer under a new link (it left and came back between two
                    // passes): its path carries over.
                    let cell = held.path().take();
                    *link.path() = cell;
                    self.links.insert(link.name.clone(), link.clone());
                    self.update(link, &peer).await;
                }
                None => {
                    let cell = self.admit(link, &peer).await;
                    *link.path() = Some(cell);
                    self.links.insert(link.name.clone(), link.clone());
                }
            }
        }
        if own_changed {
            for link in self.links.values() {
                if let Some(c) = link.path().as_mut() {
                    c.routed = None;
                }
            }
        }
        self.checksums();
        self.sync_table(Instant::now());
        self.route_all().await;
    }

    /// A peer this manager has not seen: its entries, its offers, where it starts.
    async fn admit(&mut self, link: &PeerLink, peer: &Peer) -> PathCell {
        let now = Instant::now();
        let (offers, floor, floor_reason) = self.offers(peer).await;
        let vtep = peer.subnet.network();
        let found = self.adopted_routes.remove(&peer.subnet);
        let adopted_mtu = found.and_then(|f| f.mtu);
        let adopted = found.and_then(|f| {
            let dev = self.s.vxlan.as_ref().ok()?;
            if f.oif == Some(dev.index) && f.gateway == Some(vtep) {
                Some(PathKind::KernelVxlan)
            } else if f.gateway.map(std::net::IpAddr::V4) == peer.address() {
                Some(PathKind::HostGw)
            } else {
                None
            }
        });
        let mut path = PeerPath::new(offers, floor, floor_reason, adopted, self.s.pod_mtu, now);
        if let Some(why) = &self.unprobed {
            path.set_unprobed(why.clone());
        }
        if self.receivers_matter() {
            path.check_receiver(Self::receiver_prior(peer, adopted));
        }
        if let Some(k) = adopted.filter(|k| *k == path.current()) {
            tracing::info!(peer = %peer.name, path = %k, "adopted the peer's kernel path");
        }
        let mut cell = PathCell::new(path, peer.address(), peer.subnet, now);
        // Without the probe sockets nothing is searched: the status says `configured`.
        cell.mtu = self
            .s
            .mtu
            .filter(|_| self.prober.is_some())
            .map(|(floor, ceiling)| MtuSearch::new(floor, ceiling, now));
        // Traffic counts from here on: what the link carried before is no news.
        cell.mtu_tx = link.stats.pod_sent_bytes();
        cell.routed = adopted.filter(|k| *k == cell.path.current());
        // The MTU a previous meshd's route carries: kept while the search confirms it.
        cell.routed_mtu = adopted_mtu;
        if let (Some(m), Some(mtu)) = (cell.mtu.as_mut(), adopted_mtu) {
            m.resume(mtu);
            link.set_mtu(m.mtu());
        }
        cell.entries = self.set_entries(&link.name, link, &cell).await;
        cell
    }

    /// A peer whose record changed: redo only what the change touches.
    async fn update(&mut self, link: &PeerLink, peer: &Peer) {
        let held = link.path().as_ref().map(|c| (c.subnet, c.address));
        let Some((subnet, address)) = held else {
            let cell = self.admit(link, peer).await;
            *link.path() = Some(cell);
            return;
        };
        let subnet_moved = subnet != peer.subnet;
        let address_moved = address != peer.address();
        if !subnet_moved && !address_moved {
            return;
        }
        let Some(before) = link.path().clone() else {
            return;
        };
        if subnet_moved {
            tracing::info!(peer = %peer.name, from = %before.subnet, to = %peer.subnet, "peer's subnet moved: moving its route");
            if before.routed.is_some() {
                self.remove_route(before.subnet).await;
            }
            if let Ok(dev) = &self.s.vxlan {
                vxlan::remove_peer(&self.s.host, dev.index, link.mac, before.vtep).await;
            }
        }
        let path = if address_moved {
            tracing::info!(peer = %peer.name, "peer's underlay address moved: moving its entries");
            let (offers, floor, floor_reason) = self.offers(peer).await;
            let current = Some(before.path.current());
            let mut path = PeerPath::new(
                offers,
                floor,
                floor_reason,
                current,
                self.s.pod_mtu,
                Instant::now(),
            );
            if let Some(why) = &self.unprobed {
                path.set_unprobed(why.clone());
            }
            if let Some(r) = before.path.receiver() {
                path.check_receiver(r.clone());
            }
            path
        } else {
            before.path.clone()
        };
        let mut cell = PathCell::new(path, peer.address(), peer.subnet, Instant::now());
        cell.next_probe = before.next_probe;
        // The MTU search carries over; a new address is another path (the search starts over
        // when its path differs from the one it measured).
        cell.mtu = before.mtu;
        cell.mtu_tx = before.mtu_tx;
        cell.mtu_path = before.mtu_path.filter(|_| !address_moved);
        cell.entries = self.set_entries(&link.name, link, &cell).await;
        *link.path() = Some(cell);
    }

    /// Its FDB and neighbour entries on the VXLAN device (cleartext); true when in place or
    /// not needed.
    pub(super) async fn set_entries(&self, name: &str, link: &PeerLink, cell: &PathCell) -> bool {
        let (Ok(dev), true) = (
            &self.s.vxlan,
            self.s.encryption == crate::config::Encryption::None,
        ) else {
            return true;
        };
        let Some(address) = cell.address else {
            return true;
        };
        match vxlan::set_peer(&self.s.host, dev.index, link.mac, cell.vtep, address).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(peer = %name, error = %format!("{e:#}"), "cannot add the peer's VXLAN entries; retrying");
                false
            }
        }
    }

    /// Remove a peer's route and entries; a route the kernel will not remove is retried.
    async fn forget(&mut self, link: &PeerLink) {
        let cell = link.path().take();
        if let Some(cell) = cell {
            if cell.routed.is_some() || cell.route_error.is_some() {
                self.remove_route(cell.subnet).await;
            }
            if let Ok(dev) = &self.s.vxlan {
                vxlan::remove_peer(&self.s.host, dev.index, link.mac, cell.vtep).await;
            }
        }
        self.outstanding.retain(|_, o| o.link.name != link.name);
    }

    /// Remove meshd's route for `subnet`; kept for a retry when the kernel refuses.
    pub(super) async fn remove_route(&mut self, subnet: ipnet::Ipv4Net) {
        if let Err(e) = routes::remove(&self.s.host, subnet).await {
            tracing::warn!(%subnet, error = %format!("{e:#}"), "removing a peer's route; retrying");
            if !self.stale_routes.contains(&subnet) {
                self.stale_routes.push(subnet);
            }
        }
    }
}
