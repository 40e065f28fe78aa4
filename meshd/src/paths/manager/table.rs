//! meshd's nftables table kept in step ([`crate::kernel::table`]): composed from the peers on
//! every tick (their subnets for the source checks and traffic counters, their MTUs for the MSS
//! clamp) and rewritten whole only when that differs from what the kernel holds; compared with
//! the kernel every [`VERIFY_EVERY`] (a firewall reload may flush every table: then it is
//! written again) and its counters read, and who else uses netfilter is looked at (while nobody
//! does, meshd's underlay and in-cluster traffic skip connection tracking, [`crate::kernel::notrack`]).
//! This runs in every mode: on a node without kernel
//! paths the manager wakes for it once every [`TABLE_TICK`].

use ipnet::Ipv4Net;
use std::time::{Duration, Instant};

use super::{lock, Manager, VERIFY_EVERY};
use crate::kernel::nft::{self, Counter};
use crate::kernel::notrack::{self, Others};

/// How often a node without kernel paths compares the table with its peers' MTUs (with kernel
/// paths the manager's own tick does it): a changed MTU reaches the clamp within this.
pub(super) const TABLE_TICK: Duration = Duration::from_secs(1);
/// How often a table that tracks everything (another netfilter user was there) looks whether
/// that user is gone. The other way, a user appearing while tracking is skipped, is seen at the
/// next check ([`VERIFY_EVERY`]): that listing costs nothing extra then.
const OTHERS_EVERY: Duration = Duration::from_secs(60);

impl Manager {
    /// Compare the table with the kernel's when due, then write it if what it should hold
    /// changed (or the last write failed).
    pub(super) fn tend_table(&mut self, now: Instant) {
        if now >= self.next_table_verify {
            self.next_table_verify = now + VERIFY_EVERY;
            if self.s.table.untracking() {
                self.verify_alone();
            } else {
                self.verify_table();
            }
        }
        if !self.s.table.untracking()
            && self.s.table.tracking_relevant()
            && now >= self.next_others_look
        {
            self.next_others_look = now + OTHERS_EVERY;
            let others = nft::list_all(false).map_or(Others::Unknown, |l| notrack::others(&l));
            self.s.table.observe_others(others);
        }
        self.sync_table(now);
    }

    /// Write the table if what it should hold changed (or the last write failed).
    pub(super) fn sync_table(&mut self, now: Instant) {
        let traffic = self.sources.as_ref().map(|_| self.desired_traffic());
        let peers = self.peer_addresses();
        self.s.table.set_peer_addresses(peers);
        let desired = self
            .s
            .table
            .compose(self.desired_sources(now), traffic, self.mtus());
        if self.s.table.holds(&desired) {
            return;
        }
        // A kernel (or a node) that refuses is asked again now and then, not on every tick.
        if self.s.table.error().is_some() && now < self.table_retry_at {
            return;
        }
        // Count what the table being replaced counted: its counters start again at zero.
        if let Ok(Some(table)) = nft::list() {
            self.read_counters(&nft::counters(&table));
        }
        let written = self.s.table.write(desired).is_ok();
        if !written {
            self.table_retry_at = now + VERIFY_EVERY;
        }
        if let (true, Some(sc)) = (written, self.sources.as_mut()) {
            sc.rewritten();
        }
        self.show_table();
    }

    /// Read the table's counters; a table the kernel no longer has is written again next.
    fn verify_table(&mut self) {
        if self.s.table.empty() {
            return;
        }
        match nft::list() {
            Ok(Some(table)) => self.read_counters(&nft::counters(&table)),
            Ok(None) => self.s.table.lost(),
            Err(e) => tracing::warn!(error = %e, "cannot read meshd's nftables table"),
        }
        self.show_table();
    }

    /// The check while tracking is skipped: one listing of the whole ruleset (then only meshd's
    /// table) gives the counters and shows any other netfilter user, for whom the table is
    /// written again at once, tracking everything.
    fn verify_alone(&mut self) {
        match nft::list_all(true) {
            Ok(all) => {
                if nft::holds_table(&all) {
                    self.read_counters(&nft::counters(&all));
                } else {
                    self.s.table.lost();
                }
                self.s.table.observe_others(notrack::others(&all));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nftables ruleset");
                self.s.table.observe_others(Others::Unknown);
            }
        }
        self.show_table();
    }

    fn read_counters(&mut self, counters: &[Counter]) {
        self.count_drops(counters);
        self.count_traffic(counters);
        self.s.table.count(counters);
    }

    /// Each peer's underlay address (IPv4), as its path knows it.
    fn peer_addresses(&self) -> Vec<std::net::Ipv4Addr> {
        self.links
            .values()
            .filter_map(|l| match l.path().as_ref()?.address? {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Each peer's subnet and the MTU of pod packets to it (what the MSS clamp follows).
    fn mtus(&self) -> Vec<(Ipv4Net, u16)> {
        self.links
            .values()
            .filter_map(|l| Some((l.path().as_ref()?.subnet, l.mtu())))
            .collect()
    }

    fn show_table(&self) {
        *lock(&self.paths.egress) = self.s.table.status();
        self.show_vxlan();
    }
}
