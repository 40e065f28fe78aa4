//! Kernel state converges on what the manager wants: every tick each peer's route is compared
//! with the path it is on and set where it differs, a route or entry the kernel refused is
//! tried again (every [`RETRY_AFTER`], its error shown in the status meanwhile), routes of
//! departed peers the kernel would not remove are removed again, and every [`VERIFY_EVERY`] the
//! routes are compared with what the kernel really has (a device that went down took its
//! routes with it; an operator deleted one), so that the status never shows a path the kernel
//! does not have for long.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use super::{Manager, RETRY_AFTER, VERIFY_EVERY};
use crate::config::Encryption;
use crate::host::gateway;
use crate::kernel::routes::{self, Via};
use crate::kernel::vxlan;
use crate::link::PeerLink;
use crate::paths::PathKind;
use crate::wire::MacAddr;

/// A route to set: the peer, its path, the way, its subnet and the MTU it carries.
type DueRoute = (Arc<PeerLink>, PathKind, Via, ipnet::Ipv4Net, Option<u16>);

impl Manager {
    /// Set every peer's route where it is not what its path needs (and its retry is due).
    pub(super) async fn route_all(&mut self) {
        if !self.kernel_in_play() {
            return;
        }
        let Some(own) = self.own else { return };
        let source = gateway(own);
        let now = Instant::now();
        let mut due: Vec<DueRoute> = Vec::new();
        for link in self.links.values() {
            let cell = link.path();
            let Some(c) = cell.as_ref() else { continue };
            let want = c.path.current();
            // The peer's path MTU, when discovery found it below the pod MTU.
            let mtu = (c.mtu.is_some() && link.mtu() < self.s.pod_mtu).then(|| link.mtu());
            if (c.routed == Some(want) && c.routed_mtu == mtu) || now < c.retry_at {
                continue;
            }
            if let Some(via) = self.via(c, want) {
                due.push((link.clone(), want, via, c.subnet, mtu));
            }
        }
        for (link, want, via, subnet, mtu) in due {
            let result = routes::set(&self.s.host, subnet, via, source, mtu).await;
            let mut cell = link.path();
            let Some(c) = cell.as_mut().filter(|c| c.subnet == subnet) else {
                continue;
            };
            match result {
                Ok(()) => {
                    if c.route_error.take().is_some() {
                        tracing::info!(peer = %link.name, path = %want, "the kernel took the peer's route");
                    }
                    c.routed = Some(want);
                    c.routed_mtu = mtu;
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if c.route_error.as_deref() != Some(text.as_str()) {
                        tracing::error!(peer = %link.name, path = %want, error = %text, "cannot route the peer's subnet; retrying every second");
                    }
                    c.route_error = Some(text);
                    c.retry_at = now + RETRY_AFTER;
                }
            }
        }
    }

    /// Entries the kernel refused, and routes of departed peers it would not remove: again.
    pub(super) async fn retry_failed(&mut self, now: Instant) {
        let due: Vec<Arc<PeerLink>> = self
            .links
            .values()
            .filter(|l| {
                l.path()
                    .as_ref()
                    .is_some_and(|c| !c.entries && now >= c.retry_at)
            })
            .cloned()
            .collect();
        for link in due {
            let Some(cell) = link.path().clone() else {
                continue;
            };
            let ok = self.set_entries(&link.name, &link, &cell).await;
            if let Some(c) = link.path().as_mut() {
                c.entries = ok;
                if !ok {
                    c.retry_at = now + RETRY_AFTER;
                }
            }
        }
        for subnet in std::mem::take(&mut self.stale_routes) {
            self.remove_route(subnet).await;
        }
    }

    /// Compares meshd's routes in the kernel with what each peer's cell says it has; a route
    /// that went missing (or points elsewhere) is set again on this tick.
    pub(super) async fn verify_routes(&mut self, now: Instant) {
        if now < self.next_verify || !self.kernel_in_play() {
            return;
        }
        self.next_verify = now + VERIFY_EVERY;
        let Ok(found) = routes::list(&self.s.host).await else {
            return;
        };
        let found: HashMap<ipnet::Ipv4Net, routes::Found> =
            found.into_iter().map(|f| (f.subnet, f)).collect();
        for link in self.links.values() {
            let mut cell = link.path();
            let Some(c) = cell.as_mut() else { continue };
            let Some(k) = c.routed else { continue };
            let Some(via) = self.via(c, k) else { continue };
            let held = found.get(&c.subnet);
            if !held.is_some_and(|f| routes::matches(f, via)) {
                tracing::warn!(peer = %link.name, path = %k, "the kernel no longer has the peer's route: setting it again");
                c.routed = None;
                c.retry_at = now;
            }
        }
        self.verify_entries(now).await;
    }

    /// Likewise the FDB and neighbour entries on the VXLAN device (a device taken down loses
    /// its neighbours, permanent ones included).
    async fn verify_entries(&mut self, now: Instant) {
        let (Ok(dev), Encryption::None) = (&self.s.vxlan, self.s.encryption) else {
            return;
        };
        let Ok(found) = vxlan::entries(&self.s.host, dev.index).await else {
            return;
        };
        let fdb: HashSet<(MacAddr, IpAddr)> = found.fdb.into_iter().collect();
        let neighbours: HashSet<(Ipv4Addr, MacAddr)> = found.neighbours.into_iter().collect();
        for link in self.links.values() {
            let mut cell = link.path();
            let Some(c) = cell.as_mut().filter(|c| c.entries) else {
                continue;
            };
            let Some(address) = c.address else { continue };
            if !fdb.contains(&(link.mac, address)) || !neighbours.contains(&(c.vtep, link.mac)) {
                tracing::warn!(peer = %link.name, "the kernel no longer has the peer's VXLAN entries: adding them again");
                c.entries = false;
                c.retry_at = now;
            }
        }
    }
}
