//! Hole punching (encrypted mode) in the NAT lab: a1 behind router-a and b1 behind router-b,
//! both configured with nothing but the seed. With router-b keeping ports from the start, both
//! name a1↔b1 `direct (punched)` (a relay kept for the pair says it waits on standby, not that no
//! direct path works), ICMP and a checksummed TCP transfer pass both ways. With
//! router-b mapping each destination anew the status says the pair is not punchable, and why;
//! switched at run time to the port-keeping kind (its `fully-random` rule replaced, and the
//! switch read back from its ruleset), the pair goes direct and carries traffic. With punching off
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
    // Each reaches the other at its NAT's address. (After a switch at run time the pair may
    // be joined by a handshake that went to a candidate before either side's punch attempt:
    // the route then says `direct`; the punch from the start is below.)
    let public = |i: usize, j: usize| {
        try_status(&t, i).filter(|s| {
            let r = reach_of(s, &t, j);
            r.heard_secs.is_some() && r.endpoint.starts_with("198.18.0.10")
        })
    };
    wait_within(
        "a1↔b1 direct at their NATs",
        Duration::from_secs(90),
        || match (public(A1, B1), public(B1, A1)) {
            (Some(a), Some(b)) => Ok((a, b)),
            other => Err(Box::new(other)),
        },
    );
    let (ab, ba) = (
        reach_of(&status(&t, A1), &t, B1),
        reach_of(&status(&t, B1), &t, A1),
    );
    println!(
        "a1↔b1 {:?} after router-b keeps ports: a1 says {} ({:?}; relay {:?}), b1 says {} ({:?})",
        at.elapsed(),
        ab.route,
        ab.punch,
        ab.relay,
        ba.route,
        ba.punch
    );
    // A relay kept for the pair waits on standby: nothing says no direct path works.
    for r in [&ab, &ba] {
        assert!(
            r.relay
                .as_deref()
                .is_none_or(|w| w.contains("standby, the direct path works")),
            "{r:#?}"
        );
    }
    traffic_both_ways(&t);
}

/// Pings and a checksummed TCP transfer a1→b1 and b1→a1.
fn traffic_both_ways(t: &Topology) {
    reach(t, A1, B1);
    reach(t, B1, A1);
    for (n, (x, y)) in [(A1, B1), (B1, A1)].into_iter().enumerate() {
        let ((from, _), (to, addr)) = (pod(t, x), pod(t, y));
        let r = tcp_transfer(&from, &to, addr, 5300 + n as u16, 4 << 20).unwrap();
        assert!(r.verified, "{r:?}");
    }
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
    // A relay may carry the pair (one keeps a port for NAT'd pairs before they need it), but
    // nothing authenticates at b1's NAT: no direct path without punching.
    let ((a1_ns, _), (_, b1_addr)) = (pod(&t, A1), pod(&t, B1));
    let until = Instant::now() + WINDOW;
    while Instant::now() < until {
        let r = reach_of(&status(&t, A1), &t, B1);
        let relayed = r.route.starts_with("relayed via");
        assert!(r.heard_secs.is_none() || relayed, "{r:#?}");
        assert!(!r.endpoint.starts_with("198.18.0.102:"), "{r:#?}");
        assert!(r.punch.is_none(), "{r:#?}");
        if ping(&a1_ns, b1_addr, 1).is_ok() {
            let r = reach_of(&status(&t, A1), &t, B1);
            assert!(
                r.route.starts_with("relayed via"),
                "a1 reached b1 directly without punching: {r:#?}"
            );
        }
    }
}

/// Router-b keeps ports from the start (`--nat-b-keeps-ports`): both a1 and b1 name the pair
/// `direct (punched)`, in the JSON and the text status, and pods talk both ways. Prints the
/// time from both listing each other as alive members to both naming the punch (polled every
/// 20 ms; tests/bench/punch takes the median of several runs).
#[test]
fn nat_punch_a_pair_behind_port_keeping_nats_from_the_start_is_punched_both_ways() {
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
    for (i, j) in [(A1, B1), (B1, A1)] {
        let r = reach_of(&status(&t, i), &t, j);
        let p = r.punch.as_ref().unwrap();
        assert!(r.endpoint.starts_with("198.18.0.10"), "{r:#?}");
        assert!(p.attempts >= 1 && p.punched_secs.is_some(), "{r:#?}");
    }
    traffic_both_ways(&t);
    // The text status names it too, with the punch line.
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
