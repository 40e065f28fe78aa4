//! Trust between members, on the simulator: a member cannot speak for another (key, generation,
//! `leaving`), clusters upgrade from unsigned records, `forget` re-keys a reinstalled node and
//! does not take a live one's name, and bindings survive a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::inbox::REBIND_HOLD;
use crate::record::{encode_record, NodeRecord};
use crate::sim::scenario::{self, Watch};
use crate::sim::{NetConfig, Sim};
use crate::wire::{self, Kind, Records};
use crate::{Config, MemberState, SubnetRequest};
use std::net::SocketAddr;

fn config() -> Config {
    Config {
        expected_nodes: 8,
        ..Config::default()
    }
}

fn addr(sim: &Sim, i: usize) -> SocketAddr {
    sim.nodes[i].gossip.local_record().gossip_addr
}

/// A `Records` datagram carrying `blob`, as any member may send one.
fn records(blob: &[u8]) -> Vec<u8> {
    let payload = wire::encode_payload(&Records {
        records: vec![blob],
    });
    let mut out = Vec::new();
    wire::encode_envelope(Kind::Records, &payload, &mut out);
    out
}

/// Node `by` hands `blob` to node `to` directly.
fn inject(sim: &mut Sim, by: usize, to: usize, blob: &[u8]) {
    let (from, now) = (addr(sim, by), sim.now);
    sim.nodes[to]
        .gossip
        .handle_datagram(from, &records(blob), now);
}

fn record_of(sim: &Sim, at: usize, name: &str) -> NodeRecord {
    sim.nodes[at].gossip.member(name).unwrap().record.clone()
}

/// A 5-node cluster, meshed and leased.
fn cluster(n: usize) -> Sim {
    let (sim, _, report) = scenario::bootstrap(n, &config(), NetConfig::default(), 7);
    assert!(report.bootstrap.is_some());
    sim
}

#[test]
fn a_member_cannot_speak_for_another() {
    let mut sim = cluster(5);
    let real = sim.nodes[1].gossip.local_record().clone();
    let real_generation = real.generation;
    let thief = Sim::signing_key(3);
    // node-3 claims node-1's name with its own key: its WireGuard key, its endpoint, newer.
    let mut forged = real.clone();
    forged.public_key = [0xee; 32];
    forged.endpoints = sim.nodes[3].gossip.local_record().endpoints.clone();
    forged.generation += 1000;
    let as_thief = encode_record(&forged, Some(&thief)).unwrap();
    // ... the same, leaving (everyone would withdraw node-1), and with the last generation.
    forged.leaving = true;
    let leaving = encode_record(&forged, Some(&thief)).unwrap();
    let unsigned = encode_record(&forged, None).unwrap();
    forged.generation = u64::MAX;
    let last = encode_record(&forged, Some(&thief)).unwrap();
    for to in [0, 1, 2, 4] {
        for blob in [&as_thief, &leaving, &unsigned, &last] {
            inject(&mut sim, 3, to, blob);
        }
    }
    let mut watch = Watch::default();
    let mut left = 0;
    sim.run_for(Duration::from_secs(3), &mut |i, t, e| {
        left +=
            u32::from(matches!(e, Event::MemberLeft(n) | Event::MemberDown(n) if n == "node-1"));
        watch.hook()(i, t, e);
    });
    assert_eq!(left, 0, "no node withdrew node-1");
    for to in [0, 2, 4] {
        let c = sim.nodes[to].gossip.counters();
        // Counted before anything else is asserted: the forgeries did arrive.
        assert_eq!(
            (c.refused_impostor, c.refused_unsigned, c.refused_generation),
            (2, 1, 1),
            "node-{to}"
        );
        let seen = record_of(&sim, to, "node-1");
        assert_eq!(
            seen,
            NodeRecord {
                signer: Some(Sim::signing_key(1).public()),
                ..real.clone()
            }
        );
        assert_eq!(
            sim.nodes[to].gossip.member("node-1").unwrap().state,
            MemberState::Alive
        );
    }
    // node-1 refused them under its own name: its generation neither jumped nor wrapped.
    let own = sim.nodes[1].gossip.local_record().generation;
    assert_eq!(own, real_generation);
    assert_eq!(sim.nodes[1].gossip.counters().refused_impostor, 2);
    // A refused record is not passed on: node-3 itself never saw one.
    assert_eq!(sim.nodes[3].gossip.counters().refused_records(), 0);
    // And node-1's next change reaches everyone as usual.
    sim.nodes[1].gossip.set_secret_ids(vec![[9, 9, 9, 9]]);
    sim.run_for(Duration::from_secs(3), &mut |_, _, _| {});
    for to in [0, 2, 3, 4] {
        assert_eq!(record_of(&sim, to, "node-1").secret_ids, vec![[9, 9, 9, 9]]);
    }
}

/// Node 3 starts as a node from before signatures, is upgraded, then downgraded.
#[test]
fn unsigned_members_are_believed_until_signed_and_never_after() {
    let mut sim = Sim::new(NetConfig::default(), 3);
    for i in 0..4 {
        let mut local = Sim::local_node(i, SubnetRequest::Auto);
        if i == 3 {
            local.signing_key = None;
        }
        sim.add_node(config(), local).unwrap();
    }
    for i in 1..4 {
        sim.join(i, 0);
    }
    let mut watch = Watch::default();
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    assert_eq!(record_of(&sim, 0, "node-3").signer, None);
    // Upgraded: a restart that signs.
    let mut local = Sim::local_node(3, SubnetRequest::Auto);
    local.boot_epoch = 2;
    sim.add_node(config(), local).unwrap();
    sim.join(3, 0);
    let key = Some(Sim::signing_key(3).public());
    let signed = |s: &Sim| {
        (0..3).all(|i| {
            s.nodes[i]
                .gossip
                .member("node-3")
                .is_some_and(|m| m.record.signer == key)
        })
    };
    assert!(scenario::run_until(&mut sim, &mut watch, signed).is_some());
    // Downgraded: its unsigned records are refused now.
    let mut local = Sim::local_node(3, SubnetRequest::Auto);
    local.boot_epoch = 3;
    local.signing_key = None;
    sim.add_node(config(), local).unwrap();
    sim.join(3, 0);
    let refused = |s: &Sim| (0..3).all(|i| s.nodes[i].gossip.counters().refused_unsigned > 0);
    assert!(scenario::run_until(&mut sim, &mut watch, refused).is_some());
    assert!(signed(&sim));
}

/// node-2 is reinstalled with a new key: refused until an operator forgets the old one.
#[test]
fn forget_lets_a_reinstalled_node_take_its_name_again() {
    let mut sim = cluster(4);
    let old = Sim::signing_key(2).public();
    let new = Sim::signing_key(102);
    let mut local = Sim::local_node(2, SubnetRequest::Auto);
    local.boot_epoch = 2;
    local.signing_key = Some(new.clone());
    sim.add_node(config(), local).unwrap();
    sim.join(2, 0);
    let mut watch = Watch::default();
    let refused = |s: &Sim| {
        [0, 1, 3]
            .iter()
            .all(|&i| s.nodes[i].gossip.counters().refused_impostor > 0)
    };
    assert!(scenario::run_until(&mut sim, &mut watch, refused).is_some());
    assert_eq!(record_of(&sim, 1, "node-2").signer, Some(old));

    let now = sim.now;
    assert_eq!(
        sim.nodes[0].gossip.forget("node-0", now),
        Err(ForgetError::Own)
    );
    assert_eq!(
        sim.nodes[0].gossip.forget("nobody", now),
        Err(ForgetError::NotBound)
    );
    assert_eq!(sim.nodes[0].gossip.forget("node-2", now), Ok(old));
    let mut heard = Vec::new();
    let rebound = |s: &Sim| {
        [0, 1, 3].iter().all(|&i| {
            s.nodes[i]
                .gossip
                .member("node-2")
                .is_some_and(|m| m.record.signer == Some(new.public()))
        })
    };
    let deadline = sim.now + crate::sim::scenario::PATIENCE;
    while !rebound(&sim) && sim.now < deadline {
        sim.run_for(Duration::from_millis(100), &mut |i, t, e| {
            if let Event::KeyForgotten { name, by } = e {
                heard.push((i, name.clone(), by.clone(), t));
            }
        });
    }
    assert!(rebound(&sim), "node-2 bound to its new key everywhere");
    for i in [1, 3] {
        let (_, _, by, at) = heard.iter().find(|h| h.0 == i && h.1 == "node-2").unwrap();
        assert_eq!(by, "node-0");
        assert!(*at >= now);
    }
    assert!(sim.now >= now + REBIND_HOLD, "not before the hold");
}

/// A member forgets a live node's key to take its name: the node keeps it.
#[test]
fn a_live_node_keeps_its_name_against_a_forget() {
    let mut sim = cluster(4);
    let now = sim.now;
    sim.nodes[3].gossip.forget("node-1", now).unwrap();
    let mut defended = 0;
    sim.run_for(REBIND_HOLD + Duration::from_secs(2), &mut |i, _, e| {
        if i == 1 && matches!(e, Event::OwnKeyForgotten { by } if by == "node-3") {
            defended += 1;
        }
    });
    assert_eq!(defended, 1);
    let mut forged = sim.nodes[1].gossip.local_record().clone();
    forged.public_key = [0xee; 32];
    forged.generation += 1000;
    let blob = encode_record(&forged, Some(&Sim::signing_key(3))).unwrap();
    for to in [0, 2] {
        inject(&mut sim, 3, to, &blob);
        assert_eq!(
            sim.nodes[to].gossip.counters().refused_impostor,
            1,
            "node-{to}"
        );
        assert_eq!(
            record_of(&sim, to, "node-1").signer,
            Some(Sim::signing_key(1).public())
        );
    }
}

/// A restarted node keeps its bindings: the first forged record is refused, not bound.
#[test]
fn restored_bindings_refuse_an_impostor_from_the_first_datagram() {
    let mut sim = cluster(3);
    let saved = sim.nodes[2].gossip.bindings();
    assert!(saved.contains(&("node-1".into(), Sim::signing_key(1).public())));
    assert!(saved.contains(&("node-2".into(), Sim::signing_key(2).public())));
    let mut forged = sim.nodes[1].gossip.local_record().clone();
    forged.public_key = [0xee; 32];
    let blob = encode_record(&forged, Some(&Sim::signing_key(0))).unwrap();
    let mut local = Sim::local_node(2, SubnetRequest::Auto);
    local.boot_epoch = 2;
    sim.add_node(config(), local).unwrap();
    sim.nodes[2].gossip.restore_bindings(saved);
    inject(&mut sim, 0, 2, &blob);
    assert_eq!(sim.nodes[2].gossip.counters().refused_impostor, 1);
    assert!(sim.nodes[2].gossip.member("node-1").is_none());
}
