//! Clusters across NAT (encrypted mode), in the NAT lab (`meshd lab up --nat`): real kernel NAT
//! (nftables masquerade, fully-random masquerade, 1:1 dnat+snat) in router namespaces, and
//! nodes configured with nothing but the seed.
//!
//! Every pair with a direct path reaches the other both ways (ICMP and a checksummed TCP
//! transfer), the status names each endpoint and how it was learned, and a NAT mapping that
//! changes under running sessions (router-a's conntrack flushed; its public address changed)
//! costs seconds, not a restart. Keepalives: `nat_idle.rs`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use meshd::status::Status;
use meshd_lab::probe::{ping, tcp_transfer, Pinger};
use meshd_lab::{Formation, HostKind, LabPaths, Spec, Topology};

use crate::gossip::wait_for_mesh;
use crate::support::{
    log, meshd_bin, meshd_pid, prefix, require_root, status, wait_for, wait_until, wait_within,
    SETTLE,
};

pub(crate) const PUB1: usize = 0;
pub(crate) const PUB2: usize = 1;
pub(crate) const A1: usize = 2;
pub(crate) const A2: usize = 3;
pub(crate) const B1: usize = 4;
pub(crate) const C1: usize = 5;
/// The pairs with a direct path (a1↔b1 has none: relayed, `relay.rs`).
const DIRECT: [(usize, usize); 6] = [
    (A1, A2),
    (A1, PUB1),
    (B1, PUB1),
    (C1, PUB1),
    (C1, A1),
    (B1, PUB2),
];

/// The NAT lab, with `args` for every meshd.
pub(crate) fn nat_spec(tag: &str, args: &[&str]) -> Spec {
    Spec {
        prefix: prefix(tag),
        hosts: vec![HostKind::Meshd; meshd_lab::NAT_ROLES.len()],
        pods_per_host: 1,
        meshd_args: args.iter().map(|a| a.to_string()).collect(),
        meshd_bin: meshd_bin(),
        sandbox: Default::default(),
        underlay_mtu: 1500,
        encryption: meshd::config::Encryption::Wireguard,
        formation: Formation::Gossip,
        paths: LabPaths {
            nat: true,
            ..LabPaths::default()
        },
    }
}

pub(crate) fn pod(t: &Topology, i: usize) -> (String, Ipv4Addr) {
    let p = &t.hosts[i].pods[0];
    (p.ns.clone(), p.addr)
}

/// `x`'s pod pings `y`'s until one answers (fails after the settle deadline).
pub(crate) fn reach(t: &Topology, x: usize, y: usize) {
    let ((ns, _), (_, addr)) = (pod(t, x), pod(t, y));
    let what = format!("{} pings {}", role(t, x), role(t, y));
    // A pair that needs a relay or a punch waits for its NAT mappings to be learnt from the
    // members' summaries first (several 2 s rounds, longer on a loaded machine).
    wait_within(&what, 2 * SETTLE, || {
        ping(&ns, addr, 1).map_err(|e| e.to_string())
    });
}

pub(crate) fn role(t: &Topology, i: usize) -> &'static str {
    meshd_lab::topology::nat::role(&t.hosts[i])
}

/// Host `i`'s reachability of host `j`, per `i`'s status.
pub(crate) fn reach_of(s: &Status, t: &Topology, j: usize) -> meshd::status::reach::ReachStatus {
    let p = s.peers.iter().find(|p| p.name == t.hosts[j].name);
    p.and_then(|p| p.reach.clone())
        .unwrap_or_else(|| panic!("{}: no reach for {}: {s:#?}", s.node, t.hosts[j].name))
}

/// Every member alive in every node's view (a member merely suspected on a loaded machine
/// is waited for: suspicion is not a verdict), and no node ever logged one down.
pub(crate) fn assert_no_member_down(t: &Topology) {
    let n = t.hosts.len();
    for i in 0..n {
        wait_for(t, i, "every member alive", |s| {
            let members = s.members.clone().unwrap_or_default();
            members.len() == n - 1 && members.iter().all(|m| m.state == "alive")
        });
        let downs: Vec<String> = log(t, i)
            .lines()
            .filter(|l| {
                l.contains("member down")
                    || l.contains("member suspect")
                    || l.contains("has this member down")
            })
            .map(String::from)
            .collect();
        assert!(
            !downs.iter().any(|l| l.contains("member down: withdrawing")),
            "{} declared a member down:\n{}",
            role(t, i),
            downs.join("\n")
        );
    }
}

/// `conntrack ARGS` in namespace `ns`: its stdout and stderr.
pub(crate) fn conntrack(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .expect("conntrack (tests/packages.txt)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn udp_entries(ns: &str) -> usize {
    conntrack(ns, &["-L", "-p", "udp"])
        .lines()
        .filter(|l| l.starts_with("udp"))
        .count()
}

#[test]
fn nat_lab_pairs_with_a_direct_path_reach_each_other_and_recover_from_nat_changes() {
    require_root();
    let t = Topology::up(nat_spec("nat", &[])).unwrap();
    // Nothing configured but the seed.
    for h in &t.hosts {
        let c = t.meshd_config(h);
        assert!(!c.contains("address"), "{c}");
        assert_eq!(c.contains("seeds = "), h.index != 1, "{c}");
    }
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    for &(x, y) in &DIRECT {
        reach(&t, x, y);
        reach(&t, y, x);
    }
    for (n, &(x, y)) in [(A1, PUB1), (PUB1, A1), (B1, PUB1), (C1, A1), (A2, A1)]
        .iter()
        .enumerate()
    {
        let ((from, _), (to, addr)) = (pod(&t, x), pod(&t, y));
        let r = tcp_transfer(&from, &to, addr, 5200 + n as u16, 4 << 20).unwrap();
        assert!(r.verified, "{} → {}: {r:?}", role(&t, x), role(&t, y));
    }
    let router_a = t.router_a_public();
    // What each node says: pub1 reaches a1 at router-a's mapping, roamed to, behind NAT.
    let s = wait_for(&t, PUB1, "a1 roamed behind router-a", |s| {
        s.peers.iter().any(|p| {
            p.name == t.hosts[A1].name
                && p.reach.as_ref().is_some_and(|r| {
                    r.learned == "roamed" && r.endpoint.starts_with(&format!("{router_a}:"))
                })
        })
    });
    let r = reach_of(&s, &t, A1);
    assert_eq!(
        (
            r.route.as_str(),
            r.nat.as_str(),
            r.flows.as_str(),
            r.keepalive.as_str()
        ),
        ("direct", "peer", "one", "on"),
        "{r:#?}"
    );
    let c1_public = meshd_lab::topology::nat::ONE_TO_ONE_PUBLIC;
    // Each NAT'd node shows what members observe of it and how its NAT maps.
    let public = |i| {
        let s = wait_for(&t, i, "public endpoints learned", |s| s.public.is_some());
        s.public.unwrap()
    };
    let (b1, c1) = (public(B1), public(C1));
    assert_eq!(c1.endpoints, [format!("{c1_public}:51820")], "{c1:?}");
    assert_eq!(c1.mapping, "kept");
    assert!(b1.endpoints[0].starts_with("198.18.0.102:"), "{b1:?}");
    assert!(status(&t, PUB1).public.is_none(), "pub1 is behind no NAT");
    assert_eq!(reach_of(&s, &t, C1).endpoint, format!("{c1_public}:51820"));
    let pub2 = reach_of(&s, &t, PUB2);
    assert_eq!(
        (
            pub2.nat.as_str(),
            pub2.keepalive.as_str(),
            pub2.flows.as_str()
        ),
        ("none", "off", "several"),
        "{pub2:#?}"
    );
    // c1 learned its public endpoint from what others observe, and advertises it.
    let c1 = s.peers.iter().find(|p| p.name == t.hosts[C1].name).unwrap();
    assert!(
        c1.candidates.contains(&format!(
            "{c1_public}:51820 (advertised (observed by others))"
        )),
        "{c1:#?}"
    );
    // a1 reaches a2 on their private network, as a2 advertises itself; no NAT, no keepalive
    // once a2's summary says it sees a1 there (until then a1, behind a NAT as pub1 sees it,
    // presumes one towards a2 too).
    let s = wait_for(&t, A1, "a2 reports a1 at its own address", |s| {
        reach_of(s, &t, A2).nat == "none"
    });
    let a2 = reach_of(&s, &t, A2);
    assert_eq!(
        a2.endpoint,
        format!("{}:51820", t.hosts[A2].underlay),
        "{a2:#?}"
    );
    assert_eq!(
        (a2.nat.as_str(), a2.keepalive.as_str(), a2.flows.as_str()),
        ("none", "off", "several"),
        "{a2:#?}"
    );
    // a1 knows pub1 sees it through router-a.
    let p1 = reach_of(&s, &t, PUB1);
    assert_eq!(
        (p1.nat.as_str(), p1.keepalive.as_str()),
        ("this node", "on"),
        "{p1:#?}"
    );
    assert!(p1
        .seen_as
        .as_deref()
        .is_some_and(|a| a.starts_with(&format!("{router_a}:"))));
    assert_eq!(reach_of(&s, &t, C1).endpoint, format!("{c1_public}:51820"));

    let pids: Vec<i32> = (0..t.hosts.len()).map(|i| meshd_pid(&t, i)).collect();
    let ra = t.router_ns("ra");
    // Router-a forgets every mapping.
    let before = udp_entries(&ra);
    let gap = across_fault(&t, || {
        let out = conntrack(&ra, &["-F"]);
        assert!(out.contains("has been emptied"), "{out}");
    });
    assert!(before > 0, "router-a tracked no UDP flow before the flush");
    println!("conntrack flush on router-a ({before} UDP entries): longest silence a1→pub1 {:?}, pub1→a1 {:?}", gap.0, gap.1);
    // Router-a's public address changes.
    let new_public = Ipv4Addr::new(198, 18, 0, 111);
    let gap = across_fault(&t, || {
        let (old, new) = (format!("{router_a}/24"), format!("{new_public}/24"));
        meshd_lab::netns::ip(&["-n", &ra, "addr", "del", &old, "dev", "u0"]).unwrap();
        meshd_lab::netns::ip(&["-n", &ra, "addr", "add", &new, "dev", "u0"]).unwrap();
    });
    wait_for(&t, PUB1, "a1 roamed to router-a's new address", |s| {
        reach_of(s, &t, A1)
            .endpoint
            .starts_with(&format!("{new_public}:"))
    });
    println!("router-a's public address {router_a} → {new_public}: longest silence a1→pub1 {:?}, pub1→a1 {:?}", gap.0, gap.1);
    for &(x, y) in &DIRECT {
        reach(&t, x, y);
        reach(&t, y, x);
    }
    let after: Vec<i32> = (0..t.hosts.len()).map(|i| meshd_pid(&t, i)).collect();
    assert_eq!(pids, after, "no meshd restarted");
    assert_no_member_down(&t);
}

/// Pings a1→pub1 and pub1→a1 every 50 ms across `fault`, until both answer again after it;
/// the longest silence each way.
fn across_fault(t: &Topology, fault: impl FnOnce()) -> (Duration, Duration) {
    let ((a1_ns, a1), (p1_ns, p1)) = (pod(t, A1), pod(t, PUB1));
    let every = Duration::from_millis(50);
    let up = Pinger::start(&a1_ns, p1, every).unwrap();
    let down = Pinger::start(&p1_ns, a1, every).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let at = Instant::now();
    println!("fault at {:?}", std::time::SystemTime::now());
    fault();
    // Both ways answer again (a generous deadline: the target is 5 s).
    wait_until("a1↔pub1 answer again after the fault", || {
        let now = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        match (ping(&a1_ns, p1, 1), ping(&p1_ns, a1, 1)) {
            (Ok(_), Ok(_)) if now > at => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let (up, down) = (up.stop().unwrap(), down.stop().unwrap());
    (up.longest_gap(), down.longest_gap())
}
