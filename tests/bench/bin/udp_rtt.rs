//! `udp-rtt serve ME PEER` / `udp-rtt ping ME PEER ROUNDS ECHOES INTERVAL_MS`: a UDP echo
//! between two hosts, one datagram at a time, alternating between two socket designs so that
//! both see the same machine at the same moments (`tests/bench/sockets` runs it between two
//! namespaces):
//!
//! - grouped: the data port as meshd has it, on both ends (meshd's own `bind_socket` and
//!   `steer`): a reuseport group of two sockets with the BPF program choosing the member by the
//!   peer's address, unconnected, every send naming its destination;
//! - connected: a socket of the same kind of group, connected to the peer (boringtun's per-peer
//!   socket): the kernel takes it out of the group, its sends use its cached route, and the
//!   receiver's early demultiplexing finds it with its cached input route.
//!
//! Prints min / median / avg / p99 µs per design per round. ME and PEER must both be even IPv4
//! addresses (the program then picks the member that is read, on both ends).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshd::datapath::socket::bind_socket;
use meshd::tiers::Steer;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const GROUPED: u16 = 51820;
const CONNECTED: u16 = 51821;
/// meshd's default `socket-buffer`, each way, for every socket.
const BUFFER: usize = 8 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| -> Ipv4Addr { args[i].parse().expect("an IPv4 address") };
    let (me, peer) = (addr(1), addr(2));
    let (group, _rest, connected) = sockets(me, peer);
    match args[0].as_str() {
        "serve" => serve(&group, &connected),
        "ping" => {
            let n = |i: usize| -> u64 { args[i].parse().expect("a number") };
            let to = SocketAddr::V4(SocketAddrV4::new(peer, GROUPED));
            let interval = Duration::from_millis(n(5));
            for round in 1..=n(3) {
                ping(round, &group, to, &connected, n(4) as usize, interval);
            }
        }
        other => panic!("udp-rtt: serve or ping, not {other}"),
    }
}

/// The grouped member that receives, the sockets that only fill the groups, and the connected
/// socket.
fn sockets(me: Ipv4Addr, peer: Ipv4Addr) -> (UdpSocket, Vec<UdpSocket>, UdpSocket) {
    let group = bound(me, GROUPED);
    let mut rest = vec![bound(me, GROUPED)];
    steer(&group);
    rest.push(bound(me, CONNECTED));
    rest.push(bound(me, CONNECTED));
    let connected = bound(me, CONNECTED);
    connected
        .connect(SocketAddrV4::new(peer, CONNECTED))
        .expect("connect");
    (group, rest, connected)
}

/// A socket on `port` as meshd binds its data port's: a reuseport member with meshd's buffers.
fn bound(me: Ipv4Addr, port: u16) -> UdpSocket {
    bind_socket(SocketAddr::V4(SocketAddrV4::new(me, port)), BUFFER, true).expect("bind")
}

/// meshd's own program: the member is the peer's address modulo the group's size.
fn steer(s: &UdpSocket) {
    meshd::datapath::socket::steer(s, true, 2, Steer::PeerAddress)
        .expect("SO_ATTACH_REUSEPORT_CBPF");
}

fn serve(group: &UdpSocket, connected: &UdpSocket) {
    let mut buf = [0u8; 2048];
    let mut fds = [
        libc::pollfd {
            fd: group.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: connected.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    println!("ready");
    loop {
        // SAFETY: two valid pollfds for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[0].revents != 0 {
            if let Ok((n, from)) = group.recv_from(&mut buf) {
                let _ = group.send_to(&buf[..n], from);
            }
        }
        if fds[1].revents != 0 {
            if let Ok(n) = connected.recv(&mut buf) {
                let _ = connected.send(&buf[..n]);
            }
        }
    }
}

fn ping(
    round: u64,
    group: &UdpSocket,
    to: SocketAddr,
    connected: &UdpSocket,
    echoes: usize,
    interval: Duration,
) {
    let payload = [0u8; 128];
    let mut buf = [0u8; 2048];
    let (mut grouped, mut direct) = (Vec::new(), Vec::new());
    for i in 0..2 * echoes {
        let t0 = Instant::now();
        if i % 2 == 0 {
            group.send_to(&payload, to).expect("send");
            group.recv(&mut buf).expect("recv");
            grouped.push(t0.elapsed().as_secs_f64() * 1e6);
        } else {
            connected.send(&payload).expect("send");
            connected.recv(&mut buf).expect("recv");
            direct.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        std::thread::sleep(interval);
    }
    for (name, mut t) in [("grouped", grouped), ("connected", direct)] {
        t.sort_by(f64::total_cmp);
        let avg = t.iter().sum::<f64>() / t.len() as f64;
        println!(
            "round {round} {name:<9} min {:6.1}  median {:6.1}  avg {:6.1}  p99 {:6.1} µs",
            t[0],
            t[t.len() / 2],
            avg,
            t[t.len() * 99 / 100]
        );
    }
}
