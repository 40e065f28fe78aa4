//! Egress masquerade: pod traffic leaving the cluster leaves the node with the node's address,
//! written as one rule in meshd's table ([`super::nft`]).
//!
//! A pod address means nothing outside the cluster CIDR: nobody there routes it back. So a
//! packet from a pod (its source in `cluster-cidr`) to anything outside `cluster-cidr` is
//! source-NATed to the address of the interface it leaves by, as flannel and Weave do:
//!
//! ```text
//!   postrouting (nat, srcnat):
//!     ip saddr <cluster> ip daddr != <cluster> ip daddr != 224.0.0.0/4
//!       ip daddr != @no_masquerade → counter, masquerade
//! ```
//!
//! What this never touches: pod to pod (the destination is in the cluster), node to pod and
//! pod to node (the node's own addresses are outside the cluster as sources, and a packet for
//! the node itself is delivered locally, never reaching postrouting), multicast, and the
//! destinations an operator lists in `no-masquerade-cidrs` (they must see pod addresses, and
//! route them back themselves). The nat chain sees the first packet of each connection only
//! (conntrack remembers the rest), so its counter counts connections. Having a nat chain turns
//! tracking on for the whole namespace; what needs none skips it ([`super::notrack`]).

use ipnet::Ipv4Net;
use std::fmt::Write;

use super::nft::Counter;

const COUNTER: &str = "egress_masq";
const COMMENT: &str = "egress masquerade";
const SET: &str = "no_masquerade";
/// Multicast is never masqueraded: it is not routed back to anyone.
const MULTICAST: &str = "224.0.0.0/4";

/// The masquerade rule: pods are `cluster`; `exempt` destinations see pod addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Egress {
    cluster: Ipv4Net,
    exempt: Vec<Ipv4Net>,
}

impl Egress {
    /// Overlapping exemptions are merged (an nftables interval set refuses overlaps).
    pub(crate) fn new(cluster: Ipv4Net, exempt: &[Ipv4Net]) -> Egress {
        Egress {
            cluster,
            exempt: Ipv4Net::aggregate(&exempt.to_vec()),
        }
    }

    /// Its declarations inside the table (see [`super::nft::Ruleset::text`]).
    pub(crate) fn declare(&self, out: &mut String) {
        let cluster = self.cluster;
        let _ = writeln!(out, "\tcounter {COUNTER} {{ comment \"{COMMENT}\"; }}");
        let _ = write!(
            out,
            "\tset {SET} {{\n\t\ttype ipv4_addr\n\t\tflags interval\n"
        );
        if !self.exempt.is_empty() {
            let list: Vec<String> = self.exempt.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        out.push_str("\t}\n");
        let _ = writeln!(
            out,
            "\tchain egress {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {cluster} ip daddr != {cluster} ip daddr != {MULTICAST} \
             ip daddr != @{SET} counter name \"{COUNTER}\" masquerade\n\t}}"
        );
    }
}

/// Connections masqueraded, in a listing of the table's counters (`None`: no masquerade rule).
pub(crate) fn masqueraded(counters: &[Counter]) -> Option<u64> {
    counters
        .iter()
        .find(|c| c.name == COUNTER)
        .map(|c| c.packets)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn pods_leaving_the_cluster_are_masqueraded_unless_exempt() {
        let e = Egress::new(
            net("10.244.0.0/16"),
            &[
                net("192.0.2.0/25"),
                net("192.0.2.128/25"),
                net("198.51.100.0/24"),
            ],
        );
        let mut out = String::new();
        e.declare(&mut out);
        assert!(
            out.contains("type nat hook postrouting priority srcnat;"),
            "{out}"
        );
        assert!(
            out.contains(
                "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 \
                 ip daddr != @no_masquerade counter name \"egress_masq\" masquerade"
            ),
            "{out}"
        );
        // Adjacent exemptions merge: an interval set refuses overlaps.
        assert!(
            out.contains("elements = { 192.0.2.0/24, 198.51.100.0/24 }"),
            "{out}"
        );
        let mut none = String::new();
        Egress::new(net("10.244.0.0/16"), &[]).declare(&mut none);
        assert!(!none.contains("elements"), "{none}");
    }

    #[test]
    fn the_counter_is_read_back() {
        let c = |name: &str, packets| Counter::of(name, "", packets);
        assert_eq!(masqueraded(&[c("x", 1), c(COUNTER, 5)]), Some(5));
        assert_eq!(masqueraded(&[c("x", 1)]), None);
    }
}
