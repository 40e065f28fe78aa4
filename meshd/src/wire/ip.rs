//! Just enough of IPv4 and IPv6 to route a packet: its version, length and addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_MIN_HEADER: usize = 20;
const V4_TOTAL_LEN: std::ops::Range<usize> = 2..4;
const V4_SRC: std::ops::Range<usize> = 12..16;
const V4_DST: std::ops::Range<usize> = 16..20;

const V6_HEADER: usize = 40;
const V6_PAYLOAD_LEN: std::ops::Range<usize> = 4..6;
const V6_SRC: std::ops::Range<usize> = 8..24;
const V6_DST: std::ops::Range<usize> = 24..40;

/// Source, destination and real length of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerAddrs {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Length the IP header claims; shorter than the buffer when a link padded the frame.
    pub len: usize,
}

/// Why bytes are not a routable IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpError {
    /// Shorter than the fixed header, or shorter than the header's own length field.
    Truncated,
    /// Version nibble is neither 4 nor 6, or IPv4 IHL below 5.
    BadHeader,
}

/// Parse the addresses of the IP packet at the start of `packet`.
#[inline]
pub fn inner_addrs(packet: &[u8]) -> Result<InnerAddrs, IpError> {
    let first = *packet.first().ok_or(IpError::Truncated)?;
    match first >> 4 {
        4 => {
            if packet.len() < V4_MIN_HEADER {
                return Err(IpError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < V4_MIN_HEADER {
                return Err(IpError::BadHeader);
            }
            let total = usize::from(be16(&packet[V4_TOTAL_LEN]));
            if total < ihl {
                return Err(IpError::BadHeader);
            }
            if total > packet.len() {
                return Err(IpError::Truncated);
            }
            Ok(InnerAddrs {
                src: IpAddr::V4(v4(&packet[V4_SRC])),
                dst: IpAddr::V4(v4(&packet[V4_DST])),
                len: total,
            })
        }
        6 => {
            if packet.len() < V6_HEADER {
                return Err(IpError::Truncated);
            }
            let total = V6_HEADER + usize::from(be16(&packet[V6_PAYLOAD_LEN]));
            if total > packet.len() {
                return Err(IpError::Truncated);
            }
            Ok(InnerAddrs {
                src: IpAddr::V6(v6(&packet[V6_SRC])),
                dst: IpAddr::V6(v6(&packet[V6_DST])),
                len: total,
            })
        }
        _ => Err(IpError::BadHeader),
    }
}

/// Destination of an IPv4 packet without validating the rest; the caller has already
/// checked the version nibble and length (the TUN device only hands us whole packets).
#[inline]
pub fn v4_dst(packet: &[u8]) -> Option<Ipv4Addr> {
    packet.get(V4_DST).map(v4)
}

/// Whether the kernel may answer `packet` within its own delivery (the softirq of the TUN
/// write that hands it over): an echo request (ICMP, ICMPv6), or TCP (an ACK, a SYN-ACK, a
/// reset). Anything else (an echo reply, UDP, ...) is answered, if at all, by an application
/// later, and that answer leaves by the TX worker it wakes. Unknown shapes count as answerable.
#[inline]
pub fn may_answer(packet: &[u8]) -> bool {
    const TCP: u8 = 6;
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            // A later fragment of an echo request completes it: its answer may come.
            let later = packet
                .get(6..8)
                .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x1fff != 0);
            match packet.get(9) {
                Some(&1) => later || packet.get(ihl).is_none_or(|t| *t == 8),
                Some(&TCP) | None => true,
                Some(_) => false,
            }
        }
        Some(6) => match packet.get(6) {
            Some(&58) => packet.get(40).is_none_or(|t| *t == 128),
            Some(&TCP) | None => true,
            // UDP; any other next header (an extension header) counts as answerable.
            Some(n) => *n != 17,
        },
        _ => true,
    }
}

#[inline]
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn v4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[inline]
fn v6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod answer_tests {
    use super::may_answer;

    #[test]
    fn only_what_the_kernel_answers_at_once_may_have_an_answer() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[9] = 1;
        v4[20] = 8;
        assert!(may_answer(&v4), "echo request");
        v4[20] = 0;
        assert!(!may_answer(&v4), "echo reply");
        v4[6] = 0x00;
        v4[7] = 0xb9;
        assert!(may_answer(&v4), "a later fragment");
        v4[7] = 0;
        v4[9] = 17;
        assert!(!may_answer(&v4), "UDP");
        v4[9] = 6;
        assert!(may_answer(&v4), "TCP");
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[6] = 58;
        v6[40] = 128;
        assert!(may_answer(&v6), "ICMPv6 echo request");
        v6[40] = 129;
        assert!(!may_answer(&v6), "ICMPv6 echo reply");
        v6[6] = 17;
        assert!(!may_answer(&v6), "UDP");
        v6[6] = 44;
        assert!(may_answer(&v6), "a fragment header");
        assert!(may_answer(&[]), "unknown");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// A minimal IPv4/UDP-protocol packet for tests.
    pub(crate) fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let total = 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        // A counting pattern, so a payload that moved or got corrupted shows.
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::tests_support::ipv4_packet;
    use super::*;

    #[test]
    fn parses_ipv4_and_ignores_padding() {
        let mut p = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 3], 8);
        p.extend_from_slice(&[0; 18]); // Ethernet minimum-frame padding
        let a = inner_addrs(&p).unwrap();
        assert_eq!(a.src, "10.244.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.dst, "10.244.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(a.len, 28);
    }

    #[test]
    fn parses_ipv6() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[23] = 1;
        p[39] = 2;
        let a = inner_addrs(&p).unwrap();
        assert_eq!(a.src, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(a.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!(a.len, 48);
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(inner_addrs(&[]), Err(IpError::Truncated));
        assert_eq!(inner_addrs(&[0x45; 10]), Err(IpError::Truncated));
        assert_eq!(inner_addrs(&[0x00; 40]), Err(IpError::BadHeader));
        let mut p = ipv4_packet([1, 1, 1, 1], [2, 2, 2, 2], 0);
        p[0] = 0x44; // IHL 16 bytes
        assert_eq!(inner_addrs(&p), Err(IpError::BadHeader));
        let mut p = ipv4_packet([1, 1, 1, 1], [2, 2, 2, 2], 0);
        p[2..4].copy_from_slice(&100u16.to_be_bytes()); // claims more than we have
        assert_eq!(inner_addrs(&p), Err(IpError::Truncated));
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(inner_addrs(&p), Err(IpError::Truncated));
    }
}
