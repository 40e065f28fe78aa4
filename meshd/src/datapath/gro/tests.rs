#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::segment::TCP_ACK;
use super::*;

const A4: [u8; 4] = [10, 244, 1, 2];
const B4: [u8; 4] = [10, 244, 2, 2];

/// A TCP segment with valid checksums: IPv4 (or IPv6 with `v6`), ports 40000 → 5201, `seq`,
/// `flags`, a timestamp option, and `payload` bytes of `fill`.
pub(super) fn tcp(v6: bool, seq: u32, flags: u8, payload: usize, fill: u8) -> Vec<u8> {
    let iph = if v6 { 40 } else { 20 };
    let tcph = 32;
    let len = iph + tcph + payload;
    let mut p = vec![0u8; len];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((tcph + payload) as u16).to_be_bytes());
        p[6] = IPPROTO_TCP;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // IDs differ per segment
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&A4);
        p[16..20].copy_from_slice(&B4);
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let t = &mut p[iph..];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&777u32.to_be_bytes());
    t[12] = ((tcph / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    t[20..22].copy_from_slice(&[1, 1]);
    t[22] = 8; // timestamps
    t[23] = 10;
    t[24..28].copy_from_slice(&99u32.to_be_bytes());
    t[tcph..].fill(fill);
    fix_tcp_checksum(&mut p, iph);
    p
}

pub(super) fn fix_tcp_checksum(p: &mut [u8], iph: usize) {
    p[iph + 16..iph + 18].fill(0);
    let addrs = if iph == 40 { &p[8..40] } else { &p[12..20] };
    let pseudo = sum(addrs, u64::from(IPPROTO_TCP) + (p.len() - iph) as u64);
    let c = !fold(sum(&p[iph..], pseudo));
    p[iph + 16..iph + 18].copy_from_slice(&c.to_be_bytes());
}

/// What the kernel does with a NEEDS_CSUM write: the sum from csum_start on, over a checksum
/// field that holds the pseudo-header sum, complemented into the field.
pub(super) fn complete(write: &[u8]) -> Vec<u8> {
    let (hdr, p) = write.split_at(VNET_HDR_LEN);
    let mut p = p.to_vec();
    assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
    let start = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
    let off = usize::from(u16::from_ne_bytes([hdr[8], hdr[9]]));
    let c = !fold(sum(&p[start..], 0));
    p[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
    p
}

pub(super) fn flushed(c: &mut Coalescer) -> Vec<Vec<u8>> {
    let mut writes = Vec::new();
    let mut errors = 0;
    c.flush_with(
        |b| {
            writes.push(b.to_vec());
            Ok(())
        },
        &mut errors,
    );
    assert_eq!(errors, 0);
    writes
}

pub(super) const MSS: usize = 1000;

#[test]
fn consecutive_segments_become_one_super_packet_with_the_kernels_headers() {
    for v6 in [false, true] {
        let mut c = Coalescer::new(8, true, true, true);
        let mut seq = 5000u32;
        let mut want = Vec::new();
        for (i, len) in [MSS, MSS, MSS, 400].into_iter().enumerate() {
            let flags = if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK };
            let p = tcp(v6, seq, flags, len, i as u8 + 1);
            want.extend(std::iter::repeat_n(i as u8 + 1, len));
            seq += len as u32;
            assert!(!c.push(&p));
        }
        let w = flushed(&mut c);
        assert_eq!(w.len(), 1, "v6 {v6}");
        let (hdr, p) = w[0].split_at(VNET_HDR_LEN);
        let iph = if v6 { 40 } else { 20 };
        let gso_type = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        assert_eq!(hdr[1], gso_type);
        assert_eq!(u16::from_ne_bytes([hdr[2], hdr[3]]), (iph + 32) as u16);
        assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), MSS as u16);
        assert_eq!(&p[iph + 32..], &want[..]);
        assert_eq!(p[iph + 13], TCP_ACK | TCP_PSH, "the last segment's PSH");
        if v6 {
            assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            assert_eq!(fold(sum(&p[..20], 0)), 0xffff, "IPv4 header checksum");
        }
        let done = complete(&w[0]);
        let s = segment(&done, false).unwrap();
        assert!(
            checksum_ok(&done, &s),
            "v6 {v6}: the completed checksum is valid"
        );
        assert_eq!(s.seq, 5000);
    }
}

#[test]
fn commit_coalesces_what_was_written_into_next() {
    let mut c = Coalescer::new(4, true, true, false);
    let mut seq = 1u32;
    for i in 0..6 {
        let p = tcp(false, seq, TCP_ACK, MSS, i);
        seq += MSS as u32;
        c.next(p.len())[..p.len()].copy_from_slice(&p);
        assert!(!c.commit(p.len()), "joined, so the batch never fills");
    }
    let w = flushed(&mut c);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].len(), VNET_HDR_LEN + 20 + 32 + 6 * MSS);
    assert!(checksum_ok(
        &complete(&w[0]),
        &segment(&complete(&w[0]), false).unwrap()
    ));
}

#[test]
fn gaps_other_flows_and_odd_packets_are_written_apart_in_order() {
    let mut c = Coalescer::new(16, true, true, true);
    let a = |seq, fill| tcp(false, seq, TCP_ACK, MSS, fill);
    let mut other = tcp(false, 9000, TCP_ACK, MSS, 9);
    other[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another source port
    fix_tcp_checksum(&mut other, 20);
    let mut other2 = tcp(false, 9000 + MSS as u32, TCP_ACK, MSS, 10);
    other2[20..22].copy_from_slice(&40001u16.to_be_bytes());
    fix_tcp_checksum(&mut other2, 20);
    let icmp = {
        let mut p = tcp(false, 0, TCP_ACK, 8, 0);
        p[9] = 1;
        p
    };
    let pure_ack = tcp(false, 1, TCP_ACK, 0, 0);
    c.push(&a(1, 1));
    c.push(&other);
    c.push(&a(1 + MSS as u32, 2)); // joins flow 1 across the other flow
    c.push(&icmp);
    c.push(&other2); // joins flow 2
    c.push(&a(1 + 3 * MSS as u32, 3)); // a gap: a buffer of its own, now the flow to join
    c.push(&pure_ack); // the connection's: ends the new head's flow
    c.push(&a(1 + 4 * MSS as u32, 4)); // so this one is written after it, not joined before
    let w = flushed(&mut c);
    let payloads: Vec<usize> = w.iter().map(|b| b.len() - VNET_HDR_LEN).collect();
    let seg = 52;
    assert_eq!(
        payloads,
        [
            seg + 2 * MSS,
            seg + 2 * MSS,
            icmp.len(),
            seg + MSS,
            pure_ack.len(),
            seg + MSS
        ]
    );
    // Packets written alone go as they came, behind a zeroed header.
    assert_eq!(&w[2][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&w[2][VNET_HDR_LEN..], &icmp[..]);
    assert_eq!(&w[4][VNET_HDR_LEN..], &pure_ack[..]);
    assert_eq!(
        w[3][VNET_HDR_LEN + seg],
        3,
        "the flow after the gap starts at its head"
    );
}

#[test]
fn a_psh_or_a_short_segment_ends_the_flow() {
    let mut c = Coalescer::new(8, true, true, true);
    c.push(&tcp(false, 1, TCP_ACK, MSS, 1));
    c.push(&tcp(false, 1 + MSS as u32, TCP_ACK, 300, 2)); // short: joins, then closes
    c.push(&tcp(false, 1301 + MSS as u32, TCP_ACK, MSS, 3));
    c.push(&tcp(false, 1, TCP_ACK | TCP_PSH, MSS, 4)); // a PSH head never takes more
    c.push(&tcp(false, 1 + MSS as u32, TCP_ACK, MSS, 5));
    let w = flushed(&mut c);
    let lens: Vec<usize> = w.iter().map(|b| b.len() - VNET_HDR_LEN - 52).collect();
    assert_eq!(lens, [MSS + 300, MSS, MSS, MSS]);
}

#[test]
fn a_segment_with_a_bad_checksum_never_joins_where_packets_are_not_authenticated() {
    let good = |seq, fill| tcp(false, seq, TCP_ACK, MSS, fill);
    let mut bad = good(1 + MSS as u32, 2);
    bad[100] ^= 0xff;
    for verify in [true, false] {
        let mut c = Coalescer::new(8, true, true, verify);
        c.push(&good(1, 1));
        c.push(&bad);
        let w = flushed(&mut c);
        // Checked: written alone, as it came (the kernel drops it). Authenticated: it joins.
        assert_eq!(w.len(), if verify { 2 } else { 1 }, "verify {verify}");
        if verify {
            assert_eq!(&w[1][VNET_HDR_LEN..], &bad[..]);
            assert_eq!(w[0][0], 0, "a lone head is not a super-packet");
        }
    }
    // A bad head is written alone too, and the next good segment heads its own flow.
    let mut c = Coalescer::new(8, true, true, true);
    let mut head = good(1, 1);
    head[80] ^= 1;
    c.push(&head);
    c.push(&good(1 + MSS as u32, 2));
    c.push(&good(1 + 2 * MSS as u32, 3));
    let w = flushed(&mut c);
    assert_eq!(w.len(), 2);
    assert_eq!(w[1].len(), VNET_HDR_LEN + 52 + 2 * MSS);
}

#[test]
fn without_offload_every_packet_is_written_as_it_is() {
    let mut c = Coalescer::new(4, false, false, true);
    let p = tcp(false, 1, TCP_ACK, MSS, 1);
    let q = tcp(false, 1 + MSS as u32, TCP_ACK, MSS, 2);
    c.push(&p);
    c.next(q.len()).copy_from_slice(&q);
    c.commit(q.len());
    let w = flushed(&mut c);
    assert_eq!(w, [p, q]);
}

#[test]
fn super_packets_stop_at_64_segments_and_64_kib() {
    let mut c = Coalescer::new(8, true, true, false);
    let mut seq = 1u32;
    for _ in 0..70 {
        c.push(&tcp(false, seq, TCP_ACK, 900, 7));
        seq += 900;
    }
    let w = flushed(&mut c);
    assert!(w.iter().all(|b| b.len() <= VNET_HDR_LEN + MAX_PACKET));
    let total: usize = w.iter().map(|b| b.len() - VNET_HDR_LEN - 52).sum();
    assert_eq!(total, 70 * 900);
    assert_eq!(
        w.len(),
        2,
        "{:?}",
        w.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut c = Coalescer::new(8, true, true, false);
    let mut seq = 1u32;
    for _ in 0..50 {
        c.push(&tcp(false, seq, TCP_ACK, 1400, 7));
        seq += 1400;
    }
    let w = flushed(&mut c);
    assert!(w.iter().all(|b| b.len() <= VNET_HDR_LEN + MAX_PACKET));
    assert_eq!(w.len(), 2);
}

#[test]
fn a_full_batch_says_so_and_flush_starts_afresh() {
    let mut c = Coalescer::new(2, true, true, true);
    let icmp = vec![
        0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 8, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(!c.push(&icmp));
    assert!(c.push(&icmp));
    assert_eq!(flushed(&mut c).len(), 2);
    assert!(flushed(&mut c).is_empty());
    // Garbage is written as it came (the kernel judges it), never parsed past its end.
    let mut writes = 0;
    for junk in [&[][..], &[0x45][..], &[0x60, 0, 0][..], &[0x45; 40][..]] {
        if c.push(junk) {
            writes += flushed(&mut c).len();
        }
    }
    assert_eq!(writes, 4);
}

/// A UDP datagram 10.244.1.2:5000 → 10.244.2.2:5001 with `payload` bytes of `fill`, its
/// checksum filled in (or left zero with `no_checksum`).
pub(super) fn udp(payload: usize, fill: u8, no_checksum: bool) -> Vec<u8> {
    let len = 20 + 8 + payload;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = IPPROTO_UDP;
    p[12..16].copy_from_slice(&A4);
    p[16..20].copy_from_slice(&B4);
    let c = !fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    p[28..].fill(fill);
    if !no_checksum {
        let pseudo = sum(&p[12..20], u64::from(IPPROTO_UDP) + (8 + payload) as u64);
        let c = !fold(sum(&p[20..], pseudo));
        p[26..28].copy_from_slice(&c.to_be_bytes());
    }
    p
}

#[test]
fn udp_datagrams_of_one_flow_coalesce_where_the_device_has_uso() {
    let mut c = Coalescer::new(8, true, true, true);
    for (i, len) in [1200, 1200, 1200, 500].into_iter().enumerate() {
        c.push(&udp(len, i as u8, i == 1));
    }
    c.push(&udp(1200, 9, false)); // after the short one: a new super-packet
    let w = flushed(&mut c);
    assert_eq!(w.len(), 2);
    let (hdr, p) = w[0].split_at(VNET_HDR_LEN);
    assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_UDP_L4);
    assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 1200);
    assert_eq!(
        u16::from_ne_bytes([hdr[8], hdr[9]]),
        6,
        "csum_offset: UDP's checksum"
    );
    assert_eq!(usize::from(u16::from_be_bytes([p[24], p[25]])), 8 + 4100);
    assert_eq!(p.len(), 28 + 4100);
    let done = complete(&w[0]);
    assert!(checksum_ok(&done, &segment(&done, true).unwrap()));
    assert_eq!(
        &w[1][VNET_HDR_LEN..],
        &udp(1200, 9, false)[..],
        "alone, as it came"
    );
    // A bad checksum never joins; without USO nothing UDP coalesces.
    let mut bad = udp(1200, 1, false);
    bad[100] ^= 1;
    let mut c = Coalescer::new(8, true, true, true);
    c.push(&udp(1200, 0, false));
    c.push(&bad);
    assert_eq!(flushed(&mut c).len(), 2);
    let mut c = Coalescer::new(8, true, false, true);
    c.push(&udp(1200, 0, false));
    c.push(&udp(1200, 1, false));
    assert_eq!(flushed(&mut c).len(), 2);
}
