//! Counting the pod traffic the kernel carries, per peer and per path: nftables counters in
//! meshd's table ([`super::nft`]), since those packets never reach meshd.
//!
//! Pod packets to and from a peer on a kernel path are forwarded by the kernel between the pod
//! bridge and the path's device: the VXLAN device (kernel VXLAN) or the underlay link (host-gw,
//! which sends them unencapsulated). One chain on the forward hook counts them by the device
//! and the peer's subnet, one map lookup per packet whatever the number of peers:
//!
//! ```text
//!   oif <vxlan device>   ip daddr map { peer's subnet : that peer's counter, … }   (tx)
//!   iif <vxlan device>   ip saddr map { … }                                        (rx)
//!   oif/iif <underlay>   likewise, for host-gw
//! ```
//!
//! Only forwarded packets are counted: the node's own traffic (probes, a shell on the node) is
//! not pod traffic. What the userspace path carries goes through the TUN device, which is not
//! counted here (meshd counts it itself). Each counter's comment names its path, direction and
//! subnet, so a reading maps back to a peer ([`readings`]).

use ipnet::Ipv4Net;
use std::fmt::Write;

use super::nft::Counter;
use crate::paths::PathKind;

const COMMENT: &str = "traffic";

/// The devices whose forwarded pod traffic is counted (by index), and the peers' subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerTraffic {
    devices: Vec<(PathKind, u32)>,
    subnets: Vec<Ipv4Net>,
}

/// Which way a packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Tx,
    Rx,
}

/// One counter's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) subnet: Ipv4Net,
    pub(crate) path: PathKind,
    pub(crate) direction: Direction,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

impl PeerTraffic {
    /// Count what `devices` (path kind, link index) carry to and from `subnets`.
    pub(crate) fn new(
        devices: Vec<(PathKind, u32)>,
        subnets: impl IntoIterator<Item = Ipv4Net>,
    ) -> PeerTraffic {
        let mut subnets: Vec<Ipv4Net> = subnets.into_iter().collect();
        subnets.sort();
        subnets.dedup();
        PeerTraffic { devices, subnets }
    }

    /// Its declarations inside the table (see [`super::nft::Ruleset::text`]).
    pub(crate) fn declare(&self, out: &mut String) {
        if self.subnets.is_empty() || self.devices.is_empty() {
            return;
        }
        let mut rules = String::new();
        for &(path, index) in &self.devices {
            for (direction, dev, addr) in [
                (Direction::Tx, "oif", "daddr"),
                (Direction::Rx, "iif", "saddr"),
            ] {
                let mut elements = Vec::new();
                for s in &self.subnets {
                    let counter = name(path, direction, *s);
                    let _ = writeln!(
                        out,
                        "\tcounter {counter} {{ comment \"{COMMENT} {path} {} {s}\"; }}",
                        word(direction)
                    );
                    elements.push(format!("{s} : \"{counter}\""));
                }
                let _ = writeln!(
                    rules,
                    "\t\t{dev} {index} counter name ip {addr} map {{ {} }}",
                    elements.join(", ")
                );
            }
        }
        let _ = write!(
            out,
            "\tchain traffic {{\n\t\ttype filter hook forward priority filter + 10; policy accept;\n{rules}\t}}\n"
        );
    }
}

/// Every traffic counter in a listing of the table's counters.
pub(crate) fn readings(counters: &[Counter]) -> Vec<Reading> {
    counters
        .iter()
        .filter_map(|c| {
            let mut words = c.comment.split_whitespace();
            if words.next()? != COMMENT {
                return None;
            }
            let path = match words.next()? {
                "kernel-vxlan" => PathKind::KernelVxlan,
                "host-gw" => PathKind::HostGw,
                "kernel-wireguard" => PathKind::KernelWireguard,
                _ => return None,
            };
            let direction = match words.next()? {
                "tx" => Direction::Tx,
                "rx" => Direction::Rx,
                _ => return None,
            };
            Some(Reading {
                subnet: words.next()?.parse().ok()?,
                path,
                direction,
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect()
}

fn word(d: Direction) -> &'static str {
    match d {
        Direction::Tx => "tx",
        Direction::Rx => "rx",
    }
}

/// `t_vx_tx_10_244_2_0_24`: unique per path, direction and subnet.
fn name(path: PathKind, d: Direction, s: Ipv4Net) -> String {
    let p = match path {
        PathKind::KernelVxlan => "vx",
        PathKind::HostGw => "gw",
        PathKind::KernelWireguard => "wg",
        PathKind::Userspace => "us",
    };
    let [a, b, c, e] = s.network().octets();
    format!("t_{p}_{}_{a}_{b}_{c}_{e}_{}", word(d), s.prefix_len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn traffic() -> PeerTraffic {
        let subnets = ["10.244.3.0/24", "10.244.2.0/24", "10.244.3.0/24"];
        PeerTraffic::new(
            vec![(PathKind::KernelVxlan, 7), (PathKind::HostGw, 2)],
            subnets.map(|s| s.parse().unwrap()),
        )
    }

    #[test]
    fn one_counter_per_device_direction_and_peer_and_one_lookup_per_rule() {
        let mut out = String::new();
        traffic().declare(&mut out);
        assert_eq!(out.matches("\tcounter ").count(), 2 * 2 * 2, "{out}");
        assert!(out.contains(
            "counter t_vx_tx_10_244_2_0_24 { comment \"traffic kernel-vxlan tx 10.244.2.0/24\"; }"
        ));
        assert!(out.contains(
            "\t\toif 7 counter name ip daddr map { 10.244.2.0/24 : \"t_vx_tx_10_244_2_0_24\", 10.244.3.0/24 : \"t_vx_tx_10_244_3_0_24\" }"
        ), "{out}");
        assert!(out.contains(
            "\t\tiif 2 counter name ip saddr map { 10.244.2.0/24 : \"t_gw_rx_10_244_2_0_24\""
        ));
        assert!(out.contains("type filter hook forward priority filter + 10; policy accept;"));
        // No peer, no device: nothing (an empty map is not valid nft).
        let mut none = String::new();
        PeerTraffic::new(vec![(PathKind::KernelVxlan, 7)], []).declare(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn readings_come_back_from_the_comments() {
        let c = |name: &str, comment: &str, packets, bytes| Counter {
            name: name.into(),
            comment: comment.into(),
            packets,
            bytes,
        };
        let got = readings(&[
            c(
                "t_gw_rx_10_244_2_0_24",
                "traffic host-gw rx 10.244.2.0/24",
                3,
                300,
            ),
            c(
                "vx_198_18_0_2",
                "vxlan-source 198.18.0.2 10.244.2.0/24",
                1,
                50,
            ),
            c("t_x", "traffic sideways tx 10.244.2.0/24", 1, 1),
        ]);
        assert_eq!(
            got,
            [Reading {
                subnet: "10.244.2.0/24".parse().unwrap(),
                path: PathKind::HostGw,
                direction: Direction::Rx,
                packets: 3,
                bytes: 300,
            }]
        );
    }
}
