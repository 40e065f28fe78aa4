//! The coalescer takes only what the kernel's GRO would, and reorders nothing within a
//! connection: a bad IPv4 header checksum or IPv4 options keep a segment apart, and any packet
//! of a connection that cannot join its flow (a pure ACK, FIN, RST, SYN, URG, ECN, a gap, a bad
//! checksum) is written after that flow, with what follows it after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::segment::TCP_ACK;
use super::tests::{fix_tcp_checksum, flushed, tcp, MSS};
use super::*;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;

/// A full segment of the test connection at `seq` (counted in segments from 1).
fn seg(n: u32, fill: u8) -> Vec<u8> {
    tcp(false, 1 + (n - 1) * MSS as u32, TCP_ACK, MSS, fill)
}

/// What was written, as packets: each write alone, without its virtio-net header.
fn alone(w: &[Vec<u8>]) -> Vec<Vec<u8>> {
    w.iter().map(|b| b[VNET_HDR_LEN..].to_vec()).collect()
}

#[test]
fn a_bad_ipv4_header_checksum_never_coalesces() {
    for verify in [true, false] {
        // As a head: written alone; the next segments make a flow of their own.
        let mut bad = seg(1, 1);
        bad[10] ^= 0x40;
        let mut c = Coalescer::new(8, true, true, verify);
        for p in [&bad, &seg(2, 2), &seg(3, 3)] {
            c.push(p);
        }
        let w = flushed(&mut c);
        assert_eq!(w.len(), 2, "verify {verify}");
        assert_eq!(&w[0][..], &[&[0; VNET_HDR_LEN][..], &bad[..]].concat()[..]);
        assert_eq!(w[1].len(), VNET_HDR_LEN + 52 + 2 * MSS);
        // As a follower: not joined (its checksum would be recomputed, and so blessed), and
        // what comes after it is not joined before it.
        let mut bad = seg(2, 2);
        bad[11] ^= 1;
        let mut c = Coalescer::new(8, true, true, verify);
        for p in [&seg(1, 1), &bad, &seg(3, 3), &seg(4, 4)] {
            c.push(p);
        }
        let w = flushed(&mut c);
        let lens: Vec<usize> = w.iter().map(|b| b.len() - VNET_HDR_LEN - 52).collect();
        assert_eq!(lens, [MSS, MSS, 2 * MSS], "verify {verify}");
        assert_eq!(w[1][VNET_HDR_LEN..], bad[..]);
    }
}

/// `p` with 4 bytes of IPv4 options (NOPs) and its checksums fixed.
fn with_ip_options(p: &[u8]) -> Vec<u8> {
    let mut q = p[..20].to_vec();
    q.extend_from_slice(&[1, 1, 1, 1]);
    q.extend_from_slice(&p[20..]);
    q[0] = 0x46;
    let len = q.len() as u16;
    q[2..4].copy_from_slice(&len.to_be_bytes());
    q[10..12].fill(0);
    let c = !fold(sum(&q[..24], 0));
    q[10..12].copy_from_slice(&c.to_be_bytes());
    fix_tcp_checksum(&mut q, 24);
    q
}

#[test]
fn ipv4_options_never_coalesce() {
    let mut c = Coalescer::new(8, true, true, true);
    let (a, b, d) = (
        with_ip_options(&seg(1, 1)),
        with_ip_options(&seg(2, 2)),
        seg(3, 3),
    );
    assert!(segment(&a, false).is_none() && flow_key(&a).is_some());
    for p in [&a, &b, &d, &seg(4, 4)] {
        c.push(p);
    }
    let w = flushed(&mut c);
    assert_eq!(alone(&w[..2]), [a, b], "written as they came");
    assert_eq!(w.len(), 3);
    assert_eq!(w[2].len(), VNET_HDR_LEN + 52 + 2 * MSS);
}

/// For each kind of packet that cannot join: a flow of two, that packet, then two more full
/// segments. The packet ends the flow; the two after it make a flow that follows it.
#[test]
fn every_packet_that_cannot_join_ends_its_connections_flow() {
    let at3 = 1 + 2 * MSS as u32;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("pure ACK", tcp(false, at3, TCP_ACK, 0, 0)),
        ("FIN", tcp(false, at3, TCP_ACK | FIN, MSS, 9)),
        ("RST", tcp(false, at3, TCP_ACK | RST, 0, 0)),
        ("URG", tcp(false, at3, TCP_ACK | URG, MSS, 9)),
        ("SYN", tcp(false, at3, SYN, 0, 0)),
        ("ECE", tcp(false, at3, TCP_ACK | ECE, MSS, 9)),
        ("a retransmission", seg(1, 9)),
        ("another ACK number", {
            let mut p = seg(3, 9);
            p[20 + 11] ^= 1;
            fix_tcp_checksum(&mut p, 20);
            p
        }),
        ("a bad TCP checksum", {
            let mut p = seg(3, 9);
            p[100] ^= 1;
            p
        }),
    ];
    for (what, odd) in cases {
        let mut c = Coalescer::new(8, true, true, true);
        // What follows continues the sequence the odd one leaves (or the flow's, for those
        // that carry none), so it could have joined the first flow.
        let next = segment(&odd, false)
            .filter(|s| s.seq == at3 && odd[33] & !TCP_PSH == TCP_ACK)
            .map_or(3, |_| 4);
        for p in [
            &seg(1, 1),
            &seg(2, 2),
            &odd,
            &seg(next, 3),
            &seg(next + 1, 4),
        ] {
            c.push(p);
        }
        let w = flushed(&mut c);
        let lens: Vec<usize> = w.iter().map(|b| b.len() - VNET_HDR_LEN).collect();
        assert_eq!(
            lens,
            [52 + 2 * MSS, odd.len(), 52 + 2 * MSS],
            "{what}: the writes"
        );
        assert_eq!(w[1][VNET_HDR_LEN..], odd[..], "{what}: alone, as it came");
        assert_eq!(
            w[2][VNET_HDR_LEN + 52],
            3,
            "{what}: then the rest, after it"
        );
    }
}

#[test]
fn udp_that_cannot_join_ends_its_flow_too() {
    use super::tests::udp;
    let mut c = Coalescer::new(8, true, true, true);
    let empty = udp(0, 0, false);
    for p in [
        &udp(1200, 1, false),
        &udp(1200, 2, false),
        &empty,
        &udp(1200, 3, false),
    ] {
        c.push(p);
    }
    let w = flushed(&mut c);
    let lens: Vec<usize> = w.iter().map(|b| b.len() - VNET_HDR_LEN).collect();
    assert_eq!(lens, [28 + 2400, 28, 28 + 1200]);
}

/// Three connections interleaved, each a random mix of full, short, PSH, pure-ACK and FIN
/// segments, gaps and bad checksums: cut every write back into the segments the kernel will
/// make of it, and each connection's segments come out as they went in.
#[test]
fn nothing_within_a_connection_is_reordered() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..200 {
        let mut c = Coalescer::new(32, true, true, round % 2 == 0);
        let mut seqs = [1u32; 3];
        let mut sent: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for i in 0..24u8 {
            let conn = rand(3) as usize;
            let (flags, len) = match rand(8) {
                0 => (TCP_ACK, 0),
                1 => (TCP_ACK | TCP_PSH, MSS),
                2 => (TCP_ACK, 1 + rand(MSS as u64 - 1) as usize),
                3 => (TCP_ACK | FIN, MSS),
                _ => (TCP_ACK, MSS),
            };
            let mut p = tcp(false, seqs[conn], flags, len, i);
            p[20..22].copy_from_slice(&(40000 + conn as u16).to_be_bytes());
            fix_tcp_checksum(&mut p, 20);
            match rand(10) {
                0 => seqs[conn] = seqs[conn].wrapping_add(7), // a gap
                1 => {
                    // A bad checksum.
                    let at = 60.min(p.len() - 1);
                    p[at] ^= 1;
                }
                _ => {}
            }
            seqs[conn] = seqs[conn].wrapping_add(len as u32);
            sent[conn].push(p.clone());
            c.push(&p);
        }
        let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for w in flushed(&mut c) {
            for p in cut(&w) {
                let conn = usize::from(u16::from_be_bytes([p[20], p[21]]) - 40000);
                got[conn].push(p);
            }
        }
        for conn in 0..3 {
            let want: Vec<(u32, &[u8])> = sent[conn].iter().map(|p| key(p)).collect();
            let have: Vec<(u32, &[u8])> = got[conn].iter().map(|p| key(p)).collect();
            assert_eq!(have, want, "round {round}, connection {conn}");
        }
    }
}

/// A segment as the receiving TCP sees it: sequence number and payload.
fn key(p: &[u8]) -> (u32, &[u8]) {
    (u32::from_be_bytes([p[24], p[25], p[26], p[27]]), &p[52..])
}

/// The segments the kernel makes of one write: the packet itself, or a super-packet cut at
/// its `gso_size`, each with the head's headers and its sequence number.
fn cut(w: &[u8]) -> Vec<Vec<u8>> {
    let (hdr, p) = w.split_at(VNET_HDR_LEN);
    if hdr[1] == 0 {
        return vec![p.to_vec()];
    }
    let hlen = usize::from(u16::from_ne_bytes([hdr[2], hdr[3]]));
    let gso = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
    let seq0 = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
    p[hlen..]
        .chunks(gso)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = p[..hlen].to_vec();
            s[24..28].copy_from_slice(&seq0.wrapping_add((i * gso) as u32).to_be_bytes());
            s.extend_from_slice(chunk);
            s
        })
        .collect()
}
