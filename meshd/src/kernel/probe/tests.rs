#![allow(clippy::unwrap_used)]
//! The probe frames and replies, byte by byte.
use super::frame::{vnet_frame, VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR_LEN};
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
fn echoes_between_bridge_addresses_are_not_pod_traffic() {
    let peer: ipnet::Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let mut buf = Vec::new();
    frame(&mut buf, &probe(), 0x1234);
    let mut ip = buf[14..].to_vec();
    // Any node's probe to the peer's bridge address, whatever its identifier, and a reply.
    assert!(is_node_echo(&ip, peer));
    ip[24] ^= 0xff;
    assert!(is_node_echo(&ip, peer));
    ip[20] = ICMP_ECHO_REPLY;
    assert!(is_node_echo(&ip, peer));
    // Another peer's subnet, a pod's address, another ICMP type, another protocol: pod traffic.
    assert!(!is_node_echo(&ip, "10.244.3.0/24".parse().unwrap()));
    let mut to_pod = ip.clone();
    to_pod[19] = 2;
    assert!(!is_node_echo(&to_pod, peer));
    let mut unreachable = ip.clone();
    unreachable[20] = 3;
    assert!(!is_node_echo(&unreachable, peer));
    let mut udp = ip.clone();
    udp[9] = 17;
    assert!(!is_node_echo(&udp, peer));
    assert!(!is_node_echo(&ip[..20], peer), "truncated");
    assert!(!is_node_echo(&[], peer));
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

/// Against the real kernel (a namespace of the test's own, its loopback): an echo reply with
/// this node's identifier reaches the prober; one with another identifier, which the host gets
/// too (an unfiltered raw socket sees both), is dropped by the socket filter.
#[test]
fn only_replies_with_our_identifier_are_queued() {
    use crate::kernel::fresh_netns::in_fresh_netns;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let seen = in_fresh_netns(|| {
        Box::pin(async {
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            let raw = || {
                // SAFETY: socket(2); the result is checked, then owned.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                        libc::IPPROTO_ICMP,
                    )
                };
                assert!(fd >= 0, "{}", io::Error::last_os_error());
                // SAFETY: a descriptor just returned by socket(2).
                unsafe { OwnedFd::from_raw_fd(fd) }
            };
            let (ours, theirs) = (0x1234u16, 0x4321u16);
            let mut prober = Prober::new(ours).unwrap();
            let watcher = raw();
            let other = raw();
            // Someone else's echo request (as `ping` sends), then ours: both come back.
            let mut echo = [0u8; 24];
            echo[0] = ICMP_ECHO;
            echo[4..6].copy_from_slice(&theirs.to_be_bytes());
            let sum = checksum(&echo);
            echo[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: sockaddr_in is plain data.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            // SAFETY: sendto with a buffer and address that live across the call.
            let n = unsafe {
                libc::sendto(
                    other.as_raw_fd(),
                    echo.as_ptr().cast(),
                    echo.len(),
                    0,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert_eq!(n, echo.len() as isize, "{}", io::Error::last_os_error());
            prober.nudge(Ipv4Addr::LOCALHOST).unwrap();
            // The host got both replies: the unfiltered socket's view, until it has both.
            let idents = |fd: &OwnedFd, want: usize| {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let mut buf = [0u8; 256];
                    // SAFETY: recv into a stack buffer of the given length.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n < 0 {
                        if seen.len() >= want {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    let ip = &buf[..n as usize];
                    let ihl = usize::from(ip[0] & 0x0f) * 4;
                    if ip[ihl] == ICMP_ECHO_REPLY {
                        seen.push(u16::from_be_bytes([ip[ihl + 4], ip[ihl + 5]]));
                    }
                }
                seen.sort_unstable();
                seen
            };
            assert_eq!(
                idents(&watcher, 2),
                vec![ours, theirs],
                "both echoes answered"
            );
            // What was queued on the prober's socket, read as the manager would read it.
            idents(&prober.icmp, 1)
        })
    });
    // Ours alone: theirs was dropped before it was queued.
    assert_eq!(seen, vec![0x1234]);
}
