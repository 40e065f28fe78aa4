//! Subnet allocation on the simulator: split brains, partitions that heal, restarts with a
//! persisted lease, explicit subnets, and the reclaim grace period.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use meshd_gossip::sim::scenario::{self, Watch};
use meshd_gossip::sim::{NetConfig, Sim};
use meshd_gossip::{
    Config, Event, Lease, MemberState, Settled, Subnet, SubnetConflict, SubnetRequest,
};

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

fn assert_unique_subnets(sim: &Sim) {
    let mut seen = HashSet::new();
    for n in sim.nodes.iter().filter(|n| n.up) {
        let lease = n.gossip.lease().expect("every live node holds a subnet");
        assert!(
            seen.insert(lease.subnet),
            "duplicate subnet {}",
            lease.subnet
        );
    }
}

fn add(sim: &mut Sim, cfg: &Config, i: usize, subnet: SubnetRequest) -> usize {
    sim.add_node(cfg.clone(), Sim::local_node(i, subnet))
        .unwrap()
}

/// Two halves that never met claim from the same 8 slots (two pairs even restore the same
/// persisted lease), then meet: conflicts are settled, losers re-pick, and every node ends
/// with its own subnet.
#[test]
fn split_brain_bootstrap_settles_every_conflict() {
    let cfg = pool_of(8);
    let mut sim = Sim::new(NetConfig::default(), 21);
    let pool = meshd_gossip::Pool::new(cfg.cluster_cidr, cfg.node_prefix).unwrap();
    let x = Lease {
        subnet: pool.nth(5),
        stamp: 5,
    };
    let y = Lease {
        subnet: pool.nth(2),
        stamp: 3,
    };
    for i in 0..8 {
        let request = match i {
            1 | 5 => SubnetRequest::Persisted(x),
            2 | 6 => SubnetRequest::Persisted(y),
            _ => SubnetRequest::Auto,
        };
        add(&mut sim, &cfg, i, request);
        sim.set_group(i, u32::from(i >= 4));
    }
    for i in [1, 2, 3] {
        sim.join(i, 0);
    }
    for i in [5, 6, 7] {
        sim.join(i, 4);
    }
    let mut watch = Watch::default();
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    let before: Vec<_> = sim
        .nodes
        .iter()
        .map(|n| n.gossip.lease().unwrap().subnet)
        .collect();
    let distinct: HashSet<_> = before.iter().collect();
    assert!(
        distinct.len() < 8,
        "the halves must have collided for this test to mean anything"
    );

    sim.heal();
    sim.join(4, 0);
    let done = scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed);
    assert!(done.is_some(), "halves did not merge");
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    assert!(watch.conflicts > 0);
    assert_unique_subnets(&sim);
}

/// A running cluster splits; each side declares the other down, reclaims its subnets after the
/// grace period for newcomers, then the partition heals: no duplicates survive.
#[test]
fn partition_with_reclaim_then_heal_leaves_no_duplicates() {
    let cfg = Config {
        reclaim_grace: Duration::from_secs(5),
        ..pool_of(8)
    };
    let mut sim = Sim::new(NetConfig::default(), 8);
    for i in 0..4 {
        add(&mut sim, &cfg, i, SubnetRequest::Auto);
        if i > 0 {
            sim.join(i, 0);
        }
    }
    let mut watch = Watch::default();
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    for i in [2, 3] {
        sim.set_group(i, 1);
    }
    sim.run_for(Duration::from_secs(12), &mut watch.hook());
    assert_eq!(
        sim.nodes[0].gossip.member("node-2").unwrap().state,
        MemberState::Down
    );
    // Two newcomers per side: 8 slots, 4 held, and each side counts the other's as free.
    for (i, seed, group) in [(4, 0, 0), (5, 1, 0), (6, 2, 1), (7, 3, 1)] {
        add(&mut sim, &cfg, i, SubnetRequest::Auto);
        sim.set_group(i, group);
        sim.join(i, seed);
    }
    sim.run_for(Duration::from_secs(5), &mut watch.hook());

    sim.heal();
    let done = scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed);
    assert!(done.is_some(), "partition did not heal");
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    assert_unique_subnets(&sim);
}

#[test]
fn persisted_lease_is_kept_across_a_restart() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(10, &cfg, NetConfig::default(), 4);
    let lease = sim.nodes[5].gossip.lease().unwrap();
    sim.kill(5);
    sim.run_for(Duration::from_secs(6), &mut watch.hook());
    assert_eq!(
        sim.nodes[0].gossip.member("node-5").unwrap().state,
        MemberState::Down
    );

    let mut local = Sim::local_node(5, SubnetRequest::Persisted(lease));
    local.boot_epoch = 2;
    let i = sim.add_node(cfg, local).unwrap();
    assert_eq!(i, 5);
    sim.join(5, 0);
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    assert_eq!(sim.nodes[5].gossip.lease().unwrap().subnet, lease.subnet);
    for n in sim.nodes.iter().filter(|n| n.up) {
        if let Some(m) = n.gossip.member("node-5") {
            assert_eq!(m.state, MemberState::Alive);
            assert_eq!(m.record.subnet.unwrap().subnet, lease.subnet);
        }
    }
}

#[test]
fn explicit_subnet_wins_and_the_conflict_is_reported() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(10, &cfg, NetConfig::default(), 6);
    let contested = sim.nodes[3].gossip.lease().unwrap().subnet;
    add(&mut sim, &cfg, 10, SubnetRequest::Explicit(contested));
    sim.join(10, 0);
    let mut reports: Vec<(usize, SubnetConflict)> = Vec::new();
    sim.run_for(Duration::from_secs(5), &mut |i, _, e| {
        if let Event::SubnetConflict(c) = e {
            reports.push((i, c.clone()));
        }
    });
    assert_eq!(sim.nodes[10].gossip.lease().unwrap().subnet, contested);
    assert_ne!(sim.nodes[3].gossip.lease().unwrap().subnet, contested);
    assert!(reports
        .iter()
        .any(|(i, c)| *i == 3 && !c.kept && c.explicit));
    assert!(reports
        .iter()
        .any(|(i, c)| *i == 10 && c.kept && c.explicit));
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    assert_unique_subnets(&sim);
}

#[test]
fn dead_nodes_subnet_is_reclaimed_only_after_the_grace_period() {
    let cfg = pool_of(4);
    let (mut sim, mut watch, _) = scenario::bootstrap(4, &cfg, NetConfig::default(), 9);
    assert_unique_subnets(&sim);
    let freed = sim.nodes[3].gossip.lease().unwrap().subnet;
    sim.kill(3);
    sim.run_for(Duration::from_secs(6), &mut watch.hook());

    let mut exhausted = false;
    let mut assigned_at = None;
    add(&mut sim, &cfg, 4, SubnetRequest::Auto);
    sim.join(4, 0);
    sim.run_for(Duration::from_secs(60), &mut |i, now, e| match e {
        Event::SubnetExhausted if i == 4 => exhausted = true,
        Event::SubnetAssigned(_) if i == 4 => assigned_at = assigned_at.or(Some(now)),
        _ => {}
    });
    assert!(
        exhausted,
        "the dead node's subnet must stay reserved at first"
    );
    assert!(assigned_at.is_some());
    assert_eq!(sim.nodes[4].gossip.lease().unwrap().subnet, freed);
}

/// A node that comes back on the same address under another name (a re-imaged machine): its
/// old name ends up down everywhere, and the new name is a live member. Before the fix the old
/// name stayed alive for ever, routes included, because SWIM only knows addresses.
#[test]
fn a_node_renamed_on_the_same_address_retires_its_old_name() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(10, &cfg, NetConfig::default(), 12);
    sim.kill(5);
    sim.run_for(Duration::from_secs(6), &mut watch.hook());

    let mut local = Sim::local_node(5, SubnetRequest::Auto);
    local.name = "renamed".into();
    local.boot_epoch = 2;
    sim.add_node(cfg, local).unwrap();
    sim.join(5, 0);
    // SWIM's MemberUp for the address comes before the record under the new name and briefly
    // revives node-5; once that record is in, node-5 is down for good.
    sim.run_for(Duration::from_secs(10), &mut watch.hook());
    for (i, n) in sim
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| n.up && *i != 5)
    {
        assert_eq!(
            n.gossip.member("node-5").map(|m| m.state),
            Some(MemberState::Down),
            "node {i}"
        );
        assert_eq!(
            n.gossip.member("renamed").map(|m| m.state),
            Some(MemberState::Alive),
            "node {i}"
        );
    }
}

/// Static peers' subnets, reserved by node 0 alone and learnt by every other node through its
/// record: newcomers that join through other nodes never pick one, and the pool counts them
/// as taken (the sixth node finds it exhausted, where without them it would get a slot).
#[test]
fn static_peers_subnets_are_never_handed_out() {
    let cfg = pool_of(8);
    let pool = meshd_gossip::Pool::new(cfg.cluster_cidr, cfg.node_prefix).unwrap();
    // A /23 over slots 2 and 3 and a /25 inside slot 5: five of the eight slots stay free.
    let wide = Subnet::new(pool.nth(2).addr(), 23).unwrap();
    let narrow = Subnet::new(pool.nth(5).addr(), 25).unwrap();
    let mut sim = Sim::new(NetConfig::default(), 31);
    let mut local = Sim::local_node(0, SubnetRequest::Auto);
    local.reserved = vec![wide, narrow];
    sim.add_node(cfg.clone(), local).unwrap();
    let mut exhausted = HashSet::new();
    let mut on_event = |i: usize, _: std::time::Instant, e: &Event| {
        if let Event::SubnetExhausted = e {
            exhausted.insert(i);
        }
    };
    sim.run_for(Duration::from_secs(4), &mut on_event);
    for i in 1..6 {
        add(&mut sim, &cfg, i, SubnetRequest::Auto);
        sim.join(i, i - 1);
        sim.run_for(Duration::from_secs(5), &mut on_event);
    }
    for (i, n) in sim.nodes.iter().enumerate().take(5) {
        assert!(n.gossip.lease().is_some(), "node {i} has no lease");
        let lease = n.gossip.lease().unwrap();
        assert!(
            !lease.subnet.overlaps(&wide) && !lease.subnet.overlaps(&narrow),
            "node {i} was given {}, a static peer's",
            lease.subnet
        );
    }
    assert_eq!(sim.nodes[5].gossip.lease(), None);
    assert_eq!(exhausted, HashSet::from([5]));
    // Only node 0 was given the reservations; node 5, which joined through node 4, holds
    // them from node 0's record.
    let zero = sim.nodes[5].gossip.member("node-0").unwrap();
    assert_eq!(zero.record.reserved, [wide, narrow]);
    sim.kill(5);
    assert_unique_subnets(&sim);
}

/// A member that already holds a subnet a node then reserves (a static peer added there)
/// moves off it; a member that claims a reserved subnet explicitly keeps it, and the conflict
/// is reported as explicit (logged at error by the daemon).
#[test]
fn a_claim_on_a_static_peers_subnet_moves_unless_explicit() {
    let cfg = pool_of(64);
    let (mut sim, mut watch, _) = scenario::bootstrap(6, &cfg, NetConfig::default(), 17);
    let held = sim.nodes[3].gossip.lease().unwrap().subnet;
    let taken: HashSet<Subnet> = sim
        .nodes
        .iter()
        .map(|n| n.gossip.lease().unwrap().subnet)
        .collect();
    let pool = meshd_gossip::Pool::new(cfg.cluster_cidr, cfg.node_prefix).unwrap();
    let free = (0..64)
        .map(|i| pool.nth(i))
        .find(|s| !taken.contains(s))
        .unwrap();
    let mut local = Sim::local_node(6, SubnetRequest::Auto);
    local.reserved = vec![held, free];
    sim.add_node(cfg.clone(), local).unwrap();
    sim.join(6, 0);
    add(&mut sim, &cfg, 7, SubnetRequest::Explicit(free));
    sim.join(7, 1);
    let mut reports: Vec<(usize, SubnetConflict)> = Vec::new();
    sim.run_for(Duration::from_secs(10), &mut |i, _, e| {
        if let Event::SubnetConflict(c) = e {
            reports.push((i, c.clone()));
        }
    });
    assert!(scenario::run_until(&mut sim, &mut watch, scenario::fully_meshed).is_some());
    let moved = sim.nodes[3].gossip.lease().unwrap().subnet;
    assert!(moved != held && moved != free, "node 3 holds {moved}");
    assert_eq!(sim.nodes[7].gossip.lease().unwrap().subnet, free);
    let expect = |kept: bool| SubnetConflict {
        subnet: if kept { free } else { held },
        theirs: if kept { free } else { held },
        other: "node-6".into(),
        won: false,
        settled: Settled::Reserved,
        kept,
        explicit: kept,
        reserved: true,
    };
    assert!(reports.contains(&(3, expect(false))), "{reports:#?}");
    assert!(reports.contains(&(7, expect(true))), "{reports:#?}");
    for (i, n) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != 7) {
        let s = n.gossip.lease().unwrap().subnet;
        assert!(s != held && s != free, "node {i} holds a static peer's {s}");
    }
    assert_unique_subnets(&sim);
}
