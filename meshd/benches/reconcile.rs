//! One reconcile pass ([`Backend::update`]) over 1,000 synthetic encrypted peers: one record
//! changed, every record changed, and new cluster secrets (every session re-keyed). This is
//! the work the gossip thread does per batch of membership events; the kernel's half runs on
//! the path manager's thread and is not in these figures.
//!
//! `cargo bench -p meshd --bench reconcile` prints the median, p90 and max of each, in µs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd::backend::Backend;
use meshd::peers::wireguard::NodeCrypto;
use meshd::peers::{Endpoint, EndpointSource, Peer, PeerKey};
use meshd::routes::{Local, Routes};
use meshd_crypto::{ClusterSecret, Keyring, PrivateKey, SecretId};

const PEERS: u32 = 1_000;
const ROUNDS: usize = 200;

fn peer(n: u32, key: meshd_crypto::PublicKey, ids: &[SecretId], port: u16) -> Peer {
    Peer {
        name: format!("node-{n:04}"),
        endpoints: vec![Endpoint {
            addr: SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], port)),
            source: EndpointSource::Gossiped,
        }],
        subnet: format!("10.{}.{}.0/24", 128 + (n >> 8), n & 0xff)
            .parse()
            .unwrap(),
        key: Some(PeerKey {
            public: key,
            secret_ids: Some(ids.to_vec()),
        }),
        kernel_vxlan: false,
    }
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what:<40} median {:>9.1} µs   p90 {:>9.1} µs   max {:>9.1} µs   ({} passes)",
        us(times[times.len() / 2]),
        us(times[times.len() * 9 / 10]),
        us(times[times.len() - 1]),
        times.len()
    );
}

fn main() {
    let secret = ClusterSecret::generate();
    let ids = [SecretId::of(&secret)];
    let crypto = Arc::new(NodeCrypto::new(
        PrivateKey::generate(),
        Keyring::single(secret.clone()),
        100,
    ));
    let routes = Arc::new(Routes::new(Local {
        name: "me".into(),
        vni: 1,
        port: 51820,
    }));
    let backend = Backend::new(routes, Some(crypto), Vec::new(), 1420);
    let keys: Vec<_> = (0..PEERS)
        .map(|_| PrivateKey::generate().public_key())
        .collect();
    let start = Instant::now();
    backend.update(|set| {
        for (n, k) in keys.iter().enumerate() {
            set.upsert_member(peer(n as u32, *k, &ids, 51820));
        }
        true
    });
    println!(
        "{PEERS} peers joining in one pass: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let mut one = Vec::new();
    for r in 0..ROUNDS {
        let n = (r * 7) as u32 % PEERS;
        let p = peer(n, keys[n as usize], &ids, 51820 + 1 + (r % 2) as u16);
        let t = Instant::now();
        backend.update(|set| set.upsert_member(p));
        one.push(t.elapsed());
    }
    report("one record changed among 1,000", one);

    let mut all = Vec::new();
    for r in 0..ROUNDS / 10 {
        let port = 40000 + r as u16;
        let t = Instant::now();
        backend.update(|set| {
            for (n, k) in keys.iter().enumerate() {
                set.upsert_member(peer(n as u32, *k, &ids, port));
            }
            true
        });
        all.push(t.elapsed());
    }
    report("every record changed (1,000)", all);

    let mut ring = Vec::new();
    for _ in 0..ROUNDS / 10 {
        let next = Keyring::new(vec![secret.clone(), ClusterSecret::generate()]).unwrap();
        let t = Instant::now();
        backend.set_keyring(next);
        ring.push(t.elapsed());
    }
    report("new cluster secrets (1,000 re-keyed)", ring);
}
