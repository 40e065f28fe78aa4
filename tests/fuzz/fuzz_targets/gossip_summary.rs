//! Fuzz the path summary chunk decoder and its signature check (gossip/src/summary/codec.rs),
//! and the state machine's handling of summaries and pulls. Properties, beyond "nothing panics":
//! - a chunk that verifies under node-1's key says exactly what node-1 signed: the input also
//!   mutates a genuine signed chunk (flipped, cut, inserted bytes), and any mutant that still
//!   verifies must read as the original;
//! - a lone node, which has no member, takes no summary whatever the bytes.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meshd_gossip::sim::Sim;
use meshd_gossip::summary::{encode_chunks, verified_chunk};
use meshd_gossip::wire::{self, Kind};
use meshd_gossip::{Config, Gossip, Health, PathCode, PathReport, Reason, Route, SubnetRequest};

/// node-1's reports and the first chunk it signs of them: made once, not per input.
fn genuine() -> &'static (Vec<PathReport>, Vec<u8>) {
    static G: OnceLock<(Vec<PathReport>, Vec<u8>)> = OnceLock::new();
    G.get_or_init(|| {
        let reports: Vec<PathReport> = (0..5)
            .map(|i| PathReport {
                peer: format!("node-{}", i + 2),
                path: PathCode::KernelVxlan,
                route: Route::Direct,
                health: Health::Ok,
                reason: Reason::None,
                rtt: Some(Duration::from_micros(300 + i)),
                mtu: 1450,
                observed: None,
                observed_gossip: None,
                relays: Vec::new(),
            })
            .collect();
        let chunks = encode_chunks("node-1", 7, &reports, &Sim::signing_key(1), 1191);
        let first = chunks.into_iter().next().unwrap_or_default();
        (reports, first)
    })
}

fuzz_target!(|data: &[u8]| {
    let key = Sim::signing_key(1).public();
    let _ = verified_chunk(data, &key);

    let (reports, chunk) = genuine();
    let mut mutant = chunk.clone();
    for op in data.chunks(3) {
        match op {
            [0, at, bits] => {
                let i = usize::from(*at) % mutant.len().max(1);
                if let Some(b) = mutant.get_mut(i) {
                    *b ^= bits;
                }
            }
            [1, at, _] => mutant.truncate(usize::from(*at)),
            [2, at, byte] => {
                let i = usize::from(*at).min(mutant.len());
                mutant.insert(i, *byte);
            }
            _ => {}
        }
    }
    if let Some((reporter, version, got)) = verified_chunk(&mutant, &key) {
        assert_eq!((reporter.as_str(), version), ("node-1", 7));
        assert_eq!(&got, reports, "a verified chunk is what was signed");
    }

    let now = Instant::now();
    let local = Sim::local_node(0, SubnetRequest::Auto);
    let Ok(mut g) = Gossip::new(Config::default(), local, 1, now) else {
        return;
    };
    let from = SocketAddr::from(([10, 0, 0, 2], 7946));
    for (kind, payload) in [
        (Kind::Summary, data),
        (Kind::Summary, &mutant[..]),
        (Kind::SummaryPull, data),
    ] {
        let mut datagram = Vec::new();
        wire::encode_envelope(kind, payload, &mut datagram);
        g.handle_datagram(from, &datagram, now);
    }
    g.handle_timeout(now);
    assert_eq!(g.summaries().count(), 0, "no member, no summary");
    while g.poll_transmit().is_some() {}
    while g.poll_event().is_some() {}
});
