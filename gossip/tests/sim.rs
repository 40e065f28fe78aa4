//! Cluster behaviour on the deterministic simulator: joins, deaths, departures, loss,
//! partitions and subnet conflicts. Every assertion is about convergence and correctness;
//! times are measured by the `sim` example, not asserted here.
//!
//! The 1,000-node cases are `#[ignore]`d to keep `cargo test` quick; run them with
//! `cargo test --release -p meshd-gossip --test sim -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use meshd_gossip::sim::scenario::{self, Watch};
use meshd_gossip::sim::{NetConfig, Sim};
use meshd_gossip::{Config, Event, MemberState};

fn config(nodes: usize) -> Config {
    Config {
        cluster_cidr: "10.0.0.0/12".parse().unwrap(),
        expected_nodes: nodes as u32,
        ..Config::default()
    }
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

/// Every up node holds a subnet, and no two up nodes hold the same one.
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

/// Every up node sees every other up node alive, with the subnet that node holds.
fn records_agree(sim: &Sim) -> bool {
    sim.nodes.iter().filter(|n| n.up).all(|a| {
        sim.nodes.iter().filter(|n| n.up).all(|b| {
            let b_rec = b.gossip.local_record();
            b_rec.name == a.gossip.local_record().name
                || a.gossip.member(&b_rec.name).is_some_and(|seen| {
                    seen.state == MemberState::Alive && seen.record.subnet == b_rec.subnet
                })
        })
    })
}

#[test]
fn hundred_nodes_join_and_agree() {
    let (sim, watch, report) = scenario::bootstrap(100, &config(100), NetConfig::default(), 7);
    assert!(report.bootstrap.is_some(), "did not converge");
    assert!(scenario::fully_meshed(&sim));
    assert_unique_subnets(&sim);
    let mut sim = sim;
    let mut watch = watch;
    assert!(
        scenario::run_until(&mut sim, &mut watch, records_agree).is_some(),
        "records disagree"
    );
    assert_unique_subnets(&sim);
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}

#[test]
fn dead_node_is_declared_down_by_all_and_nobody_else() {
    let cfg = config(100);
    let (mut sim, mut watch, mut report) = scenario::bootstrap(100, &cfg, NetConfig::default(), 11);
    scenario::kill_one(&mut sim, &mut watch, 42, &mut report);
    assert!(
        report.dead_everywhere.is_some(),
        "not declared down everywhere"
    );
    for n in sim.nodes.iter().filter(|n| n.up) {
        assert_eq!(n.gossip.member(&name(42)).unwrap().state, MemberState::Down);
    }
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}

#[test]
fn newcomer_is_known_everywhere_and_knows_everyone() {
    let cfg = config(100);
    let (mut sim, mut watch, mut report) = scenario::bootstrap(100, &cfg, NetConfig::default(), 3);
    scenario::join_one(&mut sim, &cfg, &mut watch, 17, &mut report);
    assert!(report.join_everywhere.is_some() && report.joiner_complete.is_some());
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    assert!(sim.nodes[100].gossip.is_synced());
    assert_unique_subnets(&sim);
}

#[test]
fn graceful_leave_is_reported_as_left() {
    let cfg = config(20);
    let (mut sim, mut watch, _) = scenario::bootstrap(20, &cfg, NetConfig::default(), 5);
    let mut left = 0;
    sim.leave(9);
    sim.run_for(Duration::from_secs(1), &mut |_, _, e| {
        if matches!(e, Event::MemberLeft(n) if n == "node-9") {
            left += 1;
        }
    });
    sim.kill(9);
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    assert_eq!(
        left, 19,
        "every other node reports the departure as a leave"
    );
    for n in sim.nodes.iter().filter(|n| n.up) {
        assert_eq!(n.gossip.member(&name(9)).unwrap().state, MemberState::Left);
    }
}

#[test]
fn five_percent_loss_causes_no_false_deaths() {
    let cfg = config(100);
    let (mut sim, _, _) = scenario::bootstrap(100, &cfg, NetConfig::default(), 13);
    sim.set_net(NetConfig {
        loss: 0.05,
        ..NetConfig::default()
    });
    let mut watch = Watch::default();
    sim.run_for(Duration::from_secs(60), &mut watch.hook());
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
    assert!(scenario::fully_meshed(&sim));
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let (sim, _, r) = scenario::bootstrap(
            30,
            &config(30),
            NetConfig {
                loss: 0.02,
                ..NetConfig::default()
            },
            99,
        );
        let leases: Vec<_> = sim.nodes.iter().map(|n| n.gossip.lease()).collect();
        (
            r.bootstrap,
            leases,
            sim.nodes.iter().map(|n| n.bytes_out).sum::<u64>(),
        )
    };
    assert_eq!(run(), run());
}

#[test]
#[ignore = "1,000 nodes: run in release, see the module doc"]
fn thousand_nodes_join_and_detect_a_death() {
    let cfg = config(1000);
    let (mut sim, mut watch, mut report) = scenario::bootstrap(1000, &cfg, NetConfig::default(), 1);
    assert!(
        report.bootstrap.is_some(),
        "not meshed, leased and conflict-free"
    );
    assert_unique_subnets(&sim);
    scenario::join_one(&mut sim, &cfg, &mut watch, 500, &mut report);
    assert!(report.join_everywhere.is_some());
    scenario::kill_one(&mut sim, &mut watch, 333, &mut report);
    assert!(report.dead_everywhere.is_some());
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}

#[test]
#[ignore = "1,000 nodes: run in release, see the module doc"]
fn thousand_nodes_five_percent_loss_no_false_deaths() {
    let cfg = config(1000);
    let (mut sim, _, _) = scenario::bootstrap(1000, &cfg, NetConfig::default(), 2);
    sim.set_net(NetConfig {
        loss: 0.05,
        ..NetConfig::default()
    });
    let mut watch = Watch::default();
    sim.run_for(Duration::from_secs(60), &mut watch.hook());
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}

/// A node that reloads its cluster secrets publishes the new ids, and every member learns them
/// (the pairs' WireGuard preshared keys follow them during a rotation).
#[test]
fn new_secret_ids_reach_every_member() {
    let cfg = config(20);
    let (mut sim, _, _) = scenario::bootstrap(20, &cfg, NetConfig::default(), 5);
    let ids = vec![[1, 1, 1, 1], [2, 2, 2, 2]];
    sim.nodes[4].gossip.set_secret_ids(ids.clone());
    let mut updates = 0;
    sim.run_for(Duration::from_secs(3), &mut |_, _, e| {
        if matches!(e, Event::MemberUpdated(r) if r.name == "node-4" && r.secret_ids == ids) {
            updates += 1;
        }
    });
    assert_eq!(updates, 19, "every other node hears the new ids once");
    for (i, n) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != 4) {
        let m = n.gossip.member(&name(4)).unwrap();
        assert_eq!(m.record.secret_ids, ids, "node {i}");
    }
}
