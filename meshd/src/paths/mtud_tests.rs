//! The search in virtual time: a simulated path that carries packets up to its MTU and loses
//! larger ones (a black hole: no ICMP), with outages and an MTU that changes under it, and a
//! peer that carries pod traffic (`busy`) or not.

use super::*;

const FLOOR: u16 = 1230;
const CEILING: u16 = 1450;

/// A path: packets up to `mtu` pass; with `up` false nothing passes. Busy (pod traffic on
/// every step) unless told otherwise.
struct Sim {
    s: MtuSearch,
    now: Instant,
    mtu: u16,
    up: bool,
    busy: bool,
    /// Probe pairs sent.
    pairs: u32,
    changes: Vec<MtuChange>,
}

impl Sim {
    fn new(mtu: u16) -> Sim {
        let now = Instant::now();
        Sim {
            s: MtuSearch::new(FLOOR, CEILING, now),
            now,
            mtu,
            up: true,
            busy: true,
            pairs: 0,
            changes: Vec::new(),
        }
    }

    /// Runs for `d` of virtual time in 10 ms steps; a probe pair resolves within the step it
    /// was sent in (answered) or after the timeout (lost).
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            if let Some(size) = self.s.poll(self.now, self.busy) {
                self.pairs += 1;
                let big = self.up && size <= self.mtu;
                let at = if big {
                    self.now
                } else {
                    self.now + MTU_PROBE_TIMEOUT
                };
                let small_at = if self.up {
                    self.now
                } else {
                    self.now + MTU_PROBE_TIMEOUT
                };
                self.s.record(SMALL_PROBE, self.up, small_at);
                self.s.record(size, big, at);
                if !big || !self.up {
                    self.now = at.max(small_at);
                }
            }
            if let Some(c) = self.s.take_change() {
                self.changes.push(c);
            }
            self.now += Duration::from_millis(10);
        }
    }
}

#[test]
fn a_path_that_carries_the_pod_mtu_is_confirmed_with_one_probe() {
    let mut sim = Sim::new(1500);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.s.mtu(), CEILING);
    assert_eq!(sim.s.source(), MtuSource::Probed);
    assert!(sim.s.confirmed().is_some());
    assert!(!sim.s.searching());
    assert_eq!(sim.pairs, 1);
    assert!(sim.changes.is_empty(), "{:?}", sim.changes);
}

#[test]
fn a_black_hole_drops_to_the_floor_at_once_and_the_search_finds_the_exact_mtu() {
    let mut sim = Sim::new(1230 + 17);
    sim.run(Duration::from_secs(3));
    // Two strikes at the ceiling: at the floor within a second and a half.
    assert!(sim
        .changes
        .first()
        .is_some_and(|c| c.black_hole && c.to == FLOOR));
    sim.run(Duration::from_secs(20));
    assert_eq!(sim.s.mtu(), 1247);
    assert_eq!(sim.s.source(), MtuSource::Probed);
    assert!(!sim.s.searching());
    // One change logged per step up, never one per probe.
    assert!(sim.changes.len() <= 9, "{:?}", sim.changes);
    assert_eq!(sim.changes.last().map(|c| c.to), Some(1247));
}

#[test]
fn a_path_of_exactly_the_floor_is_probed_there() {
    let mut sim = Sim::new(FLOOR);
    sim.run(Duration::from_secs(30));
    assert_eq!(sim.s.mtu(), FLOOR);
    assert_eq!(sim.s.source(), MtuSource::Probed);
    assert!(sim.s.confirmed().is_some());
    // Then confirmed every CONFIRM_BUSY under traffic, not probed in a loop.
    let pairs = sim.pairs;
    sim.run(Duration::from_secs(120));
    assert!(sim.pairs - pairs <= 61, "{}", sim.pairs - pairs);
}

#[test]
fn nothing_above_the_floor_leaves_the_floor_assumed() {
    let mut sim = Sim::new(1100);
    sim.run(Duration::from_secs(30));
    assert_eq!(sim.s.mtu(), FLOOR);
    assert_eq!(sim.s.source(), MtuSource::Floor);
    assert!(!sim.s.searching());
    assert!(sim.s.confirmed().is_none());
    let pairs = sim.pairs;
    sim.run(Duration::from_secs(120));
    // At most a pair and its second strike per confirmation.
    assert!(
        sim.pairs - pairs <= 122,
        "a failing floor is not probed in a loop: {}",
        sim.pairs - pairs
    );
}

#[test]
fn an_outage_is_not_an_mtu_small_and_big_lost_together_count_for_nothing() {
    let mut sim = Sim::new(1500);
    sim.up = false;
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.s.mtu(), CEILING, "an outage must not shrink the MTU");
    assert_eq!(sim.s.source(), MtuSource::Unconfirmed);
    assert!(sim.changes.is_empty());
    // Retried every second meanwhile, then confirmed once the path is back.
    assert!((5..=12).contains(&sim.pairs), "{}", sim.pairs);
    sim.up = true;
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.s.source(), MtuSource::Probed);
}

#[test]
fn a_path_mtu_that_shrinks_under_traffic_is_found_within_a_confirmation_and_two_timeouts() {
    let mut sim = Sim::new(1500);
    sim.busy = true;
    sim.run(Duration::from_secs(2));
    assert_eq!(sim.s.mtu(), CEILING);
    sim.mtu = 1300;
    let changed = sim.changes.len();
    sim.run(CONFIRM_BUSY + MTU_PROBE_TIMEOUT * 3);
    let black_hole = sim.changes[changed..].iter().find(|c| c.black_hole);
    assert_eq!(black_hole.map(|c| (c.from, c.to)), Some((CEILING, FLOOR)));
    sim.run(Duration::from_secs(20));
    assert_eq!(sim.s.mtu(), 1300);
}

#[test]
fn a_peer_nobody_talks_to_is_never_probed_and_a_busy_one_often() {
    let mut idle = Sim::new(1500);
    idle.busy = false;
    idle.run(Duration::from_secs(600));
    assert_eq!(idle.pairs, 0, "discovery alone must send nothing");
    assert_eq!(idle.s.probe_bytes(), 0);
    assert_eq!(idle.s.source(), MtuSource::Unconfirmed);
    assert_eq!(idle.s.mtu(), CEILING, "the pod MTU holds, unconfirmed");
    assert!(idle.s.idle(idle.now) && idle.s.untouched());
    let mut busy = Sim::new(1500);
    busy.run(Duration::from_secs(600));
    assert!((295..=305).contains(&busy.pairs), "{}", busy.pairs);
    assert!(!busy.s.idle(busy.now) && !busy.s.untouched());
    // What that costs: bytes of requests a second (replies as many again).
    let per_s = busy.s.probe_bytes() as f64 / 600.0;
    assert!(per_s < 800.0, "{per_s}");
}

#[test]
fn traffic_that_starts_is_confirmed_at_once_and_probing_stops_when_it_does() {
    let mut sim = Sim::new(1500);
    sim.busy = false;
    sim.run(Duration::from_secs(60));
    assert_eq!(sim.pairs, 0);
    // The first step with traffic sends the first probe.
    sim.busy = true;
    sim.run(Duration::from_millis(10));
    assert_eq!(sim.pairs, 1);
    assert_eq!(sim.s.source(), MtuSource::Probed);
    assert!(sim.s.confirmed().is_some());
    sim.run(Duration::from_secs(20));
    // Traffic stops: confirmations go on until the peer is idle, then nothing.
    sim.busy = false;
    let pairs = sim.pairs;
    sim.run(IDLE_AFTER);
    let tail = sim.pairs - pairs;
    assert!(tail <= 5, "{tail}");
    assert!(sim.s.idle(sim.now));
    sim.run(Duration::from_secs(600));
    assert_eq!(sim.pairs - pairs, tail, "an idle peer was probed");
    assert_eq!(sim.s.source(), MtuSource::Probed, "what was found holds");
    // Traffic again, long after the last confirmation: confirmed in the first step.
    sim.busy = true;
    sim.run(Duration::from_millis(10));
    assert_eq!(sim.pairs - pairs, tail + 1);
}

#[test]
fn a_path_that_shrank_while_idle_is_found_when_traffic_returns() {
    let mut sim = Sim::new(1500);
    sim.run(Duration::from_secs(5));
    sim.busy = false;
    sim.run(Duration::from_secs(60));
    sim.mtu = 1300;
    sim.run(Duration::from_secs(60));
    assert_eq!(sim.s.mtu(), CEILING, "nothing probed, nothing learnt");
    sim.busy = true;
    sim.run(MTU_PROBE_TIMEOUT * 3);
    assert!(
        sim.changes.iter().any(|c| c.black_hole && c.to == FLOOR),
        "{:?}",
        sim.changes
    );
    sim.run(Duration::from_secs(20));
    assert_eq!(sim.s.mtu(), 1300);
}

#[test]
fn a_burst_that_meets_a_black_hole_gets_its_search_finished() {
    let mut sim = Sim::new(1247);
    sim.run(Duration::from_millis(10));
    sim.busy = false;
    sim.run(SEARCH_IDLE_AFTER);
    assert_eq!(sim.s.mtu(), 1247);
    assert!(!sim.s.searching());
    let pairs = sim.pairs;
    sim.run(Duration::from_secs(600));
    assert_eq!(sim.pairs, pairs, "found, then idle: nothing more");
}

#[test]
fn the_search_upward_waits_for_traffic() {
    let mut sim = Sim::new(1300);
    sim.run(Duration::from_secs(30));
    assert_eq!(sim.s.mtu(), 1300);
    sim.mtu = 1500;
    sim.busy = false;
    sim.run(RAISE_AFTER * 2);
    assert_eq!(sim.s.mtu(), 1300, "idle: no search upward");
    sim.busy = true;
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.s.mtu(), CEILING);
}

#[test]
fn a_path_that_grew_is_found_by_the_search_upward() {
    let mut sim = Sim::new(1300);
    sim.run(Duration::from_secs(30));
    assert_eq!(sim.s.mtu(), 1300);
    sim.mtu = 1500;
    sim.run(RAISE_AFTER - Duration::from_secs(40));
    assert_eq!(sim.s.mtu(), 1300, "not before the re-check is due");
    sim.run(Duration::from_secs(40));
    assert_eq!(sim.s.mtu(), CEILING);
    assert_eq!(
        sim.changes.last().map(|c| (c.from, c.to)),
        Some((1300, CEILING))
    );
}

#[test]
fn replies_to_no_probe_in_flight_change_nothing() {
    let now = Instant::now();
    let mut s = MtuSearch::new(FLOOR, CEILING, now);
    s.record(CEILING, true, now);
    assert_eq!(s.source(), MtuSource::Unconfirmed);
    assert_eq!(s.poll(now, false), None, "no traffic: nothing to probe");
    assert_eq!(s.poll(now, true), Some(CEILING));
    // Another size than the one in flight: ignored.
    s.record(1300, true, now);
    assert!(s.searching());
    s.record(CEILING, true, now);
    assert_eq!(s.source(), MtuSource::Probed);
}

#[test]
fn the_floor_is_the_ipv6_minimum_less_the_encapsulation() {
    assert_eq!(floor(50), 1230);
    assert_eq!(floor(80), 1200);
    // A ceiling below the floor (a small configured MTU) is the floor.
    let s = MtuSearch::new(1230, 1000, Instant::now());
    assert_eq!(s.mtu(), 1000);
}
