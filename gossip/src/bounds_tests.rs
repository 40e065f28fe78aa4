#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::record::encode_record;
use crate::sim::scenario::{self, Watch};
use crate::sim::{NetConfig, Sim};
use crate::wire::{self, Kind, Records, StateRequest};
use crate::{Config, MemberState};
use std::net::SocketAddr;

fn config() -> Config {
    Config {
        expected_nodes: 8,
        ..Config::default()
    }
}

fn datagram(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_envelope(kind, payload, &mut out);
    out
}

fn requester(n: u32) -> SocketAddr {
    SocketAddr::from(((0x0a09_0000u32 + n).to_be_bytes(), 7946))
}

#[test]
fn the_serve_budget_refills_at_its_rate_and_never_overdraws() {
    let t0 = Instant::now();
    let mut b = Budget::new(t0);
    assert!(b.take(SERVE_BURST as usize, t0));
    assert!(!b.take(1, t0));
    let later = t0 + Duration::from_millis(500);
    assert!(
        !b.take(SERVE_RATE as usize, later),
        "half a second refills half"
    );
    assert!(b.take(SERVE_RATE as usize / 2, later));
    // Idle for long: full again, never more.
    let much_later = later + Duration::from_secs(3600);
    assert!(!b.take(SERVE_BURST as usize + 1, much_later));
    assert!(b.take(SERVE_BURST as usize, much_later));
}

/// A flood of state requests from many addresses: each requester once per second, and no more
/// requesters remembered than the bound; the rest refused and counted, and the maps forget
/// them after their period.
#[test]
fn state_requests_are_served_within_bounds() {
    let now = Instant::now();
    let mut g = crate::gossip::tests::lone(now);
    while g.poll_transmit().is_some() {}
    let request = datagram(
        Kind::StateRequest,
        &wire::encode_payload(&StateRequest { nonce: 1 }),
    );
    let flood = 2 * MAX_REQUESTERS as u32;
    for n in 0..flood {
        g.handle_datagram(requester(n), &request, now);
        g.handle_datagram(requester(n), &request, now);
    }
    let chunks = std::iter::from_fn(|| g.poll_transmit()).count();
    assert_eq!(
        chunks, MAX_REQUESTERS,
        "one one-chunk dump per remembered requester"
    );
    // Every request of a requester beyond the bound, twice each.
    assert_eq!(
        g.counters().state_requests_refused,
        2 * (u64::from(flood) - MAX_REQUESTERS as u64)
    );
    // A sweep later, the requesters are forgotten and served again.
    let mut t = now;
    while t < now + Duration::from_secs(6) {
        t = g.poll_timeout().unwrap();
        g.handle_timeout(t);
    }
    assert!(g.served.is_empty() && g.pulled.is_empty());
    while g.poll_transmit().is_some() {}
    g.handle_datagram(requester(flood - 1), &request, t);
    assert_eq!(std::iter::from_fn(|| g.poll_transmit()).count(), 1);
}

#[test]
fn the_transmit_queue_is_bounded() {
    let now = Instant::now();
    let mut g = crate::gossip::tests::lone(now);
    while g.poll_transmit().is_some() {}
    for n in 0..MAX_TRANSMITS as u32 + 10 {
        g.send(requester(n), Kind::RecordPull, &[]);
    }
    assert_eq!(g.transmits.len(), MAX_TRANSMITS);
    assert_eq!(g.counters().transmits_dropped, 10);
}

/// A dead member is remembered for the reclaim grace and its binding for an hour, then pruned.
#[test]
fn departed_members_are_forgotten_after_a_while() {
    let (mut sim, _, report) = scenario::bootstrap(3, &config(), NetConfig::default(), 4);
    assert!(report.bootstrap.is_some());
    sim.kill(2);
    let mut watch = Watch::default();
    let down = |s: &Sim| {
        s.nodes[0]
            .gossip
            .member("node-2")
            .is_some_and(|m| m.state == MemberState::Down)
    };
    assert!(scenario::run_until(&mut sim, &mut watch, down).is_some());
    sim.run_for(DEPARTED_KEEP - Duration::from_secs(60), &mut |_, _, _| {});
    assert!(
        sim.nodes[0].gossip.member("node-2").is_some(),
        "kept for the hour"
    );
    sim.run_for(Duration::from_secs(120), &mut |_, _, _| {});
    let g = &sim.nodes[0].gossip;
    assert!(g.member("node-2").is_none());
    assert!(
        g.inbox().known("node-2").is_none(),
        "binding and generation gone too"
    );
    assert!(!g.bindings().iter().any(|(n, _)| n == "node-2"));
    assert_eq!(g.member("node-1").unwrap().state, MemberState::Alive);
}

/// A member invents names: the table holds at most its cap, refuses (and counts) the rest, and
/// a sweep evicts the invented ones (never seen alive by SWIM), never a live member.
#[test]
fn invented_names_fill_only_the_room_departed_names_would_use() {
    let (mut sim, _, report) = scenario::bootstrap(2, &config(), NetConfig::default(), 5);
    assert!(report.bootstrap.is_some());
    let mut fake = sim.nodes[1].gossip.local_record().clone();
    let from = fake.gossip_addr;
    for n in 0..MAX_NAMES as u32 + 50 {
        fake.name = format!("ghost-{n}");
        fake.gossip_addr = requester(n);
        let blob = encode_record(&fake, None).unwrap();
        let payload = wire::encode_payload(&Records {
            records: vec![&blob],
        });
        let now = sim.now;
        sim.nodes[0]
            .gossip
            .handle_datagram(from, &datagram(Kind::Records, &payload), now);
    }
    let g = &sim.nodes[0].gossip;
    assert_eq!(g.inbox().len(), MAX_NAMES);
    // Own name and node-1 were there first: 52 of the ghosts found no room.
    assert_eq!(g.counters().refused_full, 52);
    sim.run_for(Duration::from_secs(6), &mut |_, _, _| {});
    let g = &sim.nodes[0].gossip;
    assert!(g.inbox().len() <= MAX_NAMES * 3 / 4, "{}", g.inbox().len());
    assert!(g.members.len() <= MAX_NAMES * 3 / 4);
    assert_eq!(g.member("node-1").unwrap().state, MemberState::Alive);
}
