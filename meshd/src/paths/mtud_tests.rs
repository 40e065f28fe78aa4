//! The search in virtual time: a simulated path that carries packets up to its MTU and loses
//! larger ones (a black hole: no ICMP), with outages and an MTU that changes under it.

use super::*;

const FLOOR: u16 = 1230;
const CEILING: u16 = 1450;

/// A path: packets up to `mtu` pass; with `up` false nothing passes.
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
            busy: false,
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
    // Then confirmed once a minute, not probed in a loop.
    let pairs = sim.pairs;
    sim.run(Duration::from_secs(120));
    assert!(sim.pairs - pairs <= 3, "{}", sim.pairs - pairs);
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
    assert!(
        sim.pairs - pairs <= 6,
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
    assert_eq!(sim.s.source(), MtuSource::Configured);
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
fn an_idle_peer_is_confirmed_rarely_and_a_busy_one_often() {
    let mut idle = Sim::new(1500);
    idle.run(Duration::from_secs(600));
    // The first confirmation, then one a minute.
    assert!((10..=12).contains(&idle.pairs), "{}", idle.pairs);
    let mut busy = Sim::new(1500);
    busy.busy = true;
    busy.run(Duration::from_secs(600));
    assert!((295..=305).contains(&busy.pairs), "{}", busy.pairs);
    // What that costs: bytes of requests a second (replies as many again).
    let per_s = busy.s.probe_bytes() as f64 / 600.0;
    assert!(per_s < 800.0, "{per_s}");
    let idle_per_s = idle.s.probe_bytes() as f64 / 600.0;
    assert!(idle_per_s < 40.0, "{idle_per_s}");
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
    assert_eq!(s.source(), MtuSource::Configured);
    assert_eq!(s.poll(now, false), Some(CEILING));
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
