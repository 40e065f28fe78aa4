//! Fuzz the gossip record decoder with signatures (gossip/src/record.rs, signature.rs) and the
//! inbox that decides which records are believed (gossip/src/inbox.rs). Properties, beyond
//! "nothing panics":
//! - a record that decodes and verifies as signed by a key is exactly what that key signed:
//!   the input also mutates a genuine signed record (flipped, cut, spliced bytes), and any
//!   mutant that still verifies must read as the original;
//! - a record encoded from fuzzed fields round-trips (or is refused at encoding);
//! - a state machine whose `node-1` is bound to node-1's key never believes a record under
//!   that name signed by anyone else, whatever the bytes.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshd_gossip::record::{decode_record, decode_verified, encode_record};
use meshd_gossip::sim::Sim;
use meshd_gossip::wire::{self, Kind, Records};
use meshd_gossip::{Config, Gossip, NodeRecord, SigningKey, SubnetRequest};

/// node-1's key, its record and that record signed: made once, not per input.
fn genuine() -> &'static (SigningKey, NodeRecord, Vec<u8>) {
    static G: OnceLock<(SigningKey, NodeRecord, Vec<u8>)> = OnceLock::new();
    G.get_or_init(|| {
        let owner = Sim::signing_key(1);
        let local = Sim::local_node(1, SubnetRequest::Auto);
        let g = Gossip::new(Config::default(), local, 1, Instant::now()).expect("valid node");
        let record = g.local_record().clone();
        let blob = encode_record(&record, Some(&owner)).expect("fits");
        (owner, record, blob)
    })
}

fuzz_target!(|data: &[u8]| {
    // Raw bytes as a record.
    let _ = decode_record(data);
    let _ = decode_verified(data);

    // A genuine signed record, mutated by the input.
    let (owner, genuine, blob) = genuine();
    let now = Instant::now();
    let mut mutant = blob.clone();
    for pair in data.chunks(3) {
        match pair {
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
    if let Ok((r, _)) = decode_verified(&mutant) {
        if r.signer == Some(owner.public()) {
            let mut expect = genuine.clone();
            expect.signer = r.signer;
            assert_eq!(r, expect, "a changed record verified under the owner's key");
        }
    }

    // Fields from the input, encoded and decoded.
    let mut rec = genuine.clone();
    rec.name = String::from_utf8_lossy(data.get(..data.len().min(70)).unwrap_or_default()).into();
    rec.generation = data
        .iter()
        .fold(0u64, |g, b| g.rotate_left(8) ^ u64::from(*b));
    rec.leaving = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(b) = encode_record(&rec, Some(owner)) {
        if let Ok((back, _)) = decode_verified(&b) {
            rec.signer = Some(owner.public());
            assert_eq!(back, rec);
        }
    }

    // The bytes as a record handed to node 0 (which signs nothing: only its inbox matters
    // here), which has node-1 bound.
    let mut local = Sim::local_node(0, SubnetRequest::Auto);
    local.signing_key = None;
    let Ok(mut g0) = Gossip::new(Config::default(), local, 2, now) else {
        return;
    };
    g0.restore_bindings([("node-1".to_string(), owner.public())]);
    for record in [data, mutant.as_slice()] {
        let payload = wire::encode_payload(&Records {
            records: vec![record],
        });
        let mut datagram = Vec::new();
        wire::encode_envelope(Kind::Records, &payload, &mut datagram);
        g0.handle_datagram(SocketAddr::from(([10, 0, 0, 9], 7946)), &datagram, now);
    }
    g0.handle_timeout(now);
    if let Some(m) = g0.member("node-1") {
        assert_eq!(
            m.record.signer,
            Some(owner.public()),
            "an impostor was believed"
        );
    }
    while g0.poll_transmit().is_some() {}
    while g0.poll_event().is_some() {}
});
