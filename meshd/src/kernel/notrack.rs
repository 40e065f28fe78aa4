//! Connection tracking skipped where nobody needs it: meshd's own underlay datagrams and the
//! traffic between cluster addresses, while meshd is the only netfilter user in the namespace.
//!
//! The egress masquerade's nat chain ([`super::egress`]) turns connection tracking on for the
//! whole namespace: from then on every packet is looked up (and new flows inserted) four times
//! per round trip on each node, twice for the encapsulated datagram and twice for the pod packet
//! inside it. On the idle two-CPU VM that cost a host-to-host round trip about 20 µs of about
//! 300 (BENCHMARKS.md, issue 25). Only the masquerade needs the tracking, and only for pod
//! traffic leaving the cluster, so two chains at the raw priority let the rest skip it:
//!
//! ```text
//!   set notrack_peers: the peers' underlay addresses
//!   prerouting (raw):
//!     ip saddr @notrack_peers udp dport <data port> notrack   (and udp sport <data port>)
//!     ip saddr <cluster> ip daddr <cluster> notrack
//!   output (raw):
//!     ip daddr @notrack_peers udp sport <data port> notrack   (and udp dport <data port>)
//!     ip saddr <cluster> ip daddr <cluster> notrack
//! ```
//!
//! The datagrams are matched by peer address as well as port: a pod's own traffic on that port
//! to anything outside the cluster (a WireGuard client in a pod, say) is masqueraded, so it must
//! stay tracked, and so must the answers, which may come back to the data port itself (the
//! masquerade keeps a pod's source port where it can).
//!
//! Skipping is safe only when nothing else in the namespace matches on connection state or
//! NATs: a firewall's `ct state established` accept, kube-proxy's service DNAT (whose replies run
//! between cluster addresses), a CNI portmap. So the chains are written only while meshd's table
//! is the namespace's only nftables table and no legacy iptables table exists; [`Tracking`] keeps
//! that judgement and why, and the path manager looks again with every check of the table (every
//! 5 s), writing the table without the chains as soon as another user appears.

use ipnet::Ipv4Net;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::nft::{FAMILY, TABLE};

/// The two chains, for this cluster, data port and peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notrack {
    cluster: Ipv4Net,
    port: u16,
    peers: Vec<Ipv4Addr>,
}

impl Notrack {
    pub(crate) fn new(cluster: Ipv4Net, port: u16) -> Notrack {
        Notrack {
            cluster,
            port,
            peers: Vec::new(),
        }
    }

    /// The same for these peers' underlay addresses (sorted, once each).
    pub(crate) fn with_peers(&self, mut peers: Vec<Ipv4Addr>) -> Notrack {
        peers.sort_unstable();
        peers.dedup();
        Notrack {
            peers,
            ..self.clone()
        }
    }

    /// Its declarations inside the table (see [`super::nft::Ruleset::text`]).
    pub(crate) fn declare(&self, out: &mut String) {
        let (cluster, port) = (self.cluster, self.port);
        let _ = write!(out, "\tset {SET} {{\n\t\ttype ipv4_addr\n");
        if !self.peers.is_empty() {
            let list: Vec<String> = self.peers.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        out.push_str("\t}\n");
        for (name, hook, peer) in [
            ("notrack_in", "prerouting", "saddr"),
            ("notrack_out", "output", "daddr"),
        ] {
            let _ = writeln!(
                out,
                "\tchain {name} {{\n\t\ttype filter hook {hook} priority raw; policy accept;\n\
                 \t\tip {peer} @{SET} udp sport {port} notrack\n\
                 \t\tip {peer} @{SET} udp dport {port} notrack\n\
                 \t\tip saddr {cluster} ip daddr {cluster} notrack\n\t}}"
            );
        }
    }
}

/// The set of peer addresses whose datagrams on the data port skip tracking.
const SET: &str = "notrack_peers";

/// Whether the namespace has netfilter users other than meshd, as last looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Others {
    /// Not looked at yet (or the look failed): tracked, to be safe.
    #[default]
    Unknown,
    /// Nobody else: the chains go in.
    None,
    /// These tables (as `family name`) and legacy iptables tables (as `iptables name`).
    Some(Vec<String>),
}

/// The judgement and what it rests on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracking {
    /// The chains meshd would write (`None`: masquerade off, so meshd turns no tracking on).
    wanted: Option<Notrack>,
    others: Others,
}

impl Tracking {
    pub(crate) fn new(wanted: Option<Notrack>) -> Tracking {
        Tracking {
            wanted,
            others: Others::Unknown,
        }
    }

    /// Whether the table turns tracking on at all (so that skipping it is worth a look).
    pub(crate) fn relevant(&self) -> bool {
        self.wanted.is_some()
    }

    /// The chains for the table now, for these peers' underlay addresses.
    pub(crate) fn chains(&self, peers: &[Ipv4Addr]) -> Option<Notrack> {
        match self.others {
            Others::None => self.wanted.as_ref().map(|n| n.with_peers(peers.to_vec())),
            _ => None,
        }
    }

    /// What the last look found; whether that changes the table.
    pub(crate) fn observe(&mut self, others: Others) -> bool {
        if others == self.others {
            return false;
        }
        match &others {
            Others::Some(who) if self.others == Others::None && self.wanted.is_some() => {
                tracing::info!(others = %who.join(", "), "another netfilter user appeared: all traffic is tracked again");
            }
            Others::None if self.wanted.is_some() => {
                tracing::info!("meshd is the only netfilter user here: its underlay datagrams and in-cluster traffic skip connection tracking");
            }
            _ => {}
        }
        let before = self.chains(&[]);
        self.others = others;
        before != self.chains(&[])
    }

    /// For the status: whether tracking is skipped, else why not.
    pub(crate) fn status(&self) -> (bool, Option<String>) {
        match (&self.wanted, &self.others) {
            (None, _) => (
                false,
                Some("masquerade off: meshd turns no tracking on".into()),
            ),
            (Some(_), Others::None) => (true, None),
            (Some(_), Others::Unknown) => {
                (false, Some("other netfilter users not known yet".into()))
            }
            (Some(_), Others::Some(who)) => (
                false,
                Some(format!("not the only netfilter user: {}", who.join(", "))),
            ),
        }
    }
}

/// The other users in nft's JSON listing of tables (`list tables` or `list ruleset`), plus the
/// legacy iptables tables of this namespace.
pub(crate) fn others(listing: &serde_json::Value) -> Others {
    let Some(items) = listing.get("nftables").and_then(|v| v.as_array()) else {
        return Others::Unknown;
    };
    let mut who: Vec<String> = items
        .iter()
        .filter_map(|i| i.get("table"))
        .filter_map(|t| Some((t.get("family")?.as_str()?, t.get("name")?.as_str()?)))
        .filter(|&(family, name)| (family, name) != (FAMILY, TABLE))
        .map(|(family, name)| format!("table {family} {name}"))
        .collect();
    who.extend(legacy_tables());
    if who.is_empty() {
        Others::None
    } else {
        Others::Some(who)
    }
}

/// Legacy (x_tables) iptables tables instantiated in this namespace: nft does not list them.
fn legacy_tables() -> Vec<String> {
    ["ip_tables_names", "ip6_tables_names"]
        .iter()
        // The calling thread's namespace (a test's may differ from the process's).
        .filter_map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).ok())
        .flat_map(|text| {
            text.lines()
                .map(|l| format!("legacy iptables {}", l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn listing(tables: &[(&str, &str)]) -> serde_json::Value {
        let mut items = vec![serde_json::json!({"metainfo": {"version": "1.0.6"}})];
        for (family, name) in tables {
            items.push(serde_json::json!({"table": {"family": family, "name": name, "handle": 1}}));
        }
        serde_json::json!({ "nftables": items })
    }

    #[test]
    fn the_chains_go_in_only_while_nobody_else_uses_netfilter() {
        let chains = Notrack::new("10.244.0.0/16".parse().unwrap(), 51820);
        let mut t = Tracking::new(Some(chains.clone()));
        assert_eq!(t.chains(&[]), None, "unknown: tracked");
        assert!(!t.status().0);
        // Legacy tables of the test's own namespace would count: only judge nft's part here.
        let alone = match others(&listing(&[("inet", "meshd")])) {
            Others::Some(w) if w.iter().all(|x| x.starts_with("legacy")) => Others::None,
            o => o,
        };
        assert!(t.observe(alone));
        let peers = ["198.18.0.2".parse().unwrap()];
        assert_eq!(t.chains(&peers), Some(chains.with_peers(peers.to_vec())));
        assert_eq!(t.status(), (true, None));
        let fw = others(&listing(&[("inet", "meshd"), ("ip", "filter")]));
        assert!(matches!(&fw, Others::Some(w) if w[0] == "table ip filter"));
        assert!(t.observe(fw.clone()));
        assert_eq!(t.chains(&peers), None);
        assert!(t.status().1.unwrap().contains("table ip filter"));
        assert!(!t.observe(fw), "the same finding changes nothing");
        assert_eq!(others(&serde_json::json!({})), Others::Unknown);
        let off = Tracking::new(None);
        assert!(!off.relevant() && off.chains(&peers).is_none());
    }

    /// Against the real kernel (a namespace of the test's own): the chains are valid nft, a
    /// namespace with meshd's table alone has no other user, and an nftables table or a legacy
    /// iptables table of someone else's each count.
    #[test]
    fn other_users_are_found_in_nftables_and_legacy_iptables() {
        use crate::kernel::fresh_netns::in_fresh_netns;
        use crate::kernel::nft::{self, Ruleset};
        in_fresh_netns(|| {
            Box::pin(async {
                let run = |cmd: &str, args: &[&str]| {
                    let out = std::process::Command::new(cmd).args(args).output().unwrap();
                    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
                };
                let r = Ruleset {
                    notrack: Some(
                        Notrack::new("10.244.0.0/16".parse().unwrap(), 51820)
                            .with_peers(vec!["198.18.0.2".parse().unwrap()]),
                    ),
                    ..Ruleset::default()
                };
                nft::apply(&r).unwrap();
                assert_eq!(others(&nft::list_all(false).unwrap()), Others::None);
                assert!(nft::holds_table(&nft::list_all(true).unwrap()));
                let whole = nft::list_all(true).unwrap().to_string();
                assert_eq!(whole.matches("\"notrack\"").count(), 6, "{whole}");
                run("iptables-legacy", &["-t", "filter", "-L", "-n"]);
                assert_eq!(
                    others(&nft::list_all(false).unwrap()),
                    Others::Some(vec!["legacy iptables filter".into()])
                );
                run("nft", &["add", "table", "ip", "firewall"]);
                let found = others(&nft::list_all(true).unwrap());
                assert!(
                    matches!(&found, Others::Some(w) if w.contains(&"table ip firewall".to_string())),
                    "{found:?}"
                );
            })
        });
    }

    #[test]
    fn the_chains_skip_the_data_port_and_in_cluster_traffic_on_both_hooks() {
        let mut out = String::new();
        Notrack::new("10.244.0.0/16".parse().unwrap(), 8472).declare(&mut out);
        for hook in ["prerouting", "output"] {
            assert!(out.contains(&format!(
                "type filter hook {hook} priority raw; policy accept;"
            )));
        }
        assert_eq!(out.matches("udp sport 8472 notrack").count(), 2);
        assert_eq!(out.matches("udp dport 8472 notrack").count(), 2);
        assert_eq!(
            out.matches("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 notrack")
                .count(),
            2
        );
    }
}
