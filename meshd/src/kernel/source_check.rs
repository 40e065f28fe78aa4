//! The inner-source check of VXLAN the kernel receives: the rule meshd's userspace path applies
//! to every datagram (`datapath::vxlan::decode`: a peer may only speak for its own subnet),
//! written as nftables rules in meshd's table ([`super::nft`]).
//!
//! Why here: in cleartext the kernel VXLAN device owns the VXLAN port, so it receives from
//! every peer, whichever path this node sends to that peer by, and the kernel checks nothing but
//! the VNI. Letting the device only send (meshd receiving) would cost the kernel path its
//! receive side (meshd's userspace receiver carries about half of what the kernel does, see
//! docs/kernel-paths.md), and the kernel has no send-only VXLAN device: one with another
//! listening port still receives whatever is sent there. So the datagrams are checked before
//! the device sees them, on the input hook (after reassembly, before the UDP socket):
//!
//! ```text
//!   udp dport 8472, ip saddr → vmap { peer's underlay address : jump that peer's chain }
//!     peer's chain: inner ethertype IPv4 and inner source in the peer's subnet → accept
//!                   otherwise → counter (one per peer) and drop
//!   udp dport 8472 from anyone else → counter and drop
//! ```
//!
//! The map is one hash lookup whatever the number of peers. Offsets are from the UDP header
//! (`@th`): UDP 8 bytes, VXLAN 8, inner Ethernet 14 (its type at 12), inner IPv4 source at 12.
//! Each counter's comment names its peer's address and subnet, so a restarted meshd can read
//! back what its predecessor checked ([`adopted`]) and the counters map to peers ([`drops`]).

use ipnet::Ipv4Net;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::nft::Counter;

/// Inner Ethernet type from the UDP header's start, in bits: (8 + 8 + 12) × 8.
const INNER_ETHERTYPE_BITS: u32 = 224;
/// Inner IPv4 source address from the UDP header's start, in bits: (8 + 8 + 14 + 12) × 8.
const INNER_SOURCE_BITS: u32 = 336;
const UNKNOWN_COUNTER: &str = "vxlan_unknown";
const COMMENT: &str = "vxlan-source";

/// One peer's rule: VXLAN from `address` carries packets from `subnet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SourceRule {
    pub(crate) address: Ipv4Addr,
    pub(crate) subnet: Ipv4Net,
}

/// The checks for the VXLAN port `port`: one rule per peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSources {
    port: u16,
    rules: Vec<SourceRule>,
}

impl VxlanSources {
    /// The rules sorted by address; of two peers at one address the one with the lower subnet
    /// keeps it (the userspace path, too, attributes a datagram to one peer per source address).
    pub(crate) fn new(port: u16, rules: impl IntoIterator<Item = SourceRule>) -> VxlanSources {
        let mut rules: Vec<SourceRule> = rules.into_iter().collect();
        rules.sort();
        rules.dedup_by_key(|r| r.address);
        VxlanSources { port, rules }
    }

    #[cfg(test)]
    pub(crate) fn rules(&self) -> &[SourceRule] {
        &self.rules
    }

    /// Its declarations inside the table (see [`super::nft::Ruleset::text`]).
    pub(crate) fn declare(&self, out: &mut String) {
        let port = self.port;
        let _ = writeln!(
            out,
            "\tcounter {UNKNOWN_COUNTER} {{ comment \"{COMMENT} unknown\"; }}"
        );
        for r in &self.rules {
            let _ = writeln!(
                out,
                "\tcounter {} {{ comment \"{COMMENT} {} {}\"; }}",
                name(r.address),
                r.address,
                r.subnet
            );
        }
        out.push_str("\tmap vxlan_peers {\n\t\ttype ipv4_addr : verdict\n");
        if !self.rules.is_empty() {
            let elements: Vec<String> = self
                .rules
                .iter()
                .map(|r| format!("{} : jump {}", r.address, name(r.address)))
                .collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
        let _ = writeln!(
            out,
            "\tchain vxlan_in {{\n\t\ttype filter hook input priority filter; policy accept;\n\
             \t\tudp dport {port} ip saddr vmap @vxlan_peers\n\
             \t\tmeta nfproto ipv4 udp dport {port} counter name \"{UNKNOWN_COUNTER}\" drop\n\t}}"
        );
        for r in &self.rules {
            let chain = name(r.address);
            let _ = writeln!(
                out,
                "\tchain {chain} {{\n\t\t@th,{INNER_ETHERTYPE_BITS},16 0x0800 {} accept\n\
                 \t\tcounter name \"{chain}\" drop\n\t}}",
                source_match(r.subnet)
            );
        }
    }
}

/// The chain and counter name of the peer at `address` (digits and underscores only: nothing
/// a peer chose reaches the ruleset's text).
fn name(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("vx_{a}_{b}_{c}_{d}")
}

/// Inner source within `subnet`: its first `prefix_len` bits equal the subnet's.
fn source_match(subnet: Ipv4Net) -> String {
    let len = u32::from(subnet.prefix_len());
    if len == 0 {
        return String::new();
    }
    let bits = u32::from(subnet.network()) >> (32 - len);
    format!("@th,{INNER_SOURCE_BITS},{len} {bits:#x}")
}

/// Per-peer drops in a listing of the table's counters: (peer's address, packets dropped).
pub(crate) fn drops(counters: &[Counter]) -> Vec<(Ipv4Addr, u64)> {
    counters
        .iter()
        .filter_map(|c| Some((parse_comment(&c.comment)?.address, c.packets)))
        .collect()
}

/// Drops of VXLAN from addresses that are no peer's.
pub(crate) fn unknown_drops(counters: &[Counter]) -> Option<u64> {
    counters
        .iter()
        .find(|c| c.name == UNKNOWN_COUNTER)
        .map(|c| c.packets)
}

/// The rules a table (a previous meshd's) holds, read back from its counters' comments.
pub(crate) fn adopted(counters: &[Counter]) -> Vec<SourceRule> {
    counters
        .iter()
        .filter_map(|c| parse_comment(&c.comment))
        .collect()
}

fn parse_comment(comment: &str) -> Option<SourceRule> {
    let mut words = comment.split_whitespace();
    if words.next()? != COMMENT {
        return None;
    }
    let address = words.next()?.parse().ok()?;
    let subnet = words.next()?.parse().ok()?;
    Some(SourceRule { address, subnet })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(a: &str, s: &str) -> SourceRule {
        SourceRule {
            address: a.parse().unwrap(),
            subnet: s.parse().unwrap(),
        }
    }

    #[test]
    fn each_peer_gets_a_chain_a_counter_and_a_map_entry() {
        let v = VxlanSources::new(
            8472,
            [
                rule("198.18.0.3", "10.244.3.0/24"),
                rule("198.18.0.2", "10.244.2.0/23"),
                rule("198.18.0.3", "10.244.9.0/24"),
            ],
        );
        assert_eq!(
            v.rules().len(),
            2,
            "one rule per address, the lower subnet kept"
        );
        let mut out = String::new();
        v.declare(&mut out);
        assert!(
            out.contains(
                "counter vx_198_18_0_2 { comment \"vxlan-source 198.18.0.2 10.244.2.0/23\"; }"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "elements = { 198.18.0.2 : jump vx_198_18_0_2, 198.18.0.3 : jump vx_198_18_0_3 }"
            ),
            "{out}"
        );
        assert!(
            out.contains("udp dport 8472 ip saddr vmap @vxlan_peers"),
            "{out}"
        );
        assert!(
            out.contains("@th,224,16 0x0800 @th,336,23 0x57a01 accept"),
            "{out}"
        );
        assert!(
            out.contains("@th,224,16 0x0800 @th,336,24 0xaf403 accept"),
            "{out}"
        );
        assert!(!out.contains("10.244.9.0"), "{out}");
        assert!(
            out.contains("meta nfproto ipv4 udp dport 8472 counter name \"vxlan_unknown\" drop")
        );
    }

    #[test]
    fn no_peers_no_elements_and_everything_dropped() {
        let mut out = String::new();
        VxlanSources::new(4789, []).declare(&mut out);
        assert!(!out.contains("elements"), "{out}");
        assert!(out.contains("udp dport 4789 counter name \"vxlan_unknown\" drop"));
    }

    #[test]
    fn counters_map_back_to_peers_and_rules() {
        let c = |name: &str, comment: &str, packets| Counter {
            bytes: 0,
            name: name.into(),
            comment: comment.into(),
            packets,
        };
        let counters = vec![
            c("vxlan_unknown", "vxlan-source unknown", 4),
            c("vx_198_18_0_2", "vxlan-source 198.18.0.2 10.244.2.0/24", 9),
            c("other", "something else", 1),
            c("vx_1", "vxlan-source nonsense 10.0.0.0/8", 1),
        ];
        assert_eq!(drops(&counters), vec![("198.18.0.2".parse().unwrap(), 9)]);
        assert_eq!(unknown_drops(&counters), Some(4));
        assert_eq!(
            adopted(&counters),
            vec![rule("198.18.0.2", "10.244.2.0/24")]
        );
    }
}
