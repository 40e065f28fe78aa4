//! One flow's packets leave a node in the order they entered it, whichever of the node's
//! workers sends them. A queue's TX worker and, while it sleeps, its RX worker (which sends the
//! answers its own TUN writes produce at once, see `meshd/src/datapath/worker.rs`) both read
//! that TUN queue; the queue's TX lock keeps them from overtaking each other.
//!
//! ```text
//!   h1 pod: seq sender ──▶ 1, 2, 3, … ─────────────▶ h2 pod: receiver checks 1 < 2 < 3 …
//!   h1 pod: echo server ◀── load ── h2 pod, echoed back: h1's RX worker writes, and sends
//! ```
//!
//! One TUN queue (`--no-multi-queue`), so the echoes and the sequenced flow share the queue the
//! RX worker hands off on.

use super::cluster::spec;
use crate::support::require_root;
use meshd::config::Encryption;
use meshd_lab::netns::in_netns;
use meshd_lab::probe::ping;
use meshd_lab::{HostKind, Topology};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEQ_PORT: u16 = 6101;
const ECHO_PORT: u16 = 6102;
const SINK_PORT: u16 = 6103;
const DATAGRAMS: u32 = 20_000;

fn udp_in(ns: &str, port: u16) -> UdpSocket {
    in_netns(ns, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap()
}

fn one_flow_keeps_its_order(tag: &str, encryption: Encryption) {
    require_root();
    let mut s = spec(
        tag,
        vec![HostKind::Meshd, HostKind::Meshd],
        &["--no-multi-queue"],
    );
    s.pods_per_host = 1;
    s.encryption = encryption;
    let t = Topology::up(s).unwrap();
    let (a, b) = (t.hosts[0].pods[0].clone(), t.hosts[1].pods[0].clone());
    // Sessions up first: packets held behind a handshake are not what this test is about.
    ping(&a.ns, b.addr, 10).unwrap();
    ping(&b.ns, a.addr, 10).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // h1's pod echoes whatever comes; h2's pod loads it and drains the echoes.
    let echo = udp_in(&a.ns, ECHO_PORT);
    echo.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let st = stop.clone();
    let echoer = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut echoed = 0u64;
        while !st.load(Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                echoed += u64::from(echo.send_to(&buf[..n], from).is_ok());
            }
        }
        echoed
    });
    let load = udp_in(&b.ns, SINK_PORT);
    load.set_nonblocking(true).unwrap();
    let st = stop.clone();
    let to_echo = SocketAddr::from((a.addr, ECHO_PORT));
    let loader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut back = 0u64;
        while !st.load(Ordering::Relaxed) {
            let _ = load.send_to(&[7u8; 200], to_echo);
            while load.recv_from(&mut buf).is_ok() {
                back += 1;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        back
    });

    // The sequenced flow, h1's pod to h2's pod.
    let rx = udp_in(&b.ns, SEQ_PORT);
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut seen = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            if n >= 4 {
                seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            if seen.last() == Some(&(DATAGRAMS - 1)) {
                break;
            }
        }
        seen
    });
    let tx = in_netns(&a.ns, || UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    let to = SocketAddr::from((b.addr, SEQ_PORT));
    let mut payload = [0u8; 1000];
    let started = Instant::now();
    for seq in 0..DATAGRAMS {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        // A full queue (ENOBUFS) loses a datagram, which is fine: only order is checked.
        let _ = tx.send_to(&payload, to);
        if seq % 16 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let seen = receiver.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let echoed = echoer.join().unwrap();
    let back = loader.join().unwrap();

    let out_of_order: Vec<_> = seen.windows(2).filter(|w| w[1] <= w[0]).take(10).collect();
    assert!(
        out_of_order.is_empty(),
        "{} → {}: datagrams of one flow overtook each other ({} received in {:?}): {out_of_order:?}",
        a.addr,
        b.addr,
        seen.len(),
        started.elapsed()
    );
    assert!(
        seen.len() as u32 > DATAGRAMS / 10,
        "too few datagrams arrived to judge the order: {} of {DATAGRAMS}",
        seen.len()
    );
    // The reverse load ran meanwhile: h1's RX worker wrote it and its echoes left h1.
    assert!(echoed > 100 && back > 100, "echoed {echoed}, back {back}");
}

#[test]
fn one_udp_flow_leaves_in_order_cleartext() {
    one_flow_keeps_its_order("ordc", Encryption::None);
}

#[test]
fn one_udp_flow_leaves_in_order_wireguard() {
    one_flow_keeps_its_order("ordw", Encryption::Wireguard);
}
