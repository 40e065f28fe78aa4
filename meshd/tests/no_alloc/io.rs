//! The data path's I/O allocates nothing per packet once warm: batched TUN reads (with TUN
//! offload), coalescing TUN writes, batched UDP receives and the GSO run sends, in a network
//! namespace of the test's own with a real TUN device and real UDP sockets. The kernel answers
//! the ICMP echo requests written to the TUN device, and those answers, read back, go out as
//! VXLAN datagrams to a socket in the same namespace: the path a ping takes through a node.
//! Each round also writes TCP segments of one flow, which the coalescer joins into one
//! super-packet (the kernel answers it with a reset, as no one listens).
//! Needs root (a namespace and a TUN device), as the end-to-end tests do.

use super::allocations_in;
use meshd::datapath::gro::Coalescer;
use meshd::datapath::io::{send_runs, wait, TunReader, UdpReader, TX_BATCH};
use meshd::datapath::runs::Runs;
use meshd::datapath::vxlan::Vxlan;
use meshd::datapath::worker::{encode_batch, frame_batch};
use meshd::peers::Peer;
use meshd::routes::{Local, Routes};
use meshd::stats::DropTally;
use meshd::wire::vxlan::HEADER_LEN;
use quinn_udp::{UdpSockRef, UdpSocketState};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::AtomicBool;

/// A namespace removed on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// An IPv4 ICMP echo request from 10.99.0.2 to 10.99.0.1, checksums filled in.
fn echo_request(seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 56];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&[10, 99, 0, 2]);
    p[16..20].copy_from_slice(&[10, 99, 0, 1]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&0x6d73u16.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

/// A TCP segment of 1000 bytes from 10.99.0.2:40000 to 10.99.0.1:9 at `seq`, checksums
/// filled in.
fn tcp_segment(seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 20 + 1000];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 99, 0, 2]);
    p[16..20].copy_from_slice(&[10, 99, 0, 1]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10; // ACK
    p[34..36].copy_from_slice(&1000u16.to_be_bytes());
    let mut pseudo = p[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let c = checksum(&pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[test]
fn tun_and_udp_io_allocate_nothing_per_packet() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (a network namespace and a TUN device)"
    );
    let ns = Netns(format!("mnaio{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    for key in ["all", "default"] {
        let v = format!("net.ipv6.conf.{key}.disable_ipv6=1");
        ip(&["netns", "exec", &ns.0, "sysctl", "-qw", &v]);
    }
    let path = format!("/run/netns/{}", ns.0);
    let (allocs, answered, received) = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        run_in_namespace()
    })
    .join()
    .unwrap();
    assert_eq!(
        allocs, 0,
        "allocations in 50 warm rounds of TUN and UDP I/O"
    );
    // The rounds did carry packets: the kernel answered, and the answers arrived over UDP.
    assert!(
        answered >= 50 && received >= answered,
        "{answered} {received}"
    );
}

/// Returns (allocations while warm, echo replies read from TUN, datagrams received over UDP).
fn run_in_namespace() -> (usize, usize, usize) {
    let tun = tun_rs::DeviceBuilder::new()
        .name("naio0")
        .ipv4("10.99.0.1", 24, None)
        .mtu(1400)
        .offload(true)
        .build_sync()
        .unwrap();
    tun.set_nonblocking(true).unwrap();
    ip(&["link", "set", "naio0", "up"]);
    // The peer's "underlay" is loopback: its datagrams come back to our own socket.
    let routes = Routes::new(Local {
        name: "a".into(),
        vni: 1,
        port: 8472,
    });
    routes.install_clear(&[Peer::clear(
        "b",
        "127.0.0.1:8472".parse().unwrap(),
        "10.99.0.0/24".parse().unwrap(),
    )]);
    let rx_sock = UdpSocket::bind("127.0.0.1:8472").unwrap();
    rx_sock.set_nonblocking(true).unwrap();
    let rx_state = UdpSocketState::new(UdpSockRef::from(&rx_sock)).unwrap();
    let tx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx_sock.set_nonblocking(true).unwrap();
    let tx_state = UdpSocketState::new(UdpSockRef::from(&tx_sock)).unwrap();
    let gro = rx_state.gro_segments() > 1;
    let vxlan = Vxlan { vni: 1 };
    let stop = AtomicBool::new(false);
    let mut reader = TunReader::new(1400);
    let mut writer = Coalescer::new(64, true, true, true);
    let mut udp = UdpReader::new(gro, 1400 + 128);
    let mut runs = Runs::new(TX_BATCH, 1400 + 64, tx_state.max_gso_segments());
    let mut drops = DropTally::default();
    let requests: Vec<Vec<u8>> = (0..8).map(echo_request).collect();
    let segments: Vec<Vec<u8>> = (0..4).map(|i| tcp_segment(1 + 1000 * i)).collect();
    let (mut answered, mut received) = (0, 0);
    // Rounds alternate between the two TX loops: copying into the runs (encode_batch, as
    // WireGuard does) and reading into them to frame in place (frame_batch, cleartext).
    let mut in_place = false;
    let mut round = |answered: &mut usize, received: &mut usize| {
        in_place = !in_place;
        // Written in place (as a decrypted packet is) and pushed from elsewhere (as a
        // cleartext one is).
        for r in &requests {
            writer.next(r.len())[..r.len()].copy_from_slice(r);
            writer.commit(r.len());
        }
        for (i, s) in segments.iter().enumerate() {
            if i % 2 == 0 {
                writer.push(s);
            } else {
                writer.next(s.len()).copy_from_slice(s);
                writer.commit(s.len());
            }
        }
        let mut failed = 0;
        assert!(writer.flush(&tun, &mut failed));
        assert_eq!(failed, 0, "TUN writes refused");
        // The kernel answered in the write's own softirq; read the answers (waiting if not).
        let stride = HEADER_LEN + 1400;
        let mut read = |reader: &mut TunReader, runs: &mut Runs, fill| {
            if in_place {
                reader.read_slots(&tun, runs.buf_mut(), stride, HEADER_LEN, &mut drops, fill)
            } else {
                reader.read(&tun, &mut drops, fill)
            }
        };
        let mut n = read(&mut reader, &mut runs, true);
        while n == 0 {
            wait(&tun, libc::POLLIN);
            n = read(&mut reader, &mut runs, false);
        }
        *answered += n;
        let table = routes.load();
        runs.clear();
        if in_place {
            frame_batch(&vxlan, &table, &reader, n, stride, &mut runs, &mut drops);
        } else {
            encode_batch(&vxlan, &table, reader.packets(n), &mut runs, &mut drops, 0);
        }
        send_runs(&table, &tx_sock, &tx_state, &stop, &runs);
        // What went out (an IPv6 packet the kernel sent to the device has no route).
        let sent: usize = runs.runs().iter().map(|r| r.datagrams).sum();
        let mut got = 0;
        while got < sent {
            udp.recv(&rx_sock, &rx_state, |_, d| {
                // A VXLAN frame (flags, VNI 1) around an IPv4 packet.
                assert!(d.len() > HEADER_LEN && d[0] == 0x08 && d[7] == 0 && d[6] == 1);
                assert_eq!(d[HEADER_LEN] >> 4, 4, "{d:?}");
                got += 1
            });
            if got < sent {
                wait(&rx_sock, libc::POLLIN);
            }
        }
        *received += got;
    };
    for _ in 0..5 {
        round(&mut answered, &mut received);
    }
    let (mut a, mut r) = (0, 0);
    let allocs = allocations_in(|| {
        for _ in 0..50 {
            round(&mut a, &mut r);
        }
    });
    (allocs, a, r)
}
