//! The inner-source check of kernel-received VXLAN, kept in step with the peers
//! ([`crate::kernel::source_check`]): rewritten when a peer comes, goes or moves, compared with
//! the kernel every [`super::VERIFY_EVERY`] (a firewall reload may flush every table: then it
//! is written again), and its per-peer counters added to the peers' `spoofed-source` drops, as
//! the userspace path counts them, and the rest to the unattributed `unknown-source` drops.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use super::{lock, Manager};
use crate::kernel::nft::{self, Ruleset};
use crate::kernel::source_check::{self, SourceRule, VxlanSources};
use crate::kernel::traffic::{Direction, PeerTraffic};
use crate::kernel::vxlan;
use crate::paths::PathKind;
use crate::stats::{DropReason, PeerStats};
use ipnet::Ipv4Net;

/// The check's state on the manager (cleartext with the kernel VXLAN device only).
pub(crate) struct SourceCheck {
    port: u16,
    /// Rules a previous meshd's table held, kept until the adoption grace ends so its peers'
    /// traffic is not refused while gossip catches up.
    adopted: Vec<SourceRule>,
    /// What the kernel has, as last written (`None`: to be written).
    applied: Option<VxlanSources>,
    /// Counter readings already counted, by peer address, and the unknown sources'.
    seen: HashMap<Ipv4Addr, u64>,
    unknown_seen: u64,
    /// Where `unknown-source` drops are counted.
    unattributed: Option<Arc<PeerStats>>,
    /// Why the table could not be written, until it can.
    pub(super) error: Option<String>,
    /// The traffic counters as last written, and the readings already counted
    /// ([`super::traffic`]).
    pub(super) traffic: Option<PeerTraffic>,
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
            applied: Some(VxlanSources::new(port, adopted.iter().copied())),
            port,
            adopted,
            seen: HashMap::new(),
            unknown_seen: 0,
            unattributed,
            error: None,
            traffic: None,
            traffic_seen: HashMap::new(),
        }
    }
}

impl Manager {
    /// Write the table if the peers it should check changed (or it failed before).
    pub(super) fn sync_sources(&mut self, now: Instant) {
        let Some(desired) = self.desired_sources(now) else {
            return;
        };
        let traffic = self.desired_traffic();
        let Some(sc) = self.sources.as_ref() else {
            return;
        };
        if sc.error.is_none()
            && sc.applied.as_ref() == Some(&desired)
            && sc.traffic.as_ref() == Some(&traffic)
        {
            return;
        }
        // Count what the table being replaced dropped and carried: its counters start again at
        // zero.
        if let Ok(Some(table)) = nft::list() {
            self.count_drops(&nft::counters(&table));
            self.count_traffic(&nft::counters(&table));
        }
        let ruleset = Ruleset {
            vxlan_sources: Some(desired.clone()),
            traffic: Some(traffic.clone()),
        };
        let result = nft::apply(&ruleset);
        let Some(sc) = self.sources.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                if sc.error.take().is_some() {
                    tracing::info!("the kernel took meshd's nftables table: inner sources of kernel-received VXLAN are checked again");
                }
                sc.applied = Some(desired);
                sc.seen.clear();
                sc.unknown_seen = 0;
                sc.traffic = Some(traffic);
                sc.traffic_seen.clear();
            }
            Err(e) => {
                let text = e.to_string();
                if sc.error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "cannot write meshd's nftables table: VXLAN the kernel receives is not checked against its peers' subnets; retrying");
                }
                sc.error = Some(text);
                sc.applied = None;
            }
        }
        self.show_vxlan();
    }

    /// Compare the table with the kernel's (written again when gone) and count its drops.
    pub(super) fn verify_sources(&mut self, now: Instant) {
        if self.sources.is_none() {
            return;
        }
        match nft::list() {
            Ok(Some(table)) => {
                let counters = nft::counters(&table);
                self.count_drops(&counters);
                self.count_traffic(&counters);
            }
            Ok(None) => {
                if let Some(sc) = self.sources.as_mut().filter(|sc| sc.applied.is_some()) {
                    tracing::warn!(
                        "the kernel no longer has meshd's nftables table: writing it again"
                    );
                    sc.applied = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read meshd's nftables table"),
        }
        self.sync_sources(now);
    }

    /// The rules for the current peers (and, during the grace after start, those a previous
    /// meshd checked for peers not yet back).
    fn desired_sources(&self, now: Instant) -> Option<VxlanSources> {
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
    fn count_drops(&mut self, counters: &[nft::Counter]) {
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
        let sources = self.sources.as_ref().and_then(|sc| sc.error.clone());
        lock(&self.paths.kernel).vxlan =
            vxlan::device_text(dev, self.checksum_note.as_deref(), sources.as_deref());
    }
}
