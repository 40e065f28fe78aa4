//! An encrypted cluster under attack: a node with the wrong cluster secret, a stranger's key,
//! a replayed data datagram, a flood of handshake initiations and garbage on port 51820. Each
//! is refused and counted, and the established sessions keep carrying traffic.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, target; tcpdump on u0 for the replay)
//!            ├─ h2 (meshd)
//!            ├─ h3 (meshd, restarted with another cluster secret)      [first test only]
//!            └─ x  (stranger, 198.18.0.200: crafted WireGuard datagrams) [second test only]
//! ```

use super::encrypted::encrypted_spec;
use crate::support::capture::{frames, udp_payloads, Capture};
use crate::support::{add_stranger, drops, require_root, status, wait_for};
use meshd_crypto::{Action, PrivateKey, PublicKey, RateLimiter, Session};
use meshd_lab::netns::in_netns;
use meshd_lab::probe::{ping, tcp_transfer};
use meshd_lab::{HostKind, Topology};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const H1: &str = "198.18.0.1:51820";

#[test]
fn a_node_with_the_wrong_cluster_secret_gets_nothing_through() {
    require_root();
    let t = Topology::up(encrypted_spec("wgsec", vec![HostKind::Meshd; 3])).unwrap();
    let h3 = &t.hosts[2];
    t.restart_meshd(2, &with_another_secret(&t, 2)).unwrap();

    let (p1, p2, p3) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0], &h3.pods[0]);
    assert!(ping(&p1.ns, p3.addr, 3).is_err(), "h1 reached h3's pod");
    assert!(ping(&p3.ns, p2.addr, 3).is_err(), "h3 reached h2's pod");
    // h1 initiated; h3's response, keyed with another preshared key, failed to authenticate.
    let s = wait_for(&t, 0, "h1 did not count h3's rejected handshake", |s| {
        drops(s, Some(&h3.name), "handshake-rejected") > 0
    });
    let wg = s
        .peers
        .iter()
        .find(|p| p.name == h3.name)
        .and_then(|p| p.wireguard.clone())
        .unwrap();
    assert!(wg.handshake_failures > 0, "{wg:?}");
    assert_eq!(wg.last_handshake_secs, None, "a session with h3 exists");
    let rx = s
        .peers
        .iter()
        .find(|p| p.name == h3.name)
        .unwrap()
        .stats
        .rx_packets;
    assert_eq!(rx, 0, "h1 delivered packets from h3");
    // And h3 counted h2's responses the same way.
    wait_for(&t, 2, "h3 did not count h2's rejected handshake", |s| {
        drops(s, Some(&t.hosts[1].name), "handshake-rejected") > 0
    });
    // The nodes that share the secret still talk.
    ping(&p1.ns, p2.addr, 5).unwrap();
    ping(&p2.ns, p1.addr, 5).unwrap();
}

/// Host `i`'s meshd config with another cluster secret (a new one, written beside it).
pub(crate) fn with_another_secret(t: &Topology, i: usize) -> String {
    let h = &t.hosts[i];
    let other = h.dir.join("other.secret");
    meshd_crypto::ClusterSecret::generate()
        .write_new_file(&other)
        .unwrap();
    let lab_secret = meshd_lab::wireguard::host_secret_path(h);
    let config = t.meshd_config(h).replace(
        &lab_secret.display().to_string(),
        &other.display().to_string(),
    );
    assert!(config.contains("other.secret"));
    config
}

/// A handshake initiation to `to` from a key no node knows.
pub(crate) fn stranger_initiation(to: PublicKey) -> Vec<u8> {
    let key = PrivateKey::generate();
    let limiter = RateLimiter::new(&key.public_key(), 100);
    let mut s = Session::new(&key, 1, to, [7; 32], &limiter).unwrap();
    let mut out = vec![0u8; 256];
    let action = s.encapsulate(&[], &mut out);
    let Action::WriteToNetwork(n) = action else {
        unreachable!("expected an initiation, got {action:?}")
    };
    out[..n].to_vec()
}

/// Sends `datagrams` to h1 from namespace `ns`; returns the datagrams that came back within
/// `listen`.
fn send_and_listen(ns: &str, datagrams: Vec<Vec<u8>>, listen: Duration) -> Vec<Vec<u8>> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in &datagrams {
            s.send_to(d, H1).unwrap();
        }
        s.set_read_timeout(Some(listen)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    })
    .unwrap()
}

/// Captures a few data datagrams h2 sends to h1 while h2's pod pings h1's pod.
fn capture_data_from_h2(t: &Topology) -> Vec<Vec<u8>> {
    let cap = Capture::start(
        &t.hosts[0].ns,
        &format!("{}-replay", t.spec.prefix),
        "udp dst port 51820 and src host 198.18.0.2 and greater 120",
    );
    for _ in 0..6 {
        let _ = ping(&t.hosts[1].pods[0].ns, t.hosts[0].pods[0].addr, 1);
    }
    let pcap = cap.finish_when(|p| frames(p).len() >= 4);
    udp_payloads(&pcap)
        .into_iter()
        .take(4)
        .filter(|p| p.first() == Some(&4))
        .collect()
}

#[test]
fn strangers_replays_floods_and_garbage_are_refused_and_counted() {
    require_root();
    let t = Topology::up(encrypted_spec("wgatk", vec![HostKind::Meshd; 2])).unwrap();
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let x = add_stranger(&t);
    let h1_key = h1.public_key.unwrap();
    // An established session first.
    ping(&h2.pods[0].ns, h1.pods[0].addr, 5).unwrap();

    // A key h1 does not know: no answer, counted.
    let replies = send_and_listen(
        &x,
        vec![stranger_initiation(h1_key)],
        Duration::from_secs(1),
    );
    assert!(replies.is_empty(), "h1 answered a stranger: {replies:?}");
    wait_for(&t, 0, "the stranger's initiation was not counted", |s| {
        drops(s, None, "handshake-rejected") >= 1
    });

    // A captured data datagram, sent again, is not delivered.
    let captured = capture_data_from_h2(&t);
    assert!(!captured.is_empty(), "captured no data datagram from h2");
    let before = drops(&status(&t, 0), Some(&h2.name), "replayed");
    send_and_listen(&h2.ns, captured.clone(), Duration::from_millis(100));
    send_and_listen(&x, captured.clone(), Duration::from_millis(100));
    let n = captured.len() as u64;
    wait_for(&t, 0, "replays were not counted", |s| {
        drops(s, Some(&h2.name), "replayed") >= before + 2 * n
    });

    // Garbage: empty, truncated, unknown type, wrong length, unknown receiver index.
    let mut unknown_index = vec![0u8; 64];
    unknown_index[0] = 4;
    unknown_index[4..8].copy_from_slice(&0xdead_be00u32.to_le_bytes());
    let mut bad_type = vec![0x5au8; 100];
    bad_type[0..4].copy_from_slice(&9u32.to_le_bytes());
    let mut short_init = stranger_initiation(h1_key);
    short_init.truncate(147);
    let malformed_before = drops(&status(&t, 0), None, "malformed");
    send_and_listen(
        &x,
        vec![vec![], vec![1, 0], bad_type, short_init, unknown_index],
        Duration::from_millis(100),
    );
    wait_for(&t, 0, "garbage was not counted", |s| {
        drops(s, None, "malformed") == malformed_before + 4 && drops(s, None, "unknown-index") == 1
    });

    // A flood of initiations is answered with cookie replies, and the established session
    // keeps carrying traffic meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let cookies = Arc::new(AtomicUsize::new(0));
    let init = stranger_initiation(h1_key);
    let flood = {
        let (stop, cookies) = (stop.clone(), cookies.clone());
        std::thread::spawn(move || {
            in_netns(&x, move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 256];
                // About 2,000 initiations a second: twenty times the limit of 100 (more only
                // starves the debug build's transfer on a loaded machine; the limit is the same).
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..2 {
                        let _ = s.send_to(&init, H1);
                    }
                    while let Ok(n) = s.recv(&mut buf) {
                        if n == 64 && buf[0] == 3 {
                            cookies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .unwrap()
        })
    };
    // The flood is on once h1 answers it with cookies.
    wait_for(&t, 0, "cookie replies to the flood", |s| {
        s.cookie_replies_sent > 0
    });
    let pinged = ping(&h1.pods[0].ns, h2.pods[0].addr, 5);
    let sent = tcp_transfer(
        &h2.pods[0].ns,
        &h1.pods[0].ns,
        h1.pods[0].addr,
        5701,
        8 << 20,
    );
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    assert!(
        sent.unwrap().verified,
        "the transfer under a flood was corrupted"
    );
    pinged.unwrap();
    assert!(
        cookies.load(Ordering::Relaxed) > 0,
        "no cookie replies to a flood"
    );
    let s = status(&t, 0);
    assert!(s.cookie_replies_sent > 0, "{s:#?}");
}
