//! meshd's nftables table as the daemon keeps it, in every mode and on every data path: which
//! jobs are in it ([`Table::compose`], the one place a [`Ruleset`] is put together), what the
//! kernel was last given, and why it could not be given anything.
//!
//! The start-up code ([`crate::daemon::fastpath`]) writes it first (with the inner-source
//! checks a previous meshd left, when the kernel VXLAN device is to be used), then the path
//! manager owns it: rewritten whenever what it should hold changes (a peer comes or goes, a
//! peer's MTU changes), compared with the kernel every few seconds and written again when a
//! firewall reload flushed it. Detection is by trying: without `nft` (or nf_tables) the write
//! fails, meshd warns once, and `meshd status` says masquerade and clamping are off and why.

use ipnet::Ipv4Net;

use super::egress::{self, Egress};
use super::mss::{self, MssClamp};
use super::nft::{self, Counter, NftError, Ruleset};
use super::notrack::{Notrack, Others, Tracking};
use super::source_check::VxlanSources;
use super::traffic::PeerTraffic;
use crate::config::Config;
use crate::status::{EgressStatus, MssStatus};

/// The table: the configured jobs and what the kernel holds.
#[derive(Debug)]
pub(crate) struct Table {
    /// The masquerade rule (`None`: `masquerade = false`).
    egress: Option<Egress>,
    exempt: Vec<Ipv4Net>,
    clamping: bool,
    /// Whether connection tracking may be skipped, and why not.
    tracking: Tracking,
    /// The peers' underlay addresses, whose datagrams on the data port may skip it.
    peer_addresses: Vec<std::net::Ipv4Addr>,
    /// What the kernel has, as last written (`None`: to be written).
    applied: Option<Ruleset>,
    /// Why the last write failed, until one succeeds.
    error: Option<NftError>,
    /// Counter readings since the table was last written, and the totals since start.
    seen_masq: u64,
    seen_clamped: u64,
    masqueraded: u64,
    clamped: u64,
}

impl Table {
    pub(crate) fn new(cfg: &Config) -> Table {
        Table {
            egress: cfg
                .masquerade
                .then(|| Egress::new(cfg.cluster_cidr, &cfg.no_masquerade_cidrs)),
            exempt: cfg.no_masquerade_cidrs.clone(),
            clamping: cfg.mss_clamping,
            tracking: Tracking::new(
                cfg.masquerade
                    .then(|| Notrack::new(cfg.cluster_cidr, cfg.data_port())),
            ),
            peer_addresses: Vec::new(),
            applied: None,
            error: None,
            seen_masq: 0,
            seen_clamped: 0,
            masqueraded: 0,
            clamped: 0,
        }
    }

    /// The whole table for these per-peer parts: the configured jobs join them here and
    /// nowhere else. `mtus` is each peer's (subnet, MTU of pod packets to it).
    pub(crate) fn compose(
        &self,
        vxlan_sources: Option<VxlanSources>,
        traffic: Option<PeerTraffic>,
        mtus: impl IntoIterator<Item = (Ipv4Net, u16)>,
    ) -> Ruleset {
        Ruleset {
            vxlan_sources,
            traffic,
            egress: self.egress.clone(),
            mss: self.clamping.then(|| MssClamp::new(mtus)),
            notrack: self.tracking.chains(&self.peer_addresses),
        }
    }

    /// The peers' underlay addresses, for the next [`Table::compose`].
    pub(crate) fn set_peer_addresses(&mut self, peers: Vec<std::net::Ipv4Addr>) {
        self.peer_addresses = peers;
    }

    /// Whether the table turns connection tracking on (the masquerade), so that who else uses
    /// netfilter matters ([`super::notrack`]).
    pub(crate) fn tracking_relevant(&self) -> bool {
        self.tracking.relevant()
    }

    /// Whether the kernel holds the chains that skip tracking.
    pub(crate) fn untracking(&self) -> bool {
        self.applied.as_ref().is_some_and(|r| r.notrack.is_some())
    }

    /// What a look at the namespace's other netfilter users found; whether the table changes.
    pub(crate) fn observe_others(&mut self, others: Others) -> bool {
        self.tracking.observe(others)
    }

    /// Whether the kernel holds `r` as it is.
    pub(crate) fn holds(&self, r: &Ruleset) -> bool {
        self.error.is_none() && self.applied.as_ref() == Some(r)
    }

    /// Write `r` whole. A failure is logged once per cause and kept for the status; the next
    /// call tries again.
    pub(crate) fn write(&mut self, r: Ruleset) -> Result<(), NftError> {
        match nft::apply(&r) {
            Ok(()) => {
                if self.error.take().is_some() {
                    tracing::info!("the kernel took meshd's nftables table");
                }
                self.applied = Some(r);
                self.seen_masq = 0;
                self.seen_clamped = 0;
                Ok(())
            }
            Err(e) => {
                let new_cause = self.error.as_ref() != Some(&e);
                if new_cause && r.vxlan_sources.is_some() {
                    tracing::error!(error = %e, "cannot write meshd's nftables table: VXLAN the kernel receives is not checked against its peers' subnets, pod traffic leaving the cluster is not masqueraded, TCP SYNs are not clamped; retrying");
                } else if new_cause {
                    tracing::warn!(error = %e, masquerade = self.egress.is_some(), mss_clamping = self.clamping, "cannot write meshd's nftables table: pod traffic leaving the cluster is not masqueraded, TCP SYNs are not clamped; retrying");
                }
                self.error = Some(e.clone());
                self.applied = None;
                Err(e)
            }
        }
    }

    /// The kernel no longer has the table (a firewall reload flushed it): written again next.
    pub(crate) fn lost(&mut self) {
        if self.applied.take().is_some_and(|r| !r.is_empty()) {
            tracing::warn!("the kernel no longer has meshd's nftables table: writing it again");
        }
    }

    /// Whether the kernel is to have no table at all (nothing configured, nothing to check).
    pub(crate) fn empty(&self) -> bool {
        self.applied.as_ref().is_some_and(|r| r.is_empty())
    }

    /// Whether the table holds anything whatever the data path (masquerade or clamping).
    pub(crate) fn wanted(&self) -> bool {
        self.egress.is_some() || self.clamping
    }

    /// Why the table cannot be written now, if it cannot.
    pub(crate) fn error(&self) -> Option<&NftError> {
        self.error.as_ref()
    }

    /// Add what the masquerade and clamp counters counted since the last reading.
    pub(crate) fn count(&mut self, counters: &[Counter]) {
        if let Some(n) = egress::masqueraded(counters) {
            self.masqueraded += n.saturating_sub(self.seen_masq);
            self.seen_masq = n;
        }
        let n: u64 = mss::clamped(counters).iter().map(|(_, n)| n).sum();
        self.clamped += n.saturating_sub(self.seen_clamped);
        self.seen_clamped = n;
    }

    /// What `meshd status` shows.
    pub(crate) fn status(&self) -> EgressStatus {
        let failed = self
            .error
            .as_ref()
            .map(|e| format!("cannot write meshd's nftables table: {e}"));
        let off = |on: bool, key: &str| match (on, &failed) {
            (false, _) => Some(format!("{key} = false")),
            (true, Some(why)) => Some(why.clone()),
            (true, None) => None,
        };
        let masquerade_off = off(self.egress.is_some(), "masquerade");
        let mss_clamping_off = off(self.clamping, "mss-clamping");
        let mss = self
            .applied
            .as_ref()
            .and_then(|r| r.mss.as_ref())
            .map(|m| {
                m.values()
                    .map(|(mss, peers)| MssStatus { mss, peers })
                    .collect()
            })
            .unwrap_or_default();
        let (untracked, untracked_off) = self.tracking.status();
        EgressStatus {
            untracked: untracked && failed.is_none(),
            untracked_off: failed.clone().or(untracked_off),
            masquerade: masquerade_off.is_none(),
            masquerade_off,
            no_masquerade_cidrs: self.exempt.iter().map(|n| n.to_string()).collect(),
            masqueraded: self.masqueraded,
            mss_clamping: mss_clamping_off.is_none(),
            mss_clamping_off,
            mss,
            clamped: self.clamped,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn compose_adds_the_configured_jobs_to_the_peers_parts() {
        let t = Table::new(&cfg("no-masquerade-cidrs = [\"192.0.2.0/24\"]"));
        let r = t.compose(None, None, [("10.244.2.0/24".parse().unwrap(), 1450)]);
        assert!(r.egress.is_some() && r.vxlan_sources.is_none() && r.traffic.is_none());
        assert_eq!(r.mss.unwrap().values().collect::<Vec<_>>(), [(1410, 1)]);
        let off = Table::new(&cfg("masquerade = false\nmss-clamping = false"));
        assert!(off.compose(None, None, []).is_empty());
        let s = off.status();
        assert!(!s.masquerade && !s.mss_clamping);
        assert_eq!(s.masquerade_off.as_deref(), Some("masquerade = false"));
        assert_eq!(s.mss_clamping_off.as_deref(), Some("mss-clamping = false"));
    }

    #[test]
    fn a_failed_write_turns_both_off_with_the_reason() {
        let mut t = Table::new(&cfg(""));
        t.error = Some(NftError::Missing);
        let s = t.status();
        assert!(!s.masquerade && !s.mss_clamping);
        assert!(
            s.masquerade_off
                .unwrap()
                .contains("nft program was not found"),
            "{:?}",
            t.status()
        );
    }

    /// Against the real kernel (a namespace of the test's own): every job at once is valid nft
    /// here, writing it again never doubles a rule, another table is never touched, and a
    /// flushed table is noticed.
    #[test]
    fn the_whole_table_is_accepted_replaced_whole_and_never_doubled() {
        use crate::kernel::fresh_netns::in_fresh_netns;
        use crate::kernel::source_check::SourceRule;
        use crate::paths::PathKind;
        let nft = |args: &[&str], stdin: Option<&str>| {
            use std::io::Write;
            let mut c = std::process::Command::new("nft")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(text) = stdin {
                c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            }
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "nft {args:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        in_fresh_netns(move || {
            Box::pin(async move {
                nft(
                    &["-f", "-"],
                    Some("table inet operator { chain c { type filter hook input priority 0; counter; }; }"),
                );
                let operator = nft(&["list", "table", "inet", "operator"], None);
                let mut t = Table::new(&cfg("no-masquerade-cidrs = [\"192.0.2.0/24\"]"));
                let checks = || {
                    VxlanSources::new(
                        8472,
                        [SourceRule {
                            address: "198.18.0.2".parse().unwrap(),
                            subnet: "10.244.2.0/24".parse().unwrap(),
                        }],
                    )
                };
                let traffic = || {
                    PeerTraffic::new(
                        vec![(PathKind::KernelVxlan, 1)],
                        ["10.244.2.0/24".parse().unwrap()],
                    )
                };
                let mtus = [
                    ("10.244.2.0/24".parse().unwrap(), 1450),
                    ("10.244.3.0/24".parse().unwrap(), 1280),
                ];
                for _ in 0..3 {
                    let r = t.compose(Some(checks()), Some(traffic()), mtus);
                    t.write(r).unwrap();
                }
                assert!(t.holds(&t.compose(Some(checks()), Some(traffic()), mtus)));
                let listed = nft(&["list", "table", "inet", "meshd"], None);
                for once in [
                    "counter name \"egress_masq\" masquerade",
                    "tcp option maxseg size set 1410",
                    "tcp option maxseg size set 1240",
                    "hook forward priority mangle",
                    "hook output priority mangle",
                    "hook postrouting priority srcnat",
                    "ip saddr vmap @vxlan_peers",
                ] {
                    assert_eq!(listed.matches(once).count(), 1, "{once}: {listed}");
                }
                assert_eq!(nft(&["list", "table", "inet", "operator"], None), operator);
                // A firewall reload flushes everything: the table is missed and written again.
                nft(&["flush", "ruleset"], None);
                assert_eq!(nft::list().unwrap(), None);
                t.lost();
                assert!(!t.holds(&t.compose(Some(checks()), Some(traffic()), mtus)));
                // Nothing configured, nothing to check: no table at all.
                let mut off = Table::new(&cfg("masquerade = false\nmss-clamping = false"));
                off.write(off.compose(None, None, [])).unwrap();
                assert!(off.empty());
                assert_eq!(nft::list().unwrap(), None);
            })
        });
    }

    #[test]
    fn counters_add_up_across_rewrites() {
        let c = Counter::of;
        let mut t = Table::new(&cfg(""));
        t.count(&[c("egress_masq", "", 3), c("mss_1410", "mss-clamp 1410", 2)]);
        t.count(&[c("egress_masq", "", 5), c("mss_1410", "mss-clamp 1410", 2)]);
        // A rewrite starts the counters again at zero.
        t.seen_masq = 0;
        t.seen_clamped = 0;
        t.count(&[c("egress_masq", "", 1), c("mss_1410", "mss-clamp 1410", 4)]);
        let s = t.status();
        assert_eq!((s.masqueraded, s.clamped), (6, 6));
    }
}
