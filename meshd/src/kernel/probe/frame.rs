//! The bytes of a probe (an Ethernet frame carrying an ICMP echo request) and of its reply.

use super::{Probe, Reply, Token, ETH_P_IP, ICMP_ECHO, ICMP_ECHO_REPLY, MIN_PROBE, TOKEN_LEN};
use crate::wire::checksum::checksum;
use std::net::Ipv4Addr;

/// Bytes of the virtio-net header in front of a frame on a socket with `PACKET_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
pub(super) const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Where the ICMP header starts in the frame, and its checksum in it.
const ICMP_AT: u16 = 14 + 20;
const ICMP_CSUM_AT: u16 = 2;

/// Write the Ethernet frame of `p` into `buf`.
pub fn frame(buf: &mut Vec<u8>, p: &Probe, ident: u16) {
    buf.clear();
    append_frame(buf, p, ident);
}

/// Write the virtio-net header of `p`, then its frame, into `buf`: a `partial` probe's header
/// asks for its ICMP checksum to be finished by whoever offloads it (`CHECKSUM_PARTIAL`), as
/// the kernel asks of a pod's TCP and UDP packets; any other says nothing.
pub(super) fn vnet_frame(buf: &mut Vec<u8>, p: &Probe, ident: u16) {
    buf.clear();
    let mut hdr = [0u8; VNET_HDR_LEN];
    if p.partial {
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        // A packet socket's virtio-net header is little-endian on every host meshd runs on
        // (the kernel's `vio_le()`), which is the host's order there.
        hdr[6..8].copy_from_slice(&ICMP_AT.to_le_bytes());
        hdr[8..10].copy_from_slice(&ICMP_CSUM_AT.to_le_bytes());
    }
    buf.extend_from_slice(&hdr);
    append_frame(buf, p, ident);
}

fn append_frame(buf: &mut Vec<u8>, p: &Probe, ident: u16) {
    let size = usize::from(p.size).max(MIN_PROBE);
    buf.extend_from_slice(&p.dst_mac.0);
    buf.extend_from_slice(&p.src_mac.0);
    buf.extend_from_slice(&ETH_P_IP.to_be_bytes());
    let ip = buf.len();
    buf.resize(ip + size, 0);
    let h = &mut buf[ip..ip + 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    h[4..6].copy_from_slice(&p.seq.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = libc::IPPROTO_ICMP as u8;
    h[12..16].copy_from_slice(&p.src.octets());
    h[16..20].copy_from_slice(&p.dst.octets());
    let sum = checksum(h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    let icmp = &mut buf[ip + 20..];
    icmp[0] = ICMP_ECHO;
    icmp[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&p.seq.to_be_bytes());
    // The token, then a payload that is not all zeroes, so nothing on the way can compress it
    // away.
    icmp[8..8 + TOKEN_LEN].copy_from_slice(&p.token.0);
    for (i, b) in icmp[8 + TOKEN_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    // Unfinished, the field holds the sum's seed: ICMP has no pseudo-header, so zero.
    if !p.partial {
        let sum = checksum(icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// An echo reply to one of `ident`'s probes, from an IPv4 packet (the token is not checked
/// here: only the sender knows which one it expects).
pub fn parse_reply(packet: &[u8], ident: u16) -> Option<Reply> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 + TOKEN_LEN {
        return None;
    }
    let icmp = &packet[ihl..];
    if icmp[0] != ICMP_ECHO_REPLY || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&icmp[8..8 + TOKEN_LEN]);
    Some(Reply {
        src,
        seq,
        token: Token(token),
    })
}
