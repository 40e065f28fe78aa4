#![allow(clippy::unwrap_used)]
//! The probe frames and replies, byte by byte.
use super::*;

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
fn probes_are_known_by_their_identifier() {
    let mut buf = Vec::new();
    frame(&mut buf, &probe(), 0x1234);
    assert!(is_probe(&buf[14..], 0x1234));
    assert!(!is_probe(&buf[14..], 0x4321));
    let mut udp = buf[14..].to_vec();
    udp[9] = 17;
    assert!(!is_probe(&udp, 0x1234));
    assert!(!is_probe(&buf[14..30], 0x1234), "truncated");
    assert!(!is_probe(&[], 0x1234));
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
