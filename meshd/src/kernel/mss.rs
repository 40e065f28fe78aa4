//! MSS clamping of TCP SYNs entering the overlay, per peer: nftables rules in meshd's table
//! ([`super::nft`]).
//!
//! A pod whose interface MTU is larger than the path to a peer allows (set by hand, or a path
//! that shrank) announces an MSS the path cannot carry; if ICMP "fragmentation needed" does not
//! get back to it, its full-size segments vanish. Lowering the MSS of the handshake's SYN (and
//! SYN-ACK) on the way into the overlay makes both ends send segments that fit, whatever ICMP
//! does. The value is the peer's MTU ([`crate::link::PeerLink::mtu`]) minus 40 (IPv4 and TCP
//! headers without options), and only ever lowers what the SYN carries:
//!
//! ```text
//!   forward and output (filter, mangle):
//!     tcp flags syn / syn,rst  ip daddr vmap { peer's subnet : jump mss_<n>, … }
//!   chain mss_<n>: tcp option maxseg size > n → counter mss_<n>, set it to n
//! ```
//!
//! One chain per distinct MSS (peers usually share a handful), one interval-map lookup per SYN
//! whatever the number of peers; forward covers pods, output the node's own connections to
//! pods. Nothing but SYNs is looked at.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::fmt::Write;

use super::nft::Counter;

/// IPv4 and TCP headers without options: an MSS is the MTU less these.
pub(crate) const TCP_IP_HEADERS: u16 = 40;
const COMMENT: &str = "mss-clamp";

/// The clamp for each peer subnet, from its MTU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MssClamp {
    /// MSS → the subnets clamped to it.
    by_mss: BTreeMap<u16, Vec<Ipv4Net>>,
}

impl MssClamp {
    /// From each peer's (subnet, MTU of pod packets to it).
    pub(crate) fn new(peers: impl IntoIterator<Item = (Ipv4Net, u16)>) -> MssClamp {
        let mut by_mss: BTreeMap<u16, Vec<Ipv4Net>> = BTreeMap::new();
        for (subnet, mtu) in peers {
            by_mss
                .entry(mtu.saturating_sub(TCP_IP_HEADERS))
                .or_default()
                .push(subnet);
        }
        for subnets in by_mss.values_mut() {
            subnets.sort();
            subnets.dedup();
        }
        MssClamp { by_mss }
    }

    /// Each MSS in use and how many peers get it.
    pub(crate) fn values(&self) -> impl Iterator<Item = (u16, usize)> + '_ {
        self.by_mss.iter().map(|(mss, s)| (*mss, s.len()))
    }

    /// Its declarations inside the table (see [`super::nft::Ruleset::text`]).
    pub(crate) fn declare(&self, out: &mut String) {
        let mut elements = Vec::new();
        for (mss, subnets) in &self.by_mss {
            let _ = writeln!(
                out,
                "\tcounter mss_{mss} {{ comment \"{COMMENT} {mss}\"; }}"
            );
            let _ = writeln!(
                out,
                "\tchain mss_{mss} {{\n\t\ttcp option maxseg size > {mss} counter name \
                 \"mss_{mss}\" tcp option maxseg size set {mss}\n\t}}"
            );
            elements.extend(subnets.iter().map(|s| format!("{s} : jump mss_{mss}")));
        }
        out.push_str("\tmap mss_peers {\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n");
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
        for hook in ["forward", "output"] {
            let _ = writeln!(
                out,
                "\tchain mss_{hook} {{\n\t\ttype filter hook {hook} priority mangle; policy accept;\n\
                 \t\ttcp flags syn / syn,rst ip daddr vmap @mss_peers\n\t}}"
            );
        }
    }
}

/// SYNs clamped, per MSS, in a listing of the table's counters.
pub(crate) fn clamped(counters: &[Counter]) -> Vec<(u16, u64)> {
    counters
        .iter()
        .filter_map(|c| {
            let mut words = c.comment.split_whitespace();
            (words.next()? == COMMENT).then_some(())?;
            Some((words.next()?.parse().ok()?, c.packets))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_chain_per_mss_and_one_lookup_for_every_peer() {
        let m = MssClamp::new([
            ("10.244.3.0/24".parse().unwrap(), 1450),
            ("10.244.2.0/24".parse().unwrap(), 1450),
            ("10.244.4.0/24".parse().unwrap(), 1280),
        ]);
        assert_eq!(m.values().collect::<Vec<_>>(), [(1240, 1), (1410, 2)]);
        let mut out = String::new();
        m.declare(&mut out);
        assert!(out.contains(
            "tcp option maxseg size > 1410 counter name \"mss_1410\" tcp option maxseg size set 1410"
        ), "{out}");
        assert!(
            out.contains("counter mss_1240 { comment \"mss-clamp 1240\"; }"),
            "{out}"
        );
        assert!(out.contains(
            "elements = { 10.244.4.0/24 : jump mss_1240, 10.244.2.0/24 : jump mss_1410, 10.244.3.0/24 : jump mss_1410 }"
        ), "{out}");
        assert!(
            out.contains("type filter hook forward priority mangle;"),
            "{out}"
        );
        assert!(
            out.contains("type filter hook output priority mangle;"),
            "{out}"
        );
        assert_eq!(out.matches("ip daddr vmap @mss_peers").count(), 2, "{out}");
        // No peer: the hooks stay, with nothing to look up.
        let mut none = String::new();
        MssClamp::default().declare(&mut none);
        assert!(!none.contains("elements"), "{none}");
    }

    #[test]
    fn counters_are_read_back_per_mss() {
        let got = clamped(&[
            Counter::of("mss_1410", "mss-clamp 1410", 3),
            Counter::of("egress_masq", "egress masquerade", 9),
            Counter::of("mss_x", "mss-clamp many", 1),
        ]);
        assert_eq!(got, [(1410, 3)]);
    }
}
