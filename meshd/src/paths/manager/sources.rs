//! The inner-source check of kernel-received VXLAN, kept in step with the peers
//! ([`crate::kernel::source_check`]): its rules follow the peers (a peer comes, goes or moves;
//! the table is rewritten by [`super::table`]), and its per-peer counters are added to the
//! peers' `spoofed-source` drops, as the userspace path counts them, and the rest to the
//! unattributed `unknown-source` drops.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use super::{lock, Manager};
use crate::kernel::nft;
use crate::kernel::source_check::{self, SourceRule, VxlanSources};
use crate::kernel::traffic::Direction;
use crate::kernel::vxlan;
use crate::paths::PathKind;
use crate::stats::{DropReason, PeerStats};
use ipnet::Ipv4Net;

/// The check's state on the manager (cleartext with the kernel VXLAN device only). What the
/// kernel holds is the table's ([`crate::kernel::table::Table`]).
pub(crate) struct SourceCheck {
    port: u16,
    /// Rules a previous meshd's table held, kept until the adoption grace ends so its peers'
    /// traffic is not refused while gossip catches up.
    adopted: Vec<SourceRule>,
    /// Counter readings already counted, by peer address, and the unknown sources'.
    seen: HashMap<Ipv4Addr, u64>,
    unknown_seen: u64,
    /// Where `unknown-source` drops are counted.
    unattributed: Option<Arc<PeerStats>>,
    /// The traffic counters' readings already counted ([`super::traffic`]).
    pub(super) traffic_seen: HashMap<(Ipv4Net, PathKind, Direction), (u64, u64)>,
}

impl SourceCheck {
    /// The check as `fastpath` set it up: the table written with `adopted`'s rules.
    pub(crate) fn new(
        port: u16,
        adopted: Vec<SourceRule>,
        unattributed: Option<Arc<PeerStats>>,
    ) -> Self {
        SourceCheck {
            port,
            adopted,
            seen: HashMap::new(),
            unknown_seen: 0,
            unattributed,
            traffic_seen: HashMap::new(),
        }
    }

    /// The table was written again: its counters start from zero.
    pub(super) fn rewritten(&mut self) {
        self.seen.clear();
        self.unknown_seen = 0;
        self.traffic_seen.clear();
    }
}

impl Manager {
    /// The rules for the current peers (and, during the grace after start, those a previous
    /// meshd checked for peers not yet back).
    pub(super) fn desired_sources(&self, now: Instant) -> Option<VxlanSources> {
        let sc = self.sources.as_ref()?;
        let mut rules: Vec<SourceRule> = self
            .links
            .values()
            .filter_map(|l| {
                let cell = l.path();
                let c = cell.as_ref()?;
                match c.address? {
                    IpAddr::V4(address) => Some(SourceRule {
                        address,
                        subnet: c.subnet,
                    }),
                    IpAddr::V6(_) => None,
                }
            })
            .collect();
        if now < self.grace_until {
            let known: Vec<Ipv4Addr> = rules.iter().map(|r| r.address).collect();
            rules.extend(
                sc.adopted
                    .iter()
                    .filter(|r| !known.contains(&r.address))
                    .copied(),
            );
        }
        Some(VxlanSources::new(sc.port, rules))
    }

    /// Add what the counters counted since the last reading to the peers' drops.
    pub(super) fn count_drops(&mut self, counters: &[nft::Counter]) {
        let Some(sc) = self.sources.as_mut() else {
            return;
        };
        let by_address: HashMap<Ipv4Addr, Arc<crate::link::PeerLink>> = self
            .links
            .values()
            .filter_map(|l| match l.path().as_ref()?.address? {
                IpAddr::V4(a) => Some((a, l.clone())),
                IpAddr::V6(_) => None,
            })
            .collect();
        for (address, packets) in source_check::drops(counters) {
            let before = sc.seen.insert(address, packets).unwrap_or(0);
            let new = packets.checked_sub(before).unwrap_or(packets);
            if let (Some(link), true) = (by_address.get(&address), new > 0) {
                link.stats.count_drop(DropReason::SpoofedSource, new);
                tracing::debug!(peer = %link.name, new, "kernel-received VXLAN with an inner source outside the peer's subnet dropped");
            }
        }
        if let Some(packets) = source_check::unknown_drops(counters) {
            let new = packets.checked_sub(sc.unknown_seen).unwrap_or(packets);
            sc.unknown_seen = packets;
            if let (Some(u), true) = (&sc.unattributed, new > 0) {
                u.count_drop(DropReason::UnknownSource, new);
            }
        }
    }

    /// The VXLAN device's status line, from what the manager knows of it now.
    pub(super) fn show_vxlan(&self) {
        let Ok(dev) = &self.s.vxlan else { return };
        let sources = self
            .sources
            .as_ref()
            .and_then(|_| self.s.table.error())
            .map(|e| e.to_string());
        lock(&self.paths.kernel).vxlan =
            vxlan::device_text(dev, self.checksum_note.as_deref(), sources.as_deref());
    }
}
