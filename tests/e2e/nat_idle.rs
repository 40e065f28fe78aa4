//! Keepalives through NAT: with the routers' UDP conntrack timeout cut to a few seconds (a
//! stand-in for a NAT's minutes), an idle NAT'd pair still answers the first ping after
//! several timeouts because keepalives held the mapping, and the public-only pair sent not a
//! datagram meanwhile. With keepalives off (`--wireguard-nat-keepalive=0`) the mapping is
//! gone and the first ping is lost: the keepalives are what held it.

use std::time::Duration;

use meshd_lab::probe::ping;
use meshd_lab::topology::nat::sysctl;
use meshd_lab::Topology;

use crate::gossip::wait_for_mesh;
use crate::nat::{
    assert_no_member_down, conntrack, nat_spec, pod, reach, role, A1, B1, PUB1, PUB2,
};
use crate::support::{nft, nft_load, require_root};

/// The routers' UDP conntrack timeout, both kinds (unreplied and stream).
const TIMEOUT_SECS: u64 = 6;
/// Keepalives, when on: well under the timeout, as 25 s is under common NATs' minutes.
const KEEPALIVE: &str = "--wireguard-nat-keepalive=2";
/// WireGuard's passive keepalive answers received data once, 10 s later: the silence of a
/// public pair is counted from after it.
const PASSIVE_KEEPALIVE: Duration = Duration::from_secs(11);
/// Counted silence: with the wait above, the NAT'd pairs idle about 4 timeouts.
const IDLE: Duration = Duration::from_secs(14);

/// Counts pub1's WireGuard datagrams to and from pub2 (gossip, port 7946, not counted).
const COUNT_PUB2: &str = "table inet natidle {
    chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 198.18.0.2 udp dport != 7946 udp sport != 7946 counter
    }
    chain in {
        type filter hook input priority 0; policy accept;
        ip saddr 198.18.0.2 udp dport != 7946 udp sport != 7946 counter
    }
}
";

/// The NAT lab with short conntrack timeouts, every pair in use once, then idle; returns the
/// datagrams pub1 and pub2 exchanged while idle, and whether pub1 → a1 and pub1 → b1 each
/// answered the first ping after.
fn idle_lab(tag: &str, args: &[&str]) -> (Topology, u64, [bool; 2]) {
    let t = Topology::up(nat_spec(tag, args)).unwrap();
    for (_, ns) in t.nat_routers_ns() {
        for kind in ["", "_stream"] {
            let key = format!("net.netfilter.nf_conntrack_udp_timeout{kind}={TIMEOUT_SECS}");
            sysctl(&ns, &key).unwrap();
        }
    }
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    for (x, y) in [(A1, PUB1), (PUB1, A1), (B1, PUB1), (PUB1, B1), (PUB1, PUB2)] {
        reach(&t, x, y);
    }
    let ns1 = &t.hosts[PUB1].ns;
    nft_load(ns1, COUNT_PUB2);
    // The counters count: a ping to pub2 goes through them.
    reach(&t, PUB1, PUB2);
    assert!(
        counted(ns1) > 0,
        "{}",
        nft(ns1, &["list", "table", "inet", "natidle"], "")
    );
    std::thread::sleep(PASSIVE_KEEPALIVE);
    let before = counted(ns1);
    std::thread::sleep(IDLE);
    let idle = counted(ns1) - before;
    // Whether router-a still maps a1's data port (to pub1): the fault, or its absence.
    let mapped = conntrack(
        &t.router_ns("ra"),
        &["-L", "-p", "udp", "-s", &t.hosts[A1].underlay.to_string()],
    );
    println!(
        "router-a's mappings of a1 after {:?} idle:\n{mapped}",
        PASSIVE_KEEPALIVE + IDLE
    );
    let (ns, _) = pod(&t, PUB1);
    let first = [A1, B1].map(|j| ping(&ns, pod(&t, j).1, 1).is_ok());
    (t, idle, first)
}

fn counted(ns: &str) -> u64 {
    let text = nft(ns, &["list", "table", "inet", "natidle"], "");
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "packets")
        .filter_map(|w| w[1].parse::<u64>().ok())
        .sum()
}

#[test]
fn keepalives_hold_idle_nat_mappings_and_public_pairs_stay_silent() {
    require_root();
    let (t, idle, first) = idle_lab("natka", &[KEEPALIVE]);
    assert_eq!(idle, 0, "pub1 and pub2 exchanged datagrams while idle");
    for (j, answered) in [A1, B1].iter().zip(first) {
        assert!(
            answered,
            "pub1 → {}: the first ping after idling was lost",
            role(&t, *j)
        );
    }
    assert_no_member_down(&t);
}

#[test]
fn without_keepalives_an_idle_nat_mapping_expires() {
    require_root();
    let (t, idle, first) = idle_lab("natnk", &["--wireguard-nat-keepalive=0"]);
    assert_eq!(idle, 0);
    // The fault: router-a no longer maps a1's WireGuard port to pub1's (its gossip port stays
    // mapped: SWIM probes every member every few seconds; a mapping to a relay port pub1
    // keeps for a1 and b1 may stay too, refreshed by their punch attempts, but pub1's own
    // port needs this one).
    let mapped = conntrack(
        &t.router_ns("ra"),
        &["-L", "-p", "udp", "-s", &t.hosts[A1].underlay.to_string()],
    );
    let pub1 = t.hosts[PUB1].underlay.to_string();
    assert!(
        !mapped
            .lines()
            .any(|l| l.contains(&format!("dst={pub1} sport=51820 dport=51820"))),
        "{mapped}"
    );
    assert_eq!(
        first,
        [false, false],
        "the first pings crossed an expired mapping"
    );
    assert_no_member_down(&t);
}
