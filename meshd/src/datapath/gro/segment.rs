//! What coalescing needs to know of one packet: its TCP segment or UDP datagram layout
//! ([`segment`]), whether it continues a flow ([`same_flow`]), which connection it belongs to
//! ([`flow_key`], for any TCP or UDP packet, coalescible or not) and whether its own checksum
//! holds ([`checksum_ok`]). No I/O and no state: [`super::Coalescer`] keeps the flows.
//!
//! What may coalesce is what the kernel's GRO would merge (`inet_gro_receive`,
//! `tcp_gro_receive`): IPv4 without options (IHL 5) and with a valid header checksum, not a
//! fragment; IPv6 with TCP or UDP right after the fixed header; TCP with ACK, or ACK and PSH
//! (which ends the flow), and a payload. Anything else of a connection (a pure ACK, FIN, RST,
//! SYN, URG, ECN flags, options in the IP header, a bad checksum) is written alone, and ends
//! that connection's flow, so that nothing of it is reordered.

use crate::wire::checksum::{fold, sum};

pub(super) const TCP_ACK: u8 = 0x10;
pub(super) const TCP_PSH: u8 = 0x08;
pub(super) const IPPROTO_TCP: u8 = 6;
pub(super) const IPPROTO_UDP: u8 = 17;

/// The connection (one direction of it) a packet belongs to: addresses, ports and protocol.
pub(super) type FlowKey = ([u8; 32], [u8; 4], u8);

/// One coalescing flow of the current batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flow {
    /// The connection, as [`flow_key`] gives it.
    pub(super) key: FlowKey,
    /// Which write buffer holds the flow's first segment (and its headers).
    pub(super) buf: usize,
    /// IP and TCP (or UDP) header lengths.
    pub(super) iph: usize,
    pub(super) l4h: usize,
    pub(super) udp: bool,
    /// Payload bytes of every segment but possibly the last.
    pub(super) gso: usize,
    /// Sequence number the next segment must carry.
    pub(super) next_seq: u32,
    pub(super) segments: u16,
    /// A PSH or a short segment came: nothing more joins.
    pub(super) closed: bool,
}

/// A TCP segment's (or UDP datagram's) layout, as far as coalescing needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment {
    pub(super) v6: bool,
    pub(super) udp: bool,
    pub(super) iph: usize,
    pub(super) l4h: usize,
    /// TCP only: sequence number and flags.
    pub(super) seq: u32,
    pub(super) flags: u8,
}

impl Segment {
    pub(super) fn payload(&self, packet: &[u8]) -> usize {
        packet.len() - self.iph - self.l4h
    }
}

/// Parse `packet` as a TCP segment, or (with `udp`) a UDP datagram, that may coalesce: IPv4
/// without options or fragmentation and with a valid header checksum, or IPv6 with TCP or UDP
/// as its next header; lengths that agree, a payload, and for TCP flags ACK or ACK+PSH.
pub(super) fn segment(packet: &[u8], udp: bool) -> Option<Segment> {
    let version = packet.first()? >> 4;
    let (v6, iph, proto) = match version {
        4 => {
            // Options (IHL over 5) never coalesce, as in the kernel.
            if packet[0] & 0x0f != 5 || packet.len() < 20 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            // Not a fragment: no MF flag, offset 0.
            let frag = u16::from_be_bytes([packet[6], packet[7]]);
            if total != packet.len() || frag & 0x3fff != 0 {
                return None;
            }
            // The header checksum is checked here, since a super-packet's is recomputed: a
            // bad one must reach the kernel as it came (which drops it), never be blessed.
            if fold(sum(&packet[..20], 0)) != 0xffff {
                return None;
            }
            (false, 20, packet[9])
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if payload + 40 != packet.len() {
                return None;
            }
            (true, 40, packet[6])
        }
        _ => return None,
    };
    match proto {
        IPPROTO_TCP => {
            let tcp = packet.get(iph..iph + 20)?;
            let l4h = usize::from(tcp[12] >> 4) * 4;
            if l4h < 20 || packet.len() <= iph + l4h {
                return None;
            }
            let flags = tcp[13];
            if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
                return None;
            }
            Some(Segment {
                v6,
                udp: false,
                iph,
                l4h,
                seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
                flags,
            })
        }
        IPPROTO_UDP if udp => {
            let h = packet.get(iph..iph + 8)?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if len != packet.len() - iph || len <= 8 {
                return None;
            }
            Some(Segment {
                v6,
                udp: true,
                iph,
                l4h: 8,
                seq: 0,
                flags: 0,
            })
        }
        _ => None,
    }
}

/// Whether segment `b` (layout `s`) belongs to the flow whose first segment is `a` and may
/// follow it: every header byte equal but the IP length, ID and checksum, the sequence number,
/// the TCP checksum and the PSH flag.
pub(super) fn same_flow(a: &[u8], b: &[u8], s: &Segment, f: &Flow) -> bool {
    if s.udp != f.udp || s.iph != f.iph || s.l4h != f.l4h || a.len() < f.iph + f.l4h {
        return false;
    }
    let ip_same = if s.v6 {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        // Version/IHL, TOS; flags (DF); TTL, protocol; addresses and options.
        a[..2] == b[..2] && a[6] == b[6] && a[8..10] == b[8..10] && a[12..f.iph] == b[12..f.iph]
    };
    let (ta, tb) = (&a[f.iph..f.iph + f.l4h], &b[f.iph..f.iph + f.l4h]);
    if f.udp {
        // Ports; the length and checksum are each datagram's own.
        return ip_same && ta[..4] == tb[..4];
    }
    // Ports; ACK number, data offset; window, urgent pointer, options. The flags: the flow's
    // first segment is a plain ACK (a PSH closes the flow), checked by `closed`.
    ip_same
        && ta[..4] == tb[..4]
        && ta[8..13] == tb[8..13]
        && ta[14..16] == tb[14..16]
        && ta[18..] == tb[18..]
}

/// Append segment `s`'s payload (from `packet`) to the flow buffer `to`.
#[inline]
pub(super) fn append(to: &mut Vec<u8>, packet: &[u8], s: &Segment) {
    to.extend_from_slice(&packet[s.iph + s.l4h..]);
}

/// The connection a TCP or UDP packet belongs to, whether it may coalesce or not: addresses,
/// ports and protocol as one comparable value. `None` for anything else, or where the ports
/// are not in this packet (a fragment after the first).
pub(super) fn flow_key(packet: &[u8]) -> Option<FlowKey> {
    let (addrs, l4, proto) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let frag_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if ihl < 20 || frag_offset != 0 {
                return None;
            }
            (packet.get(12..20)?, ihl, packet[9])
        }
        6 => (packet.get(8..40)?, 40, packet[6]),
        _ => return None,
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let mut a = [0u8; 32];
    a[..addrs.len()].copy_from_slice(addrs);
    let mut p = [0u8; 4];
    p.copy_from_slice(packet.get(l4..l4 + 4)?);
    Some((a, p, proto))
}

/// Whether the TCP (or UDP) checksum of segment `s` in `packet` is right; a UDP datagram over
/// IPv4 without a checksum (zero) has none to be wrong.
pub(super) fn checksum_ok(packet: &[u8], s: &Segment) -> bool {
    let l4 = &packet[s.iph..];
    if s.udp && !s.v6 && l4[6..8] == [0, 0] {
        return true;
    }
    let proto = if s.udp { IPPROTO_UDP } else { IPPROTO_TCP };
    let addrs = if s.v6 {
        &packet[8..40]
    } else {
        &packet[12..20]
    };
    let pseudo = sum(addrs, u64::from(proto) + l4.len() as u64);
    fold(sum(l4, pseudo)) == 0xffff
}
