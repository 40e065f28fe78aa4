//! The bytes of a probe (an Ethernet frame carrying an ICMP echo request) and of its reply.

use super::{Probe, Reply, Token, ETH_P_IP, ICMP_ECHO, ICMP_ECHO_REPLY, MIN_PROBE, TOKEN_LEN};
use crate::wire::checksum::checksum;
use std::net::Ipv4Addr;

/// Bytes of the virtio-net header in front of a frame on a socket with `PACKET_VNET_HDR`.
pub const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
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
pub fn vnet_frame(buf: &mut Vec<u8>, p: &Probe, ident: u16) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wire::MacAddr;

    fn probe() -> Probe {
        Probe {
            ifindex: 3,
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            src: "10.244.1.1".parse().unwrap(),
            dst: "10.244.2.1".parse().unwrap(),
            size: 1450,
            seq: 77,
            token: Token(*b"\x01\x02\x03\x04\x05\x06\x07\x08"),
            partial: false,
        }
    }

    #[test]
    fn frames_are_pod_sized_df_echoes_with_valid_checksums() {
        let mut buf = Vec::new();
        frame(&mut buf, &probe(), 0x1234);
        assert_eq!(buf.len(), 14 + 1450);
        assert_eq!(&buf[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&buf[12..14], &[0x08, 0x00]);
        let ip = &buf[14..];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 1450);
        assert_eq!(ip[6] & 0x40, 0x40, "DF");
        assert_eq!(checksum(&ip[..20]), 0, "IP header checksum");
        assert_eq!(checksum(&ip[20..]), 0, "ICMP checksum");
        assert_eq!(ip[20], ICMP_ECHO);
        assert_eq!(&ip[12..16], &[10, 244, 1, 1]);
        assert_eq!(&ip[16..20], &[10, 244, 2, 1]);
    }

    #[test]
    fn replies_are_matched_by_ident() {
        let mut buf = Vec::new();
        frame(&mut buf, &probe(), 0x1234);
        let mut reply = buf[14..].to_vec();
        reply[20] = ICMP_ECHO_REPLY;
        reply[12..16].copy_from_slice(&[10, 244, 2, 1]);
        assert_eq!(
            parse_reply(&reply, 0x1234),
            Some(Reply {
                src: "10.244.2.1".parse().unwrap(),
                seq: 77,
                token: probe().token,
            })
        );
        assert_eq!(parse_reply(&reply, 0x4321), None);
        assert_eq!(parse_reply(&reply[..25], 0x1234), None);
        // Too short to carry a token: not one of ours.
        assert_eq!(parse_reply(&reply[..35], 0x1234), None);
        assert_eq!(parse_reply(&[], 0x1234), None);
        reply[20] = ICMP_ECHO;
        assert_eq!(parse_reply(&reply, 0x1234), None);
    }

    #[test]
    fn small_probes_carry_the_token_and_tokens_differ() {
        let mut p = probe();
        p.size = 64;
        let mut buf = Vec::new();
        frame(&mut buf, &p, 1);
        assert_eq!(&buf[14 + 28..14 + 36], &p.token.0);
        assert_eq!(checksum(&buf[14 + 20..]), 0, "ICMP checksum");
        // Even a probe asked to be tiny has room for it.
        p.size = 0;
        frame(&mut buf, &p, 1);
        assert_eq!(buf.len(), 14 + MIN_PROBE);
        assert_eq!(&buf[14 + 28..], &p.token.0);
        let a = Token::random().unwrap();
        let b = Token::random().unwrap();
        assert_ne!(a, b, "64 random bits twice alike");
    }

    #[test]
    fn partial_probes_leave_their_icmp_checksum_to_the_offload() {
        let mut p = probe();
        let (mut whole, mut vnet) = (Vec::new(), Vec::new());
        frame(&mut whole, &p, 9);
        vnet_frame(&mut vnet, &p, 9);
        assert_eq!(
            vnet[..VNET_HDR_LEN],
            [0; VNET_HDR_LEN],
            "a complete probe asks nothing"
        );
        assert_eq!(vnet[VNET_HDR_LEN..], whole[..]);
        p.partial = true;
        vnet_frame(&mut vnet, &p, 9);
        assert_eq!(vnet[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(
            u16::from_le_bytes([vnet[6], vnet[7]]),
            34,
            "csum_start: the ICMP header"
        );
        assert_eq!(u16::from_le_bytes([vnet[8], vnet[9]]), 2, "csum_offset");
        let mut f = vnet[VNET_HDR_LEN..].to_vec();
        assert_eq!(&f[36..38], &[0, 0], "unfinished");
        assert_eq!(checksum(&f[14..34]), 0, "the IP header's is finished");
        // What the offload does: the sum from csum_start on, into the field; then it holds.
        let sum = checksum(&f[34..]);
        f[36..38].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(f, whole);
    }
}
