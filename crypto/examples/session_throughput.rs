//! Single-core throughput of the per-packet calls, to set expectations for the data path:
//! `Session::encapsulate` and `decapsulate` of 1420-byte packets on an established session, and
//! `GossipSealer::seal`/`open` of 1200-byte messages. Run with
//! `cargo run --release -p meshd-crypto --example session_throughput`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant, SystemTime};

use meshd_crypto::{
    Action, ClusterSecret, GossipSealer, Keyring, PrivateKey, RateLimiter, SealerConfig, Session,
};

const PACKET: usize = 1420;
const ROUNDS: usize = 200_000;

fn main() {
    let (mut a, mut b) = established_pair();
    let mut packet = vec![0u8; PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    let (mut wire, mut inner) = (vec![0u8; 2048], vec![0u8; 2048]);

    let mut wire_len = 0;
    let enc = time(|| {
        for _ in 0..ROUNDS {
            match a.encapsulate(&packet, &mut wire) {
                Action::WriteToNetwork(n) => wire_len = n,
                other => panic!("{other:?}"),
            }
        }
    });
    // Decapsulation needs datagrams with fresh counters (replays are refused): encrypt them
    // first, untimed.
    let mut batch = Vec::with_capacity(ROUNDS / 2);
    for _ in 0..ROUNDS / 2 {
        let Action::WriteToNetwork(n) = a.encapsulate(&packet, &mut wire) else {
            panic!()
        };
        batch.push(wire[..n].to_vec());
    }
    let dec = time(|| {
        for d in &batch {
            assert!(matches!(
                b.decapsulate(None, d, &mut inner),
                Action::WriteToTunnelV4(..)
            ));
        }
    });
    report("encapsulate", enc, ROUNDS, PACKET, wire_len);
    report("decapsulate", dec, batch.len(), PACKET, wire_len);

    let ring = Keyring::single(ClusterSecret::generate());
    let mut tx = GossipSealer::new(&ring, SealerConfig::default());
    let mut rx = GossipSealer::new(&ring, SealerConfig::default());
    let now = SystemTime::now();
    let msg = vec![7u8; 1200];
    let n = 20_000;
    let seal_open = time(|| {
        for _ in 0..n {
            let len = tx.seal(&msg, &mut wire, now).unwrap();
            rx.open(&wire[..len], &mut inner, now).unwrap();
        }
    });
    report("seal+open", seal_open, n, msg.len(), msg.len() + 48);
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn report(what: &str, took: Duration, count: usize, payload: usize, wire: usize) {
    let per = took / count as u32;
    let gbps = (count * payload * 8) as f64 / took.as_secs_f64() / 1e9;
    println!("{what:>12}: {count} x {payload} B ({wire} B on the wire): {per:?} each, {gbps:.2} Gbit/s of payload");
}

fn established_pair() -> (Session, Session) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let la = RateLimiter::new(&ka.public_key(), 100);
    let lb = RateLimiter::new(&kb.public_key(), 100);
    let mut a = Session::new(&ka, 1, kb.public_key(), [5; 32], &la).unwrap();
    let mut b = Session::new(&kb, 2, ka.public_key(), [5; 32], &lb).unwrap();
    let mut out = vec![0u8; 2048];
    let Action::WriteToNetwork(n) = a.encapsulate(&[], &mut out) else {
        panic!()
    };
    let init = out[..n].to_vec();
    let Action::WriteToNetwork(n) = b.decapsulate(None, &init, &mut out) else {
        panic!()
    };
    let resp = out[..n].to_vec();
    let Action::WriteToNetwork(n) = a.decapsulate(None, &resp, &mut out) else {
        panic!()
    };
    let keepalive = out[..n].to_vec();
    b.decapsulate(None, &keepalive, &mut out);
    (a, b)
}
