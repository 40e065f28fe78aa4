#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The answers byte by byte: what the sender's kernel reads of them.

use super::*;
use crate::wire::ip::tests_support::ipv4_packet;

const POD: [u8; 4] = [10, 244, 1, 2];
const FAR: [u8; 4] = [10, 244, 2, 3];

/// A TCP packet of `len` bytes from POD to FAR, DF set.
fn tcp(len: usize) -> Vec<u8> {
    let mut p = ipv4_packet(POD, FAR, len - 20);
    p[6] = DF;
    p[9] = 6;
    p
}

#[test]
fn a_df_packet_over_the_mtu_is_dropped_and_answered_with_frag_needed_and_the_mtu() {
    let mut t = TooBig::new();
    let p = tcp(1400);
    assert_eq!(t.check(&p, 1230), Some(DropReason::TooBig));
    let a: Vec<&[u8]> = t.answers().collect();
    assert_eq!(a.len(), 1);
    let m = a[0];
    assert_eq!(m.len(), 20 + 8 + 20 + 8);
    assert_eq!(m[0], 0x45);
    assert_eq!(usize::from(u16::from_be_bytes([m[2], m[3]])), m.len());
    assert_eq!(m[9], 1, "ICMP");
    assert_eq!(&m[12..16], &FAR, "from the packet's destination");
    assert_eq!(&m[16..20], &POD, "to its source");
    assert_eq!(checksum(&m[..20]), 0, "IP header checksum");
    assert_eq!((m[20], m[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([m[26], m[27]]), 1230, "next-hop MTU");
    assert_eq!(checksum(&m[20..]), 0, "ICMP checksum");
    assert_eq!(&m[28..], &p[..28], "the packet's header and first 8 bytes");
}

#[test]
fn without_df_or_as_a_probe_it_is_sent_as_it_is() {
    let mut t = TooBig::new();
    let mut p = tcp(1400);
    p[6] = 0;
    assert_eq!(t.check(&p, 1230), None);
    let mut probe = ipv4_packet(POD, FAR, 1380);
    probe[6] = DF;
    probe[9] = 1;
    probe[20] = 8;
    probe[24..26].copy_from_slice(&probe::ident().to_be_bytes());
    assert_eq!(t.check(&probe, 1230), None);
    // Someone else's echo request is a pod's packet like any other.
    probe[24] ^= 0xff;
    assert_eq!(t.check(&probe, 1230), Some(DropReason::TooBig));
    assert_eq!(t.answers().count(), 1);
    // Not IPv4, or too short to be one: not ours to judge.
    assert_eq!(t.check(&[0x60; 1400], 1230), None);
    assert_eq!(t.check(&[0x45; 10], 1230), None);
}

#[test]
fn a_super_packets_segments_get_one_answer_and_icmp_errors_none() {
    let mut t = TooBig::new();
    for _ in 0..40 {
        assert_eq!(t.check(&tcp(1448), 1230), Some(DropReason::TooBig));
    }
    assert_eq!(t.answers().count(), 1);
    let mut err = tcp(1400);
    err[9] = 1;
    err[20] = 3;
    err[12] = 9;
    assert_eq!(t.check(&err, 1230), Some(DropReason::TooBig));
    assert_eq!(t.answers().count(), 1, "an ICMP error is never answered");
    // Many flows: answers up to the batch's room, drops beyond it all the same.
    for i in 0..(MAX_ANSWERS as u8 + 5) {
        let mut p = tcp(1400);
        p[15] = i;
        assert_eq!(t.check(&p, 1230), Some(DropReason::TooBig));
    }
    assert_eq!(t.answers().count(), MAX_ANSWERS);
    t.clear();
    assert_eq!(t.answers().count(), 0);
}
