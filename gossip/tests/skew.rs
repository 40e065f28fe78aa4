//! Rolling upgrades: a node one wire version ahead (new envelope fields, new message kinds,
//! new record fields) keeps talking to the rest, which skip and count what they do not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshd_gossip::sim::scenario::{self, Watch};
use meshd_gossip::sim::{NetConfig, Sim};
use meshd_gossip::wire::{self, Envelope, Kind, Records, WIRE_VERSION};
use meshd_gossip::{record, Config, MemberState, SubnetRequest};

/// Re-encodes a datagram as a version-ahead node (node 3) would send it, and adds a message of
/// a kind this version has never heard of. Its record grows an extension, which it signs
/// with the rest.
fn as_next_version(bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let env = wire::decode_envelope(&bytes).unwrap();
    let payload = if env.kind == Kind::Records.code() {
        let (recs, _) = wire::decode_payload::<Records<'_>>(env.payload).unwrap();
        let key = Sim::signing_key(3);
        let grown: Vec<Vec<u8>> = recs
            .records
            .iter()
            .map(|r| {
                let (rec, _) = record::decode_verified(r).unwrap();
                record::encode_with_trailer(&rec, Some(&key), b"new record field").unwrap()
            })
            .collect();
        let mut p = wire::encode_payload(&Records {
            records: grown.iter().map(Vec::as_slice).collect(),
        });
        p.extend_from_slice(b"new payload field");
        p
    } else {
        env.payload.to_vec()
    };
    let next = WIRE_VERSION + 1;
    let mut ahead = postcard::to_allocvec(&Envelope {
        version: next,
        kind: env.kind,
        payload: &payload,
    })
    .unwrap();
    ahead.extend_from_slice(b"new envelope field");
    let novel = postcard::to_allocvec(&Envelope {
        version: next,
        kind: 4242,
        payload: b"?",
    })
    .unwrap();
    vec![ahead, novel]
}

#[test]
fn node_one_version_ahead_keeps_talking() {
    let cfg = Config {
        expected_nodes: 10,
        ..Config::default()
    };
    let mut sim = Sim::new(NetConfig::default(), 17);
    for i in 0..10 {
        sim.add_node(cfg.clone(), Sim::local_node(i, SubnetRequest::Auto))
            .unwrap();
    }
    sim.set_rewrite(3, as_next_version);
    for i in 1..10 {
        sim.join(i, 0);
    }
    let mut watch = Watch::default();
    assert!(
        scenario::run_until(&mut sim, &mut watch, |s| scenario::fully_meshed(s)
            && scenario::all_leased(s))
        .is_some()
    );
    sim.run_for(Duration::from_secs(10), &mut watch.hook());
    let subnet = sim.nodes[3].gossip.lease().unwrap().subnet;
    for (i, n) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != 3) {
        let m = n.gossip.member("node-3").unwrap();
        assert_eq!(m.state, MemberState::Alive, "node {i}");
        assert_eq!(m.record.subnet.unwrap().subnet, subnet);
        let c = n.gossip.counters();
        assert!(c.unknown_kinds > 0, "node {i} saw the new kind");
        assert_eq!(c.decode_failures, 0, "node {i}");
        assert_eq!(
            c.refused_records(),
            0,
            "node {i} believed node-3's grown record"
        );
    }
    let fields: u64 = sim
        .nodes
        .iter()
        .map(|n| n.gossip.counters().unknown_fields)
        .sum();
    assert!(
        fields > 0,
        "new record and payload fields were skipped and counted"
    );
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}
