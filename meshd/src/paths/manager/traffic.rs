//! The pod traffic kernel paths carry, per peer: the traffic counters of meshd's nftables table
//! ([`crate::kernel::traffic`]) are written with the inner-source checks ([`super::sources`]),
//! for the kernel devices this node routes peers through, and read whenever the table is (every
//! few seconds, and before it is replaced); what each counted since the last reading is added to
//! its peer's link ([`crate::stats::PeerStats::kernel`]), where `/metrics` reads it.

use std::collections::HashMap;
use std::sync::Arc;

use super::Manager;
use crate::kernel::nft::Counter;
use crate::kernel::traffic::{self, PeerTraffic};
use crate::link::PeerLink;
use crate::paths::PathKind;
use crate::stats::KERNEL_COUNTED;

/// The kernel paths whose traffic is counted per peer, in the order of
/// [`crate::stats::PeerStats::kernel`]. Kernel WireGuard is not among them: its device is
/// counted as a whole (`/metrics` reads its counters).
pub(crate) const COUNTED_PATHS: [PathKind; KERNEL_COUNTED] =
    [PathKind::KernelVxlan, PathKind::HostGw];

impl Manager {
    /// Counters for every peer's subnet, on the VXLAN device and (with host-gw) the underlay.
    pub(super) fn desired_traffic(&self) -> PeerTraffic {
        let mut devices = Vec::new();
        if let Ok(dev) = &self.s.vxlan {
            devices.push((PathKind::KernelVxlan, dev.index));
        }
        if let (true, Some(index)) = (self.s.host_gw, self.s.underlay_index) {
            devices.push((PathKind::HostGw, index));
        }
        let subnets = self
            .links
            .values()
            .filter_map(|l| l.path().as_ref().map(|c| c.subnet));
        PeerTraffic::new(devices, subnets)
    }

    /// Add what each counter counted since the last reading to its peer's link.
    pub(super) fn count_traffic(&mut self, counters: &[Counter]) {
        let Some(sc) = self.sources.as_mut() else {
            return;
        };
        let by_subnet: HashMap<ipnet::Ipv4Net, Arc<PeerLink>> = self
            .links
            .values()
            .filter_map(|l| Some((l.path().as_ref()?.subnet, l.clone())))
            .collect();
        for r in traffic::readings(counters) {
            let key = (r.subnet, r.path, r.direction);
            let (p0, b0) = sc
                .traffic_seen
                .insert(key, (r.packets, r.bytes))
                .unwrap_or((0, 0));
            // A counter that went back (the table was written again) counts from zero.
            let (packets, bytes) = match (r.packets.checked_sub(p0), r.bytes.checked_sub(b0)) {
                (Some(p), Some(b)) => (p, b),
                _ => (r.packets, r.bytes),
            };
            let path = COUNTED_PATHS.iter().position(|k| *k == r.path);
            if let (Some(link), Some(path), true) = (by_subnet.get(&r.subnet), path, packets > 0) {
                let rx = r.direction == traffic::Direction::Rx;
                link.stats.kernel(path, rx, packets, bytes);
            }
        }
    }
}
