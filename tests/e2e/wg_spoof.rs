//! What a stranger can make an encrypted node do: nothing beyond fixed rates. Data on receiver
//! indices nobody has, forged with a member's source address at 1,000 a second each way
//! beside a healthy session, starts no handshake (each would cost a Diffie-Hellman on both
//! nodes); initiations from fresh keys, as fast as the node's handshake limit lets them in,
//! leave at most a few entries in the ring of refused initiators.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd) ◀── "h2": forged data from h2's address (a socket in h2's namespace,
//!            │                 not meshd's), and initiations from x
//!            ├─ h2 (meshd) ◀── "h1": forged data from h1's address
//!            └─ x  (stranger, 198.18.0.200)
//! ```

use super::encrypted::encrypted_spec;
use crate::support::{add_stranger, drops, require_root, status, wait_for};
use meshd::status::{Status, WireguardStatus};
use meshd_crypto::{Action, PrivateKey, PublicKey, RateLimiter, Session};
use meshd_lab::netns::in_netns;
use meshd_lab::probe::{ping, Pinger};
use meshd_lab::{HostKind, Topology};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Forged datagrams each node receives.
const FORGED: u64 = 5_000;

/// A data message (type 4) on a receiver index no node hands out, with a counter and 48 bytes
/// that decrypt to nothing: what anyone can write with a member's source address.
fn forged_data(n: u64) -> Vec<u8> {
    let mut d = vec![0x5au8; 64];
    d[0..4].copy_from_slice(&4u32.to_le_bytes());
    d[4..8].copy_from_slice(&0x00dd_be00u32.to_le_bytes());
    d[8..16].copy_from_slice(&n.to_le_bytes());
    d
}

/// Sends [`FORGED`] of them from namespace `ns` (bound to `from`, a port meshd does not hold)
/// to `to`, 1,000 a second.
fn forge(ns: String, from: SocketAddr, to: SocketAddr) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let s = UdpSocket::bind(from).unwrap();
            let start = Instant::now();
            let mut sent = 0;
            while sent < FORGED {
                let due = (start.elapsed().as_millis() as u64 + 1).min(FORGED);
                while sent < due {
                    s.send_to(&forged_data(sent), to).unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap()
    })
}

/// The session with `peer` as a status shows it.
fn wg(s: &Status, peer: &str) -> WireguardStatus {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.wireguard.clone())
        .unwrap()
}

#[test]
fn forged_unknown_index_data_beside_a_healthy_session_starts_no_handshake() {
    require_root();
    let t = Topology::up(encrypted_spec("wgfrg", vec![HostKind::Meshd; 2])).unwrap();
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let (p1, p2) = (&h1.pods[0], &h2.pods[0]);
    // A session that has carried traffic both ways: each node authenticated the other.
    ping(&p1.ns, p2.addr, 5).unwrap();
    ping(&p2.ns, p1.addr, 5).unwrap();
    let (s1, s2) = (status(&t, 0), status(&t, 1));
    let handshakes = (wg(&s1, &h2.name).handshakes, wg(&s2, &h1.name).handshakes);
    assert!(handshakes.0 >= 1 && handshakes.1 >= 1, "{handshakes:?}");
    let unknown = (
        drops(&s1, None, "unknown-index"),
        drops(&s2, None, "unknown-index"),
    );

    let pinger = Pinger::start(&p1.ns, p2.addr, Duration::from_millis(100)).unwrap();
    let at = |h: &meshd_lab::topology::Host, port| SocketAddr::from((h.underlay, port));
    let forgers = [
        forge(h2.ns.clone(), at(h2, 0), at(h1, 51820)),
        forge(h1.ns.clone(), at(h1, 0), at(h2, 51820)),
    ];
    for f in forgers {
        f.join().unwrap();
    }
    // Every forged datagram arrived.
    let s1 = wait_for(&t, 0, "the forged datagrams were not all counted", |s| {
        drops(s, None, "unknown-index") >= unknown.0 + FORGED
    });
    let s2 = wait_for(&t, 1, "the forged datagrams were not all counted", |s| {
        drops(s, None, "unknown-index") >= unknown.1 + FORGED
    });
    let log = pinger.stop().unwrap();

    let (w1, w2) = (wg(&s1, &h2.name), wg(&s2, &h1.name));
    assert_eq!(
        (w1.handshakes, w2.handshakes),
        handshakes,
        "forged data started handshakes: {w1:?} {w2:?}"
    );
    // Each was judged a straggler next to a live session, and counted so.
    assert_eq!((w1.forced_handshakes, w2.forced_handshakes), (0, 0));
    assert!(
        w1.unknown_index_ignored >= FORGED && w2.unknown_index_ignored >= FORGED,
        "{w1:?} {w2:?}"
    );
    assert!(log.sent > 0);
    assert_eq!(
        log.lost(),
        0,
        "the session dropped pings meanwhile: {log:?}"
    );
}

/// An initiation to `to` from a fresh key.
fn initiation_from_a_fresh_key(to: PublicKey) -> Vec<u8> {
    let key = PrivateKey::generate();
    let limiter = RateLimiter::new(&key.public_key(), 100);
    let mut s = Session::new(&key, 1, to, [7; 32], &limiter).unwrap();
    let mut out = vec![0u8; 256];
    let Action::WriteToNetwork(n) = s.initiate_handshake(&mut out) else {
        unreachable!("no initiation")
    };
    out[..n].to_vec()
}

#[test]
fn refused_initiators_from_one_source_are_remembered_a_few_at_a_time() {
    require_root();
    let t = Topology::up(encrypted_spec("wgrfs", vec![HostKind::Meshd; 2])).unwrap();
    let h1 = &t.hosts[0];
    let x = add_stranger(&t);
    const KEYS: u64 = 200;
    let inits: Vec<Vec<u8>> = (0..KEYS)
        .map(|_| initiation_from_a_fresh_key(h1.public_key.unwrap()))
        .collect();
    let before = drops(&status(&t, 0), None, "handshake-rejected");
    let to = SocketAddr::from((h1.underlay, 51820));
    // 80 a second: under the node's limit of 100, so each costs h1 a Diffie-Hellman and is
    // refused as no peer's key (not answered with a cookie).
    in_netns(&x, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for chunk in inits.chunks(8) {
            for d in chunk {
                s.send_to(d, to).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .unwrap();
    let s = wait_for(&t, 0, "the initiations were not all refused", |s| {
        drops(s, None, "handshake-rejected") >= before + KEYS
    });
    // In 2.5 s one source is remembered a few times (its burst, and one per 5 s after).
    assert!(
        s.refusals_over_source_limit >= KEYS - 6,
        "{} of {KEYS} refusals over the source's limit",
        s.refusals_over_source_limit
    );
    assert_eq!(
        s.cookie_replies_sent, 0,
        "the limiter was not what held them"
    );
    ping(&t.hosts[1].pods[0].ns, h1.pods[0].addr, 5).unwrap();
}
