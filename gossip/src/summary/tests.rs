#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Path summaries in the simulator: spread to every member, each under its reporter's
//! signature; updated on a change and not on jitter; rate-limited; bounded; gone with their
//! reporter; repaired by pulls on a lossy network.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::codec::{self, tests::report as sample};
use super::*;
use crate::sim::scenario::{self, Watch};
use crate::sim::{NetConfig, Sim};
use crate::wire::{self, Kind};
use crate::Config;

fn config() -> Config {
    Config {
        expected_nodes: 16,
        ..Config::default()
    }
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

/// Node `i`'s reports about every other node of `n`: kernel VXLAN, an RTT that says who is who;
/// sorted by peer name, as a summary holds them.
fn reports(i: usize, n: usize, path: PathCode) -> Vec<PathReport> {
    let mut r: Vec<PathReport> = (0..n)
        .filter(|&j| j != i)
        .map(|j| PathReport {
            path,
            ..sample(&name(j), 100 * (i as u64 + 1) + j as u64)
        })
        .collect();
    r.sort_by(|a, b| a.peer.cmp(&b.peer));
    r
}

/// A cluster of `n` formed in the simulator, each node reporting `path` to every other.
fn cluster(n: usize, net: NetConfig, path: PathCode) -> Sim {
    let (mut sim, _, report) = scenario::bootstrap(n, &config(), net, 7);
    assert!(report.bootstrap.is_some(), "the cluster formed");
    for i in 0..n {
        let now = sim.now;
        sim.nodes[i].gossip.set_paths(reports(i, n, path), now);
    }
    sim
}

/// What every up node holds of every other up node's summary: (observer, reporter) → reports.
fn held(sim: &Sim) -> HashMap<(usize, String), Vec<PathReport>> {
    let mut out = HashMap::new();
    for (i, node) in sim.nodes.iter().enumerate().filter(|(_, n)| n.up) {
        for s in node.gossip.summaries() {
            out.insert((i, s.reporter.to_owned()), s.reports.to_vec());
        }
    }
    out
}

/// Whether every up node holds, from every other up node, what that node published.
fn converged(sim: &Sim) -> bool {
    let held = held(sim);
    let up: Vec<usize> = (0..sim.nodes.len()).filter(|&i| sim.nodes[i].up).collect();
    up.iter().all(|&i| {
        up.iter().filter(|&&j| j != i).all(|&j| {
            let own = sim.nodes[j]
                .gossip
                .own_summary()
                .map(|s| s.reports.to_vec());
            own.is_some() && held.get(&(i, name(j))) == own.as_ref()
        })
    })
}

fn run_until(sim: &mut Sim, done: impl Fn(&Sim) -> bool) -> bool {
    let mut watch = Watch::default();
    scenario::run_until(sim, &mut watch, done).is_some()
}

fn chunks_in(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .map(|n| n.gossip.counters().summary_chunks_in)
        .sum()
}

#[test]
fn every_member_holds_every_summary_as_its_reporter_signed_it() {
    let mut sim = cluster(12, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged), "summaries spread to all");
    let held = held(&sim);
    assert_eq!(held.len(), 12 * 11);
    assert_eq!(held[&(4, name(9))], reports(9, 12, PathCode::KernelVxlan));
    // A quiet cluster sends no summary again: only changes travel.
    let before = chunks_in(&sim);
    sim.run_for(Duration::from_secs(60), &mut |_, _, _| {});
    assert_eq!(chunks_in(&sim), before);
    assert!(sim
        .nodes
        .iter()
        .all(|n| n.gossip.counters().summary_chunks_refused == 0));
}

#[test]
fn a_change_spreads_and_jitter_does_not() {
    let mut sim = cluster(8, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged));
    let version = sim.nodes[3].gossip.own_summary().unwrap().version;
    // RTTs a fifth off, a tenth of a millisecond: no new version.
    let jitter: Vec<PathReport> = reports(3, 8, PathCode::KernelVxlan)
        .into_iter()
        .map(|r| PathReport {
            rtt: r.rtt.map(|d| d + d / 5),
            ..r
        })
        .collect();
    let now = sim.now;
    sim.nodes[3].gossip.set_paths(jitter, now);
    assert_eq!(sim.nodes[3].gossip.own_summary().unwrap().version, version);
    // One peer demoted to userspace: news, everywhere.
    let mut changed = reports(3, 8, PathCode::KernelVxlan);
    changed[2].path = PathCode::Userspace;
    changed[2].health = Health::Degraded;
    changed[2].reason = Reason::ProbesLost;
    sim.nodes[3].gossip.set_paths(changed.clone(), now);
    assert!(sim.nodes[3].gossip.own_summary().unwrap().version > version);
    assert!(run_until(&mut sim, |s| {
        (0..8)
            .filter(|&i| i != 3)
            .all(|i| held(s).get(&(i, name(3))) == Some(&changed))
    }));
}

#[test]
fn versions_are_rate_limited() {
    let mut sim = cluster(4, NetConfig::default(), PathCode::KernelVxlan);
    let v0 = sim.nodes[1].gossip.own_summary().unwrap().version;
    // A path that flaps every 100 ms for a minute.
    for step in 0..600u32 {
        let path = if step % 2 == 0 {
            PathCode::Userspace
        } else {
            PathCode::KernelVxlan
        };
        let now = sim.now;
        sim.nodes[1].gossip.set_paths(reports(1, 4, path), now);
        sim.run_for(Duration::from_millis(100), &mut |_, _, _| {});
    }
    let made = sim.nodes[1].gossip.own_summary().unwrap().version - v0;
    let most = u64::from(PUBLISH_BURST) + 60 / PUBLISH_EVERY.as_secs() + 1;
    assert!(
        made >= 3 && made <= most,
        "{made} versions in a minute, at most {most}"
    );
}

#[test]
fn what_members_act_on_is_published_at_once_though_the_tokens_are_spent_within_a_rate() {
    let mut sim = cluster(4, NetConfig::default(), PathCode::KernelVxlan);
    // Spend the tokens.
    for step in 0..4u32 {
        let path = [PathCode::Userspace, PathCode::KernelVxlan][step as usize % 2];
        let now = sim.now;
        sim.nodes[1].gossip.set_paths(reports(1, 4, path), now);
        sim.run_for(Duration::from_millis(100), &mut |_, _, _| {});
    }
    let version = |sim: &Sim| sim.nodes[1].gossip.own_summary().unwrap().version;
    let v0 = version(&sim);
    let mut offered = reports(1, 4, PathCode::KernelVxlan);
    offered[0].relays = vec![crate::RelayOffer {
        other: offered[1].peer.clone(),
        port: 40000,
    }];
    let now = sim.now;
    sim.nodes[1].gossip.set_paths(offered.clone(), now);
    assert_eq!(version(&sim), v0 + 1, "a new relay port: at once");
    // Anything else still waits for a token.
    offered[2].path = PathCode::Userspace;
    sim.nodes[1].gossip.set_paths(offered.clone(), now);
    assert_eq!(version(&sim), v0 + 1);
    // A peer observed at a new endpoint (it learns its NAT's mapping from it): at once too,
    // until the urgent tokens are spent.
    for port in 0..10u16 {
        offered[1].observed = Some(std::net::SocketAddr::from(([198, 18, 0, 9], 5000 + port)));
        sim.nodes[1].gossip.set_paths(offered.clone(), now);
    }
    assert_eq!(version(&sim), v0 + u64::from(super::publish::URGENT_BURST));
    // Then one a period.
    sim.run_for(super::publish::URGENT_EVERY, &mut |_, _, _| {});
    let now = sim.now;
    offered[1].observed = Some(std::net::SocketAddr::from(([198, 18, 0, 9], 6000)));
    sim.nodes[1].gossip.set_paths(offered, now);
    assert_eq!(
        version(&sim),
        v0 + u64::from(super::publish::URGENT_BURST) + 1
    );
}

#[test]
fn a_chunk_not_signed_by_its_reporter_is_refused() {
    let mut sim = cluster(3, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged));
    let victim = sim.nodes[1].gossip.own_summary().unwrap().version;
    let lie = vec![PathReport {
        health: Health::Down,
        ..sample("node-2", 1)
    }];
    let datagram = |reporter: &str, key: usize, version: u64| {
        let enc = codec::encode(reporter, version, &lie, 0, &Sim::signing_key(key), 1191);
        let mut out = Vec::new();
        wire::encode_envelope(Kind::Summary, &enc.chunks[0], &mut out);
        out
    };
    let from = sim.nodes[2].gossip.local_record().gossip_addr;
    let now = sim.now;
    let g = &mut sim.nodes[0].gossip;
    // Node 2 speaking for node 1, with its own key; under a name no member has; a flipped byte.
    g.handle_datagram(from, &datagram("node-1", 2, victim + 1), now);
    g.handle_datagram(from, &datagram("node-77", 2, 1), now);
    let mut flipped = datagram("node-1", 1, victim + 1);
    let at = flipped.len() - 70;
    flipped[at] ^= 1;
    g.handle_datagram(from, &flipped, now);
    assert_eq!(g.counters().summary_chunks_refused, 3);
    let s = g.summaries().find(|s| s.reporter == "node-1").unwrap();
    assert_eq!(
        (s.version, s.reports),
        (victim, &reports(1, 3, PathCode::KernelVxlan)[..])
    );
    // Node 1's own key, a newer version: its word, taken.
    g.handle_datagram(from, &datagram("node-1", 1, victim + 1), now);
    let s = g.summaries().find(|s| s.reporter == "node-1").unwrap();
    assert_eq!((s.version, s.reports), (victim + 1, &lie[..]));
}

#[test]
fn a_large_summary_is_bounded_and_arrives_whole() {
    let mut sim = cluster(3, NetConfig::default(), PathCode::KernelVxlan);
    // Names so long that 64 chunks hold fewer than MAX_ENTRIES: both bounds bite.
    let long = "n".repeat(55);
    let many: Vec<PathReport> = (0..MAX_ENTRIES + 300)
        .map(|j| sample(&format!("{long}-{j:05}"), 500))
        .collect();
    let now = sim.now;
    sim.nodes[0].gossip.set_paths(many.clone(), now);
    let own = sim.nodes[0].gossip.own_summary().unwrap();
    assert_eq!(own.reports.len() + own.omitted as usize, MAX_ENTRIES + 300);
    assert!(own.reports.len() < MAX_ENTRIES);
    // The same reports again are no news, whatever was left out.
    let version = own.version;
    sim.nodes[0]
        .gossip
        .set_paths(many, now + Duration::from_secs(30));
    assert_eq!(sim.nodes[0].gossip.own_summary().unwrap().version, version);
    let own = sim.nodes[0].gossip.own_summary().unwrap();
    let chunks = &sim.nodes[0].gossip.summaries.own.encoded.chunks;
    assert!(chunks.len() <= usize::from(MAX_CHUNKS));
    assert!(chunks
        .iter()
        .all(|c| c.len() + wire::ENVELOPE_OVERHEAD <= config().max_datagram));
    let want = own.reports.to_vec();
    assert!(run_until(&mut sim, |s| {
        held(s).get(&(1, name(0))) == Some(&want) && held(s).get(&(2, name(0))) == Some(&want)
    }));
}

#[test]
fn a_summary_goes_with_its_reporter() {
    let mut sim = cluster(5, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged));
    sim.leave(2);
    sim.kill(4);
    assert!(run_until(&mut sim, |s| {
        [0, 1, 3].iter().all(|&i| {
            let reporters: Vec<String> = s.nodes[i]
                .gossip
                .summaries()
                .map(|x| x.reporter.to_owned())
                .collect();
            !reporters.contains(&name(2)) && !reporters.contains(&name(4)) && reporters.len() == 2
        })
    }));
    // And from memory at the next sweep.
    sim.run_for(Duration::from_secs(6), &mut |_, _, _| {});
    assert_eq!(sim.nodes[0].gossip.summaries.reporters.len(), 2);
}

#[test]
fn a_lossy_network_converges_through_pulls() {
    let net = NetConfig {
        loss: 0.2,
        ..NetConfig::default()
    };
    let mut sim = cluster(10, net, PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged), "pulls repair lost chunks");
    let now = sim.now;
    let changed = reports(6, 10, PathCode::Userspace);
    sim.nodes[6].gossip.set_paths(changed.clone(), now);
    assert!(run_until(&mut sim, |s| {
        (0..10)
            .filter(|&i| i != 6)
            .all(|i| held(s).get(&(i, name(6))) == Some(&changed))
    }));
}

#[test]
fn a_joiner_pulls_what_it_missed() {
    let mut sim = cluster(6, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged));
    let i = sim
        .add_node(config(), Sim::local_node(6, crate::SubnetRequest::Auto))
        .unwrap();
    sim.join(i, 0);
    let now: Instant = sim.now;
    sim.nodes[i]
        .gossip
        .set_paths(reports(i, 7, PathCode::KernelVxlan), now);
    assert!(run_until(&mut sim, |s| scenario::fully_meshed(s) && converged(s)));
}

#[test]
fn pulls_are_answered_only_to_live_members_and_within_the_budget() {
    let mut sim = cluster(3, NetConfig::default(), PathCode::KernelVxlan);
    assert!(run_until(&mut sim, converged));
    let pull = |version: u64| {
        let mut out = Vec::new();
        let payload = wire::encode_payload(&codec::Pull { version });
        wire::encode_envelope(Kind::SummaryPull, &payload, &mut out);
        out
    };
    let member = sim.nodes[1].gossip.local_record().gossip_addr;
    let stranger: std::net::SocketAddr = "192.0.2.99:7946".parse().unwrap();
    // Past the once-a-second of the pulls that spread the summaries.
    let now = sim.now + Duration::from_secs(2);
    let g = &mut sim.nodes[0].gossip;
    while g.poll_transmit().is_some() {}
    g.handle_datagram(stranger, &pull(0), now);
    assert!(
        g.poll_transmit().is_none(),
        "nothing to an address outside the cluster"
    );
    assert_eq!(g.counters().summary_pulls_refused, 1);
    let current = g.own_summary().unwrap().version;
    g.handle_datagram(member, &pull(current), now);
    assert!(
        g.poll_transmit().is_none(),
        "nothing newer than what it holds"
    );
    g.handle_datagram(member, &pull(0), now);
    let answer: Vec<_> = std::iter::from_fn(|| g.poll_transmit()).collect();
    assert!(!answer.is_empty() && answer.iter().all(|t| t.dst == member));
    g.handle_datagram(member, &pull(0), now);
    assert!(g.poll_transmit().is_none(), "once a second per member");
    assert_eq!(g.counters().summary_pulls_refused, 2);
}

#[test]
fn relay_ports_round_trip_bounded_and_an_entry_without_them_reads_as_before() {
    let key = crate::SigningKey::from_seed(&[1; 32]);
    let mut relayed = sample("b", 400);
    relayed.relays = (0..12)
        .map(|i| RelayOffer {
            other: format!("node-{i}"),
            port: 40000 + i,
        })
        .collect();
    let enc = codec::encode("a", 1, &[relayed.clone(), sample("c", 5)], 0, &key, 1191);
    let (back, bad) = codec::decode(&enc.chunks[0]).unwrap().reports();
    relayed.relays.truncate(MAX_RELAY_OFFERS);
    assert_eq!((back, bad), (vec![relayed, sample("c", 5)], 0));
}
