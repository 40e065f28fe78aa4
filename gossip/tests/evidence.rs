//! Data-path evidence on the simulator: under heavy loss, members whose traffic keeps arriving
//! are not declared down (and are without it, several times a minute); a member that dies mid-flow is still declared
//! down once its traffic stops; a Down rumour about a member we exchange traffic with is held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use meshd_gossip::sim::scenario::{self, Watch};
use meshd_gossip::sim::{NetConfig, Sim};
use meshd_gossip::{Config, Event, MemberState};

/// How often the simulated pods exchange a packet: the e2e tests ping every 10 ms; every 50 ms
/// is plenty for a 2 s window and keeps the simulation quick.
const TRAFFIC_EVERY: Duration = Duration::from_millis(50);

fn lossy(loss: f64) -> NetConfig {
    NetConfig {
        loss,
        ..NetConfig::default()
    }
}

/// `n` nodes meshed on a clean network, then `loss` from here on.
fn cluster(n: usize, seed: u64, loss: f64) -> Sim {
    let (mut sim, _, report) =
        scenario::bootstrap(n, &Config::default(), NetConfig::default(), seed);
    assert!(report.bootstrap.is_some(), "did not converge");
    sim.set_net(lossy(loss));
    sim
}

/// 20 % dropped at each end of every datagram (the e2e test's `nft` rule on every host's
/// underlay interface, in and out): 36 % in all.
const HEAVY_LOSS: f64 = 1.0 - 0.8 * 0.8;

#[test]
fn at_heavy_loss_traffic_keeps_members_up() {
    let minute = Duration::from_secs(60);
    // Without evidence SWIM alone declares live members down: the failure this is about.
    let mut bare = cluster(3, 1, HEAVY_LOSS);
    let mut watch = Watch::default();
    sim_run(&mut bare, minute, &mut watch, false);
    let without = scenario::false_deaths(&bare, &watch);

    let mut sim = cluster(3, 1, HEAVY_LOSS);
    let mut watch = Watch::default();
    sim_run(&mut sim, minute, &mut watch, true);
    let with = scenario::false_deaths(&sim, &watch);
    let (postponed, held) = sim.nodes.iter().fold((0, 0), |(p, h), n| {
        let c = n.gossip.counters();
        (p + c.downs_postponed, h + c.downs_held)
    });
    eprintln!(
        "false deaths in a minute at 36 % loss: {without} without evidence, {with} with \
         ({postponed} suspicions outlived, {held} downs held)"
    );
    assert!(
        without > 0,
        "the baseline shows no false death: the test proves nothing"
    );
    assert_eq!(with, 0, "members with traffic were declared down");
    assert!(
        postponed > 0,
        "no suspicion was outlived: evidence played no part"
    );
    for n in &sim.nodes {
        assert_eq!(n.gossip.members().count(), 2);
        assert!(n.gossip.members().all(|m| m.state != MemberState::Down));
    }
}

fn sim_run(sim: &mut Sim, d: Duration, watch: &mut Watch, traffic: bool) {
    if traffic {
        sim.run_with_traffic(d, TRAFFIC_EVERY, &mut watch.hook());
    } else {
        sim.run_for(d, &mut watch.hook());
    }
}

/// `n` nodes meshed on a clean network, exchanging traffic for 2 s.
fn talking(n: usize, seed: u64) -> (Sim, Watch) {
    let mut sim = cluster(n, seed, 0.0);
    let mut watch = Watch::default();
    sim_run(&mut sim, Duration::from_secs(2), &mut watch, true);
    (sim, watch)
}

#[test]
fn a_node_that_dies_mid_flow_is_declared_down_once_its_traffic_stops() {
    let (mut sim, mut watch) = talking(5, 8);
    sim.kill(3);
    let t0 = sim.now;
    sim_run(&mut sim, Duration::from_secs(15), &mut watch, true);
    for (i, n) in sim.nodes.iter().enumerate().filter(|(_, n)| n.up) {
        let m = n.gossip.member("node-3").unwrap();
        assert_eq!(m.state, MemberState::Down, "node {i}");
        assert!(!m.held);
        let at = watch.down[&(i, "node-3".to_string())];
        // Not before its last packet's evidence ran out: held, not ignored.
        assert!(
            at.duration_since(t0) >= Config::default().evidence_window,
            "node {i} declared it down {:?} after it died",
            at.duration_since(t0)
        );
    }
    assert_eq!(scenario::false_deaths(&sim, &watch), 0);
}

/// The one-sided flap: a third node is cut off and declares the other two down; healed
/// towards node 1 first, it tells node 1 that node 0 is down, which node 0 never hears about
/// node 1. Without traffic node 1 withdraws node 0 (briefly, until node 0 renews its identity);
/// with traffic between them, it holds node 0 instead, and neither ever withdraws the other.
#[test]
fn a_healed_third_node_cannot_make_two_talking_nodes_drop_each_other() {
    let (mut flapped, mut held) = (0, 0);
    for seed in 1..=5 {
        for traffic in [false, true] {
            let mut sim = cluster(3, seed, 0.0);
            let mut watch = Watch::default();
            sim.set_link(2, 0, false);
            sim.set_link(2, 1, false);
            sim_run(&mut sim, Duration::from_secs(20), &mut watch, traffic);
            sim.set_link(2, 1, true);
            sim_run(&mut sim, Duration::from_secs(5), &mut watch, traffic);
            sim.heal();
            sim_run(&mut sim, Duration::from_secs(10), &mut watch, traffic);
            let drops = [(0, "node-1"), (1, "node-0")]
                .iter()
                .filter(|(a, b)| watch.down.contains_key(&(*a, b.to_string())))
                .count();
            assert!(
                scenario::fully_meshed(&sim),
                "seed {seed}: not one mesh again"
            );
            if !traffic {
                flapped += drops;
                continue;
            }
            assert_eq!(drops, 0, "seed {seed}: a talking node withdrew the other");
            for n in &sim.nodes {
                assert!(n.gossip.members().all(|m| !m.held), "seed {seed}");
            }
            held += sim.nodes[1].gossip.counters().downs_held;
        }
    }
    eprintln!("one-sided flaps in 5 runs: {flapped} without traffic; {held} downs held with it");
    assert!(
        flapped > 0,
        "the flap never happened without traffic: the test proves nothing"
    );
    assert!(held > 0, "no down was held");
}

/// A member that leaves gracefully while its traffic still flows is reported as a leave, by
/// everyone, however SWIM's notice and its leaving record race each other.
#[test]
fn a_graceful_leave_mid_flow_is_still_a_leave() {
    let (mut sim, mut watch) = talking(20, 5);
    sim.leave(9);
    let mut left = 0;
    sim.run_with_traffic(Duration::from_secs(1), TRAFFIC_EVERY, &mut |_, _, e| {
        left += usize::from(matches!(e, Event::MemberLeft(n) if n == "node-9"));
    });
    sim.kill(9);
    sim_run(&mut sim, Duration::from_secs(5), &mut watch, true);
    assert_eq!(
        left, 19,
        "every other node reports the departure as a leave"
    );
    for n in sim.nodes.iter().filter(|n| n.up) {
        let m = n.gossip.member("node-9").unwrap();
        assert_eq!(m.state, MemberState::Left);
        assert!(!m.held);
    }
}
