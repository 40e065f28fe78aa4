//! What a node refuses directly it refuses through a relay (issue 22), in the NAT lab where
//! a1↔b1 has no direct path and goes through a public member's per-pair relay port. Each
//! case is staged for real and seen to arrive (a capture, or a counter of the receiver's)
//! before its refusal is asserted, and a pod never gets what was refused:
//!
//! - a stranger on the "internet" sends to the pair's relay port: refused and counted by the
//!   port, nothing forwarded;
//! - a data datagram b1 sent, captured and sent again, once through the relay port (from b1's
//!   own source port, so b1's NAT maps it as it maps b1's) and once straight to a1 (from the
//!   relay port's address, as the relay would): a1 refuses both as replays;
//! - the relay, which holds its own keys but not b1's, forges data on b1's session to a1:
//!   it does not decrypt;
//! - b1 sends a packet whose inner source is in a2's subnet: a1 drops it as spoofed;
//! - a flood of handshake initiations through the relay port: a1 answers it with cookies, as
//!   it does directly, and the pair's traffic keeps flowing;
//! - b1 restarted with another cluster secret: its gossip does not open, it is no member, the
//!   relay closes the pair's port and nothing passes.
//!
//! ```text
//!   sw ("internet") ─┬─ pub1, pub2 (one relays a1↔b1: captures and raw sends there)
//!                    ├─ x (stranger, 198.18.0.200)
//!                    ├─ router-a ── a1 (the victim; captures on u0 and in its pod)
//!                    └─ router-b ── b1 (raw sends from its meshd's port; the spoofer)
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshd::status::Status;
use meshd_lab::netns::in_netns;
use meshd_lab::probe::{ping, tcp_transfer};
use meshd_lab::Topology;

use crate::nat::{pod, reach, reach_of, role, A1, A2, B1, PUB1};
use crate::relay::{is_wireguard, relayed_lab};
use crate::support::capture::{udp_datagrams, Capture};
use crate::support::{
    add_stranger, drops, meshd_pid, require_root, status, wait_for, wait_within, RawUdp, SETTLE,
};
use crate::wg_security::{stranger_initiation, with_another_secret};

/// The port a1's pod listens on for what b1's side sends it.
const POD_PORT: u16 = 7777;

/// The lab, the relay in use for a1↔b1 and the pair's port on it.
struct Relayed {
    t: Topology,
    relay: usize,
    port: u16,
}

impl Relayed {
    fn port_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.t.hosts[self.relay].underlay, self.port)
    }

    /// The relay's record of the pair.
    fn pair(&self, s: &Status) -> Option<meshd::status::reach::RelayPairStatus> {
        let (a1, b1) = (&self.t.hosts[A1].name, &self.t.hosts[B1].name);
        s.relaying
            .iter()
            .find(|r| (&r.a == a1 && &r.b == b1) || (&r.a == b1 && &r.b == a1))
            .cloned()
    }

    /// Where the relay receives a1's datagrams from (router-a's mapping of a1's port).
    fn a1_mapping(&self) -> SocketAddrV4 {
        self.mapping(A1)
    }

    /// Where the relay receives host `i`'s datagrams from (its NAT's mapping), once learnt.
    fn mapping(&self, i: usize) -> SocketAddrV4 {
        let name = &self.t.hosts[i].name;
        let from = |p: &meshd::status::reach::RelayPairStatus| {
            if &p.a == name {
                p.a_from.clone()
            } else {
                p.b_from.clone()
            }
        };
        let s = wait_for(
            &self.t,
            self.relay,
            "the relay learnt the side's port",
            |s| self.pair(s).is_some_and(|p| from(&p).is_some()),
        );
        from(&self.pair(&s).unwrap()).unwrap().parse().unwrap()
    }

    fn refused(&self) -> u64 {
        self.pair(&status(&self.t, self.relay))
            .map_or(0, |p| p.refused)
    }
}

/// A UDP socket in a1's pod, on [`POD_PORT`].
fn a1_listener(t: &Topology) -> UdpSocket {
    let (ns, addr) = pod(t, A1);
    let s = in_netns(&ns, move || UdpSocket::bind((addr, POD_PORT)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(SETTLE)).unwrap();
    s
}

/// Sends each of `texts` from b1's pod to a1's pod's listener.
fn send_from_b1_pod(t: &Topology, texts: &[&str]) {
    let ((ns, _), (_, to)) = (pod(t, B1), pod(t, A1));
    let texts: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    in_netns(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for text in texts {
            s.send_to(text.as_bytes(), (to, POD_PORT)).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .unwrap();
}

/// What the listener receives until `last` (fails after [`SETTLE`]).
fn receive_until(l: &UdpSocket, last: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.last().is_none_or(|g| g != last) {
        let (n, _) = l
            .recv_from(&mut buf)
            .expect("the pod receives the genuine ones");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
fn what_is_refused_directly_is_refused_through_a_relay() {
    require_root();
    let (t, relay) = relayed_lab("rref");
    let endpoint = reach_of(&status(&t, A1), &t, B1).endpoint;
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    println!("a1↔b1 relayed via {} port {port}", role(&t, relay));
    let r = Relayed { t, relay, port };
    stranger(&r);
    let b1_data = replays(&r);
    relay_forges_b1(&r, &b1_data);
    intruder_at_b1s_nat(&r, &b1_data.1);
    spoofed_inner_source(&r);
    handshake_flood(&r, b1_data.0);
    wrong_cluster_secret(&r);
}

/// A stranger's WireGuard-shaped datagrams and initiations to the pair's port.
fn stranger(r: &Relayed) {
    let x = add_stranger(&r.t);
    let mut sent: Vec<Vec<u8>> = (0..5u8)
        .map(|n| [&[4u8, 0, 0, 0][..], b"stranger", &[n; 56]].concat())
        .collect();
    sent.push(stranger_initiation(r.t.hosts[A1].public_key.unwrap()));
    let relay_ns = &r.t.hosts[r.relay].ns;
    let cap = Capture::start(
        relay_ns,
        &format!("{}-strg", r.t.spec.prefix),
        &format!("udp port {}", r.port),
    );
    let before = r.refused();
    let (to, datagrams) = (r.port_addr(), sent.clone());
    in_netns(&x, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in &datagrams {
            s.send_to(d, to).unwrap();
        }
    })
    .unwrap();
    let n = sent.len() as u64;
    wait_for(&r.t, r.relay, "the stranger's datagrams refused", |s| {
        r.pair(s).is_some_and(|p| p.refused >= before + n)
    });
    let from_x = |pcap: &[u8]| {
        udp_datagrams(pcap)
            .into_iter()
            .filter(|(from, _, d)| from.ip() == IpAddr::from([198, 18, 0, 200]) && sent.contains(d))
            .count()
    };
    let pcap = cap.finish_when(|p| from_x(p) == sent.len());
    assert_eq!(
        from_x(&pcap),
        sent.len(),
        "the stranger's datagrams reached the port"
    );
    let forwarded: Vec<_> = udp_datagrams(&pcap)
        .into_iter()
        .filter(|(from, _, d)| from.port() == r.port && sent.contains(d))
        .collect();
    assert!(forwarded.is_empty(), "the port forwarded: {forwarded:?}");
}

/// Captures data datagrams b1 sends to the relay port while b1's pod sends a1's pod three
/// marked datagrams (received: the originals), sends them again through the relay port and
/// straight to a1, and checks a1 refused each as a replay. b1's source (before its NAT) and
/// the datagrams.
fn replays(r: &Relayed) -> (SocketAddrV4, Vec<Vec<u8>>) {
    let t = &r.t;
    let listener = a1_listener(t);
    let filter = format!(
        "udp and dst host {} and dst port {}",
        r.port_addr().ip(),
        r.port
    );
    let cap = Capture::start(&t.hosts[B1].ns, &format!("{}-b1", t.spec.prefix), &filter);
    send_from_b1_pod(t, &["replay-1", "replay-2", "replay-3"]);
    assert_eq!(
        receive_until(&listener, "replay-3").len(),
        3,
        "the originals"
    );
    let data = |pcap: &[u8]| -> Vec<(SocketAddr, Vec<u8>)> {
        udp_datagrams(pcap)
            .into_iter()
            .filter(|(_, _, d)| is_wireguard(d) && d[0] == 4 && d.len() > 32)
            .map(|(from, _, d)| (from, d))
            .collect()
    };
    let pcap = cap.finish_when(|p| data(p).len() >= 3);
    let captured = data(&pcap);
    assert!(captured.len() >= 3, "captured b1's data: {captured:?}");
    let b1_src: SocketAddrV4 = captured[0].0.to_string().parse().unwrap();
    let replayed: Vec<Vec<u8>> = captured.into_iter().take(3).map(|(_, d)| d).collect();
    let b1 = t.hosts[B1].name.clone();
    let before = drops(&status(t, A1), Some(&b1), "replayed");
    // On a1's underlay: each replay arrives (from the relay port) once per way sent.
    let on_a1 = Capture::start(
        &t.hosts[A1].ns,
        &format!("{}-a1", t.spec.prefix),
        &format!("udp and src port {}", r.port),
    );
    let a1_map = r.a1_mapping();
    let from_b1 = RawUdp::open(&t.hosts[B1].ns);
    let from_relay = RawUdp::open(&t.hosts[r.relay].ns);
    for d in &replayed {
        from_b1.send(b1_src, r.port_addr(), d);
        from_relay.send(r.port_addr(), a1_map, d);
    }
    let n = replayed.len();
    let arrived = |pcap: &[u8]| {
        udp_datagrams(pcap)
            .iter()
            .filter(|(_, _, d)| replayed.contains(d))
            .count()
    };
    let pcap = on_a1.finish_when(|p| arrived(p) >= 2 * n);
    assert_eq!(arrived(&pcap), 2 * n, "the replays reached a1 both ways");
    wait_for(t, A1, "a1 refused the replays", |s| {
        drops(s, Some(&b1), "replayed") >= before + 2 * n as u64
    });
    send_from_b1_pod(t, &["after-replays"]);
    let got = receive_until(&listener, "after-replays");
    assert_eq!(got, ["after-replays"], "a1's pod got replays");
    (b1_src, replayed)
}

/// Someone forging router-b's address (a host behind the same NAT would look the same) sends
/// b1's captured data to the relay port from another port, after more than the silence that
/// once let another port of a side's address take over: refused (a side's port is learnt only
/// from a handshake made for the other side), b1's port unchanged, the pair still talks.
fn intruder_at_b1s_nat(r: &Relayed, b1_data: &[Vec<u8>]) {
    let t = &r.t;
    let b1_map = r.mapping(B1);
    std::thread::sleep(Duration::from_secs(6));
    // The stranger's namespace on the "internet" switch (made by `stranger`).
    let x = format!("{}-x", t.spec.prefix);
    let forged = SocketAddrV4::new(*b1_map.ip(), b1_map.port().wrapping_add(7).max(1024));
    let before = r.refused();
    let raw = RawUdp::open(&x);
    for d in b1_data {
        raw.send(forged, r.port_addr(), d);
    }
    let n = b1_data.len() as u64;
    wait_for(t, r.relay, "the intruder's datagrams refused", |s| {
        r.pair(s).is_some_and(|p| p.refused >= before + n)
    });
    assert_eq!(
        r.mapping(B1),
        b1_map,
        "the intruder took b1's place at the port"
    );
    reach(t, A1, B1);
    reach(t, B1, A1);
}

/// The relay forges data on b1's session (the receiver index a1 gave b1, a fresh counter, a
/// ciphertext of its own) and sends it to a1 from the pair's port.
fn relay_forges_b1(r: &Relayed, (_, b1_data): &(SocketAddrV4, Vec<Vec<u8>>)) {
    let t = &r.t;
    let b1 = t.hosts[B1].name.clone();
    let wg = |s: &Status| {
        let p = s.peers.iter().find(|p| p.name == b1).unwrap();
        p.wireguard.clone().unwrap()
    };
    let before = wg(&status(t, A1)).decrypt_failures;
    let forged: Vec<Vec<u8>> = (0..3u64)
        .map(|n| {
            let counter = u64::from_le_bytes(b1_data[0][8..16].try_into().unwrap()) + 100_000 + n;
            [&b1_data[0][0..8], &counter.to_le_bytes()[..], &[0x5a; 64]].concat()
        })
        .collect();
    let on_a1 = Capture::start(
        &t.hosts[A1].ns,
        &format!("{}-frg", t.spec.prefix),
        &format!("udp and src port {}", r.port),
    );
    let (a1_map, raw) = (r.a1_mapping(), RawUdp::open(&t.hosts[r.relay].ns));
    for d in &forged {
        raw.send(r.port_addr(), a1_map, d);
    }
    let arrived = |p: &[u8]| {
        let got = udp_datagrams(p);
        got.iter().filter(|(_, _, d)| forged.contains(d)).count()
    };
    let pcap = on_a1.finish_when(|p| arrived(p) == forged.len());
    assert_eq!(arrived(&pcap), forged.len(), "the forgeries reached a1");
    let s = wait_for(t, A1, "a1 refused the relay's forgeries", |s| {
        wg(s).decrypt_failures >= before + forged.len() as u64
    });
    assert!(drops(&s, Some(&b1), "decrypt-failed") >= forged.len() as u64);
    reach(t, A1, B1);
}

/// b1's node sends a1's pod a packet from an address of a2's subnet (written into b1's
/// routing as a local raw packet: b1's meshd takes it from its TUN device and sends it
/// through the relay, encrypted).
fn spoofed_inner_source(r: &Relayed) {
    let t = &r.t;
    let listener = a1_listener(t);
    let b1 = t.hosts[B1].name.clone();
    let before = drops(&status(t, A1), Some(&b1), "spoofed-source");
    let forged_src = Ipv4Addr::from(u32::from(t.hosts[A2].subnet.network()) + 77);
    let to = SocketAddrV4::new(pod(t, A1).1, POD_PORT);
    let raw = RawUdp::open(&t.hosts[B1].ns);
    for _ in 0..3 {
        raw.send(SocketAddrV4::new(forged_src, 4000), to, b"spoofed");
    }
    wait_for(t, A1, "a1 dropped b1's spoofed packets", |s| {
        drops(s, Some(&b1), "spoofed-source") >= before + 3
    });
    send_from_b1_pod(t, &["after-spoofed"]);
    assert_eq!(
        receive_until(&listener, "after-spoofed"),
        ["after-spoofed"],
        "a1's pod got a spoofed packet"
    );
}

/// About 2,000 initiations a second (twenty times the limit) from a key nobody knows, through the relay port from
/// b1's source port (so the port forwards them); the pair carries a checksummed transfer
/// meanwhile.
fn handshake_flood(r: &Relayed, b1_src: SocketAddrV4) {
    let t = &r.t;
    let pid = meshd_pid(t, A1);
    let s = status(t, A1);
    let (cookies_before, rejected_before) =
        (s.cookie_replies_sent, drops(&s, None, "handshake-rejected"));
    let stop = Arc::new(AtomicBool::new(false));
    let init = stranger_initiation(t.hosts[A1].public_key.unwrap());
    let (raw, to) = (RawUdp::open(&t.hosts[B1].ns), r.port_addr());
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..2 {
                    raw.send(b1_src, to, &init);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    wait_for(t, A1, "a1 answers the relayed flood with cookies", |s| {
        s.cookie_replies_sent > cookies_before
    });
    let ((a_ns, a_addr), (b_ns, b_addr)) = (pod(t, A1), pod(t, B1));
    let pinged = ping(&b_ns, a_addr, 5);
    let sent = tcp_transfer(&a_ns, &b_ns, b_addr, 5801, 8 << 20);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(sent.unwrap().verified, "the transfer under a flood");
    pinged.unwrap();
    assert_eq!(meshd_pid(t, A1), pid, "a1's meshd restarted");
    // What the limiter let through was refused: a key that is no peer's.
    let s = status(t, A1);
    assert!(
        drops(&s, None, "handshake-rejected") > rejected_before,
        "{:?}",
        s.unattributed
    );
}

/// b1 restarted with another cluster secret (same name, same key).
fn wrong_cluster_secret(r: &Relayed) {
    let t = &r.t;
    let open_failures = |s: &Status| s.gossip.as_ref().map_or(0, |g| g.open_failures);
    let before = open_failures(&status(t, PUB1));
    t.restart_meshd(B1, &with_another_secret(t, B1)).unwrap();
    // Its gossip reaches the seed, and does not open there.
    wait_for(t, PUB1, "the seed counts b1's unopened gossip", |s| {
        open_failures(s) >= before + 3
    });
    let b1 = t.hosts[B1].name.clone();
    for i in [A1, r.relay] {
        wait_for(t, i, "b1 is no live member", |s| {
            let m = s.members.clone().unwrap_or_default();
            !m.iter().any(|m| m.name == b1 && m.state == "alive")
        });
    }
    // The relay closes the pair's port (it lingers a while first).
    wait_within("the relay closed a1↔b1's port", 3 * SETTLE, || {
        let s = status(t, r.relay);
        r.pair(&s).map_or(Ok(()), |p| Err(Box::new(p)))
    });
    let s = status(t, B1);
    let members = s.members.clone().unwrap_or_default();
    assert!(
        members.iter().all(|m| m.state != "alive"),
        "b1 with another secret has live members: {members:#?}"
    );
    let ((a_ns, a_addr), (b_ns, b_addr)) = (pod(t, A1), pod(t, B1));
    assert!(ping(&b_ns, a_addr, 3).is_err(), "b1's pod reached a1's");
    assert!(ping(&a_ns, b_addr, 3).is_err(), "a1's pod reached b1's");
}
