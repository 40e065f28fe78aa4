//! Hole punching (encrypted mode) in the NAT lab: a1 behind router-a and b1 behind router-b,
//! both configured with nothing but the seed. With router-b switched to the port-keeping kind
//! of masquerade (its `fully-random` rule replaced, and the switch read back from its
//! ruleset), a1↔b1 becomes `direct (punched)`: ICMP and a checksummed TCP transfer both ways.
//! Before the switch the status says the pair is not punchable, and why. With punching off
//! (`--wireguard-hole-punching false`, the test switch), the pair stays without a direct path
//! over the same window: the punch, not something else, made the path.

use std::time::{Duration, Instant};

use meshd::status::Status;
use meshd_lab::probe::{ping, tcp_transfer};
use meshd_lab::Topology;

use crate::gossip::wait_for_mesh;
use crate::nat::{nat_spec, pod, reach, reach_of, A1, B1};
use crate::support::{require_root, status, try_status, wait_for, wait_within};

/// How long a pair without punching is watched: many times what punching takes (about a
/// second once both are members; `nat_punch_time`).
const WINDOW: Duration = Duration::from_secs(20);

/// Replaces router-b's `masquerade fully-random` by a port-keeping `masquerade`, forgets its
/// mappings, and checks the ruleset now in force.
fn router_b_keeps_ports(t: &Topology) {
    let rb = t.router_ns("rb");
    let before = ruleset(&rb);
    assert!(before.contains("masquerade fully-random"), "{before}");
    t.nft_file(&rb, &meshd_lab::topology::nat::nat_b_rules(false))
        .unwrap();
    let after = ruleset(&rb);
    assert!(
        after.contains("masquerade") && !after.contains("random"),
        "{after}"
    );
    crate::nat::conntrack(&rb, &["-F"]);
}

fn ruleset(ns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_punched(s: &Status, t: &Topology, j: usize) -> bool {
    s.peers.iter().any(|p| {
        p.name == t.hosts[j].name
            && p.reach
                .as_ref()
                .is_some_and(|r| r.route == "direct (punched)")
    })
}

/// Host `i`'s view of `j` once it is a punched direct path. After router-b's switch, b1's new
/// mapping is observed at its next WireGuard datagram to a public member (its NAT keepalive,
/// within 25 s) and reported in that member's next summary: a longer deadline than SETTLE.
fn punched(t: &Topology, i: usize, j: usize) -> meshd::status::reach::ReachStatus {
    let s = wait_within(
        "direct (punched)",
        Duration::from_secs(90),
        || match try_status(t, i) {
            Some(s) if is_punched(&s, t, j) => Ok(s),
            other => Err(Box::new(other)),
        },
    );
    reach_of(&s, t, j)
}

#[test]
fn nat_punch_a_pair_behind_port_keeping_nats_becomes_direct_punched() {
    require_root();
    let t = Topology::up(nat_spec("punch", &[])).unwrap();
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    // Router-b maps each destination anew: not punchable, and the status says why.
    let s = wait_for(&t, A1, "b1 not punchable", |s| {
        s.peers.iter().any(|p| {
            p.name == t.hosts[B1].name
                && p.reach
                    .as_ref()
                    .and_then(|r| r.punch.as_ref())
                    .is_some_and(|p| p.state == "not punchable")
        })
    });
    let why = reach_of(&s, &t, B1).punch.unwrap().why;
    assert!(why.contains("maps each destination anew"), "{why}");
    router_b_keeps_ports(&t);
    let at = Instant::now();
    let ab = punched(&t, A1, B1);
    let ba = punched(&t, B1, A1);
    println!(
        "punched-direct {:?} after router-b keeps ports: a1 {ab:?}\nb1 {ba:?}",
        at.elapsed()
    );
    assert!(ab.endpoint.starts_with("198.18.0.102:"), "{ab:#?}");
    assert!(ba.endpoint.starts_with("198.18.0."), "{ba:#?}");
    for r in [&ab, &ba] {
        let p = r.punch.as_ref().unwrap();
        assert!(p.attempts >= 1 && p.punched_secs.is_some(), "{r:#?}");
    }
    reach(&t, A1, B1);
    reach(&t, B1, A1);
    for (n, (x, y)) in [(A1, B1), (B1, A1)].into_iter().enumerate() {
        let ((from, _), (to, addr)) = (pod(&t, x), pod(&t, y));
        let r = tcp_transfer(&from, &to, addr, 5300 + n as u16, 4 << 20).unwrap();
        assert!(r.verified, "{r:?}");
    }
    // The text status names it too.
    let h = &t.hosts[A1];
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(crate::support::meshd_bin())
        .args(["status", "--run-dir"])
        .arg(h.dir.join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("direct (punched)") && text.contains("punch punched"),
        "{text}"
    );
}

#[test]
fn nat_punch_off_the_same_pair_stays_without_a_direct_path() {
    require_root();
    let mut spec = nat_spec("nopunch", &["--wireguard-hole-punching", "false"]);
    spec.paths.nat_b_keeps_ports = true;
    let t = Topology::up(spec).unwrap();
    let rules = ruleset(&t.router_ns("rb"));
    assert!(
        rules.contains("masquerade") && !rules.contains("random"),
        "{rules}"
    );
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    // Both know each other's public endpoints: only punching is missing.
    wait_for(&t, A1, "b1's public endpoint known", |s| {
        s.peers.iter().any(|p| {
            p.name == t.hosts[B1].name
                && p.candidates.iter().any(|c| c.starts_with("198.18.0.102:"))
        })
    });
    let ((a1_ns, _), (_, b1_addr)) = (pod(&t, A1), pod(&t, B1));
    let until = Instant::now() + WINDOW;
    while Instant::now() < until {
        let r = reach_of(&status(&t, A1), &t, B1);
        assert!(r.heard_secs.is_none() && r.route == "direct", "{r:#?}");
        assert!(r.punch.is_none(), "{r:#?}");
        assert!(
            ping(&a1_ns, b1_addr, 1).is_err(),
            "a1 reached b1 without punching"
        );
    }
}

/// Router-b keeps ports from the start: the time from a1 and b1 both listing each other as
/// alive members to both naming the pair `direct (punched)` (polled every 20 ms), printed for
/// BENCHMARKS.md (tests/bench/punch takes the median of several runs).
#[test]
fn nat_punch_time_from_members_to_punched_direct() {
    require_root();
    let mut spec = nat_spec("punchtime", &[]);
    spec.paths.nat_b_keeps_ports = true;
    let t = Topology::up(spec).unwrap();
    let member = |s: &Status, j: usize| {
        s.members.as_ref().is_some_and(|m| {
            m.iter()
                .any(|m| m.name == t.hosts[j].name && m.state == "alive")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut members_at, mut punched_at) = (None, None);
    while punched_at.is_none() {
        assert!(Instant::now() < deadline, "a1↔b1 not punched within 60 s");
        let (Some(a), Some(b)) = (try_status(&t, A1), try_status(&t, B1)) else {
            continue;
        };
        let now = Instant::now();
        if members_at.is_none() && member(&a, B1) && member(&b, A1) {
            members_at = Some(now);
        }
        if members_at.is_some() && is_punched(&a, &t, B1) && is_punched(&b, &t, A1) {
            punched_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = punched_at.unwrap() - members_at.unwrap();
    println!("punch: members→punched-direct {} ms", took.as_millis());
    reach(&t, A1, B1);
    reach(&t, B1, A1);
}
