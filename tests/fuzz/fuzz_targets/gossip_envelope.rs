//! Fuzz the gossip envelope decoder and everything behind it: envelope, state chunks, record
//! blobs, and a live `Gossip` state machine fed the bytes as an opened datagram. Nothing may
//! panic, whatever the bytes.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshd_gossip::sim::Sim;
use meshd_gossip::wire::{self, Records, StateChunk, StateEntry, StateRequest};
use meshd_gossip::{Config, Gossip, SubnetRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = wire::decode_envelope(data) {
        let _ = wire::decode_payload::<StateRequest>(env.payload);
        let _ = wire::decode_payload::<Records<'_>>(env.payload);
        if let Ok((chunk, _)) = wire::decode_payload::<StateChunk<'_>>(env.payload) {
            for e in chunk.entries {
                let _ = wire::decode_payload::<StateEntry<'_>>(e);
            }
        }
    }
    let now = Instant::now();
    let local = Sim::local_node(0, SubnetRequest::Auto);
    let Ok(mut g) = Gossip::new(Config::default(), local, 1, now) else { return };
    g.handle_datagram(SocketAddr::from(([10, 0, 0, 9], 7946)), data, now);
    g.handle_timeout(now);
    while g.poll_transmit().is_some() {}
    while g.poll_event().is_some() {}
});
