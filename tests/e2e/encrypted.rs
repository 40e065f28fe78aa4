//! Encrypted clusters (the default): three meshd nodes speaking WireGuard reach every pod from
//! every pod (ICMP) and carry SHA-256-checked TCP transfers; a capture of the underlay during a
//! transfer of a known pattern never contains the pattern, while the same capture on a
//! cleartext cluster does (so the capture is known to work).
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, WireGuard on 51820; tcpdump on u0) ── meshbr0 ── p1, p2
//!            ├─ h2 (meshd) ── meshbr0 ── p1, p2
//!            └─ h3 (meshd) ── meshbr0 ── p1, p2
//! ```

use super::cluster::{assert_transfer, spec, unreachable_pairs};
use crate::support::capture::Capture;
use crate::support::{require_root, status};
use meshd::config::Encryption;
use meshd_lab::netns::in_netns;
use meshd_lab::{HostKind, Spec, Topology};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// An encrypted lab (keys and cluster secret made by the lab).
pub fn encrypted_spec(tag: &str, hosts: Vec<HostKind>) -> Spec {
    Spec {
        encryption: Encryption::Wireguard,
        ..spec(tag, hosts, &[])
    }
}

#[test]
fn three_node_encrypted_cluster() {
    require_root();
    let t = Topology::up(encrypted_spec("wg3", vec![HostKind::Meshd; 3])).unwrap();
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    assert_transfer(&t, 0, 1, 5401);
    assert_transfer(&t, 2, 0, 5402);
    let s = status(&t, 0);
    assert!(s.encryption.starts_with("wireguard"), "{s:?}");
    assert_eq!(s.mtu, 1420);
    assert!(s.public_key.is_some());
    for p in &s.peers {
        let wg = p.wireguard.as_ref().expect("a WireGuard session per peer");
        assert!(wg.handshakes >= 1, "{p:?}");
        assert!(wg.last_handshake_secs.is_some(), "{p:?}");
        assert_eq!(wg.decrypt_failures, 0, "{p:?}");
        assert!(p.stats.drops.is_empty(), "{p:?}");
        assert_eq!(p.endpoint.rsplit(':').next(), Some("51820"));
    }
    let h2 = s.peers.iter().find(|p| p.name == t.hosts[1].name).unwrap();
    assert!(h2.stats.tx_bytes >= 32 << 20, "{h2:?}");
}

const CANARY: &[u8] = b"MESHD-CANARY-plaintext-that-must-never-cross-the-underlay-in-clear";

/// What each canary datagram carries: the canary, repeated.
fn canary_payload() -> Vec<u8> {
    let mut payload = CANARY.repeat(10);
    payload.truncate(1000);
    payload
}

/// Sends the canary in 60 UDP datagrams from pod `from` to pod `to` and returns how many
/// arrived (so the test knows they crossed the tunnel while it was captured). Sixty, because
/// the receiver reads only afterwards and its default socket buffer must hold them all.
fn send_canaries(t: &Topology, from: (usize, usize), to: (usize, usize), port: u16) -> usize {
    let (a, b) = (&t.hosts[from.0].pods[from.1], &t.hosts[to.0].pods[to.1]);
    let dst = SocketAddr::from((b.addr, port));
    let rx = in_netns(&b.ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    })
    .unwrap();
    in_netns(&a.ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let payload = canary_payload();
        for _ in 0..60 {
            s.send_to(&payload, dst).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while let Ok(n) = rx.recv(&mut buf) {
        if buf[..n].windows(CANARY.len()).any(|w| w == CANARY) {
            got += 1;
        }
    }
    got
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn capture_during_canaries(t: &Topology) -> (Vec<u8>, usize) {
    // Sessions (or neighbours) first, so no canary waits behind a handshake.
    meshd_lab::probe::ping(&t.hosts[1].pods[0].ns, t.hosts[0].pods[0].addr, 5).unwrap();
    let cap = Capture::start(&t.hosts[0].ns, &format!("{}-u0", t.spec.prefix), "udp");
    let arrived = send_canaries(t, (1, 0), (0, 0), 5501);
    // Each canary that arrived crossed h1's u0 in a datagram at least as long as its payload:
    // the capture is complete once it holds that many bytes.
    let pcap = cap.finish_when(|p| p.len() >= arrived * canary_payload().len());
    (pcap, arrived)
}

#[test]
fn the_underlay_never_sees_plaintext() {
    require_root();
    let t = Topology::up(encrypted_spec("wgcap", vec![HostKind::Meshd; 2])).unwrap();
    let (pcap, arrived) = capture_during_canaries(&t);
    assert!(
        arrived >= 55,
        "only {arrived} of 60 canaries crossed the tunnel"
    );
    assert!(
        pcap.len() > 20 * 1000,
        // GSO/GRO may merge datagrams on the veth, so not every one shows as a frame of its own.
        "the capture missed the traffic ({} bytes)",
        pcap.len()
    );
    assert!(
        !contains(&pcap, CANARY),
        "plaintext crossed the underlay of an encrypted cluster"
    );
    drop(t);

    // The same capture of a cleartext cluster finds the pattern: the check above can fail.
    let t = Topology::up(spec("wgclr", vec![HostKind::Meshd; 2], &[])).unwrap();
    let (pcap, arrived) = capture_during_canaries(&t);
    assert!(arrived >= 55, "only {arrived} of 60 canaries crossed");
    assert!(
        contains(&pcap, CANARY),
        "the capture does not work: no plaintext on a cleartext underlay"
    );
}
