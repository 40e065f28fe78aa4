//! Overlap, not equality, settles subnet conflicts: explicit claims wider than a node subnet,
//! static peers' wide subnets, and claims this node does not count at all, on the simulator.
//! The rule ([`meshd_gossip::Precedence`]): the narrower range wins, so a wide hold never
//! renumbers the nodes inside it; newcomers never pick inside any hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use meshd_gossip::sim::scenario;
use meshd_gossip::sim::{NetConfig, Sim};
use meshd_gossip::{Config, Event, Pool, Settled, Subnet, SubnetConflict, SubnetRequest};

/// A config whose cluster CIDR holds `slots` /24s.
fn pool_of(slots: u32) -> Config {
    let prefix = 24 - slots.trailing_zeros() as u8;
    Config {
        cluster_cidr: Subnet::new([10, 244, 0, 0].into(), prefix).unwrap(),
        expected_nodes: 16,
        reclaim_grace: Duration::from_secs(30),
        ..Config::default()
    }
}

fn pool(cfg: &Config) -> Pool {
    Pool::new(cfg.cluster_cidr, cfg.node_prefix).unwrap()
}

fn leases(sim: &Sim) -> HashMap<usize, Subnet> {
    sim.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.up)
        .filter_map(|(i, n)| n.gossip.lease().map(|l| (i, l.subnet)))
        .collect()
}

/// Runs `d` and returns the conflicts each node reported.
fn conflicts(sim: &mut Sim, d: Duration) -> Vec<(usize, SubnetConflict)> {
    let mut seen = Vec::new();
    sim.run_for(d, &mut |i, _, e| {
        if let Event::SubnetConflict(c) = e {
            seen.push((i, c.clone()));
        }
    });
    seen
}

/// The /23 block around `inner`.
fn block_around(inner: Subnet) -> Subnet {
    let addr = u32::from(inner.addr()) & !0x1ff;
    Subnet::new(addr.into(), 23).unwrap()
}

/// A newcomer's explicit /23 over a node's /24: the /24 holder keeps it (the narrower claim
/// wins) and so does everyone else; the newcomer keeps its configured claim and is told it
/// loses. No one was renumbered. Before, equality alone decided, and the two never met.
#[test]
fn an_explicit_wider_claim_never_renumbers_the_nodes_inside_it() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(6, &cfg, NetConfig::default(), 41);
    let before = leases(&sim);
    let inner = before[&2];
    let wide = block_around(inner);
    let i = sim
        .add_node(
            cfg.clone(),
            Sim::local_node(6, SubnetRequest::Explicit(wide)),
        )
        .unwrap();
    sim.join(i, 0);
    let seen = conflicts(&mut sim, Duration::from_secs(10));
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    let after = leases(&sim);
    for (n, s) in &before {
        assert_eq!(after[n], *s, "node {n} was renumbered");
    }
    assert_eq!(after[&i], wide, "an explicit claim is kept by its node");
    let holder = SubnetConflict {
        subnet: inner,
        theirs: wide,
        other: "node-6".into(),
        won: true,
        settled: Settled::Narrower,
        kept: true,
        explicit: true,
        reserved: false,
    };
    assert!(seen.contains(&(2, holder)), "{seen:#?}");
    let newcomer = SubnetConflict {
        subnet: wide,
        theirs: inner,
        other: "node-2".into(),
        won: false,
        settled: Settled::Narrower,
        kept: true,
        explicit: true,
        reserved: false,
    };
    assert!(seen.contains(&(i, newcomer)), "{seen:#?}");
}

/// Picks never land inside a hold of another size: with an explicit /23 over two free slots
/// and a static peer's /22 over four, nodes that join fill the other two slots of an 8-slot
/// pool and the next finds it exhausted. Before, picks compared subnets for equality and
/// landed inside the /23.
#[test]
fn picks_avoid_every_overlapping_hold() {
    let cfg = pool_of(8);
    let p = pool(&cfg);
    let wide = Subnet::new(p.nth(2).addr(), 23).unwrap();
    let reserved = Subnet::new(p.nth(4).addr(), 22).unwrap();
    let mut sim = Sim::new(NetConfig::default(), 43);
    let mut zero = Sim::local_node(0, SubnetRequest::Explicit(wide));
    zero.reserved = vec![reserved];
    sim.add_node(cfg.clone(), zero).unwrap();
    sim.run_for(Duration::from_secs(4), &mut |_, _, _| {});
    let mut exhausted = Vec::new();
    for i in 1..4 {
        sim.add_node(cfg.clone(), Sim::local_node(i, SubnetRequest::Auto))
            .unwrap();
        sim.join(i, i - 1);
        sim.run_for(Duration::from_secs(5), &mut |n, _, e| {
            if *e == Event::SubnetExhausted {
                exhausted.push(n);
            }
        });
    }
    let got = leases(&sim);
    for i in 1..3 {
        let s = got[&i];
        assert!(
            !s.overlaps(&wide) && !s.overlaps(&reserved),
            "node {i} picked {s} inside a hold"
        );
    }
    assert_ne!(got[&1], got[&2]);
    assert_eq!(got.get(&3), None);
    assert_eq!(exhausted, [3]);
}

/// A static peer's /17 added over running nodes: they keep their subnets (the node that
/// reserves it is told its static peer loses, and does not route it); newcomers pick
/// outside it. Before, every node inside moved.
#[test]
fn a_wide_static_subnet_over_running_nodes_moves_none_of_them() {
    let cfg = pool_of(256);
    let (mut sim, mut watch, _) = scenario::bootstrap(5, &cfg, NetConfig::default(), 47);
    let before = leases(&sim);
    let inner = before[&3];
    let half = Subnet::new((u32::from(inner.addr()) & !0x7fff).into(), 17).unwrap();
    let mut local = Sim::local_node(5, SubnetRequest::Auto);
    local.reserved = vec![half];
    let i = sim.add_node(cfg.clone(), local).unwrap();
    sim.join(i, 0);
    let seen = conflicts(&mut sim, Duration::from_secs(10));
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    let after = leases(&sim);
    for (n, s) in &before {
        assert_eq!(after[n], *s, "node {n} was renumbered");
    }
    assert!(!after[&i].overlaps(&half), "node 5 picked {}", after[&i]);
    let kept = SubnetConflict {
        subnet: inner,
        theirs: half,
        other: "node-5".into(),
        won: true,
        settled: Settled::Narrower,
        kept: true,
        explicit: false,
        reserved: true,
    };
    assert!(seen.contains(&(3, kept)), "{seen:#?}");
    // A newcomer after it never picks inside either.
    for j in 6..12 {
        sim.add_node(cfg.clone(), Sim::local_node(j, SubnetRequest::Auto))
            .unwrap();
        sim.join(j, 1);
    }
    assert!(scenario::run_until(&mut sim, &mut watch, |s| {
        scenario::fully_meshed(s) && scenario::all_leased(s)
    })
    .is_some());
    for (n, s) in leases(&sim) {
        assert!(
            before.contains_key(&n) || !s.overlaps(&half),
            "node {n} picked {s} inside the static /17"
        );
    }
}

/// Claims this node does not count move no one: a member's explicit /25 inside a node's /24
/// (narrower, but not a node subnet) and one outside the cluster CIDR. No conflict is raised,
/// no lease changes, and a later pick may still use the slot the /25 sits in.
#[test]
fn claims_outside_the_rules_move_no_one() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(4, &cfg, NetConfig::default(), 53);
    let before = leases(&sim);
    let inner = before[&1];
    let narrow = Subnet::new(inner.addr(), 25).unwrap();
    let outside: Subnet = "198.18.0.0/24".parse().unwrap();
    for (i, s) in [(4, narrow), (5, outside)] {
        sim.add_node(cfg.clone(), Sim::local_node(i, SubnetRequest::Explicit(s)))
            .unwrap();
        sim.join(i, 0);
    }
    let seen = conflicts(&mut sim, Duration::from_secs(10));
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    let after = leases(&sim);
    for (n, s) in &before {
        assert_eq!(after[n], *s, "node {n} moved for a claim it does not count");
    }
    let raised: Vec<_> = seen.iter().filter(|(i, _)| *i < 4).collect();
    assert!(raised.is_empty(), "{raised:#?}");
    let held = sim.nodes[0].gossip.held_subnets(sim.now);
    assert!(
        !held.contains(&narrow) && !held.contains(&outside),
        "{held:?}"
    );
}
