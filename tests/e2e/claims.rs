//! Claims checked against the cluster, and overlap settled without renumbering (issue 21):
//! a member that claims the lab's underlay is refused everywhere and the rest of the cluster
//! keeps its underlay route and its traffic; a static `/17` and an explicit `/23` over
//! running nodes are refused, and the nodes inside them keep their subnets.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, seed, auto) ── meshbr0 ── p1        underlay 198.18.0.0/24
//!            ├─ h2 (meshd, auto)       ── meshbr0 ── p1
//!            ├─ h3 (meshd, auto)       ── meshbr0 ── p1        restarted with a bad claim
//!            └─ (h4)                                           (the /23 lab)
//! ```
//! Gossip allocates the subnets; the kernel paths are on (`datapath = "auto"`), so a peer's
//! subnet becomes a main-table route: the route the underlay claim would have clobbered.

use std::process::Command;

use meshd::config::Encryption;
use meshd::status::Status;
use meshd_lab::probe::ping;
use meshd_lab::{Spec, Topology};

use crate::gossip::{gossip_spec, peer_names, wait_for_mesh};
use crate::kernel_paths::auto;
use crate::support::{require_root, status, wait_for, wait_for_log, wait_until};

const UNDERLAY: &str = "198.18.0.0/24";

/// The lab's gossip cluster of `nodes` with the kernel paths on where the mode has them.
fn lab(tag: &str, nodes: usize, encryption: Encryption) -> Topology {
    let spec = Spec {
        paths: auto(0, false, 0),
        ..gossip_spec(tag, nodes, encryption)
    };
    Topology::up(spec).unwrap()
}

/// `ip ARGS` in namespace `ns`: what it prints.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The refusal of peer `name` in a status, if it is refused.
fn refusal<'a>(s: &'a Status, name: &str) -> Option<&'a meshd::status::RefusedStatus> {
    s.refused.iter().find(|r| r.name == name)
}

/// Host `i`'s main-table routes for the underlay: its connected route, and nothing of meshd.
fn assert_underlay_intact(t: &Topology, i: usize) {
    let ns = &t.hosts[i].ns;
    let routes = ip_in(ns, &["route", "show", UNDERLAY]);
    assert!(
        routes.contains("dev u0 proto kernel"),
        "h{}: the underlay's connected route is gone: {routes:?}",
        i + 1
    );
    assert_eq!(routes.lines().count(), 1, "h{}: {routes:?}", i + 1);
    let ours = ip_in(ns, &["route", "show", "proto", "109"]);
    assert!(
        !ours.contains("198.18."),
        "h{}: meshd routes an underlay subnet: {ours:?}",
        i + 1
    );
}

/// Every pod of hosts `hosts` pings every other's, and each host its peers' underlay address.
fn assert_reach(t: &Topology, hosts: &[usize]) {
    for &a in hosts {
        for &b in hosts.iter().filter(|&&b| b != a) {
            let (src, dst) = (&t.hosts[a].pods[0].ns, t.hosts[b].pods[0].addr);
            ping(src, dst, 10).unwrap_or_else(|e| panic!("pod h{} -> h{}: {e:#}", a + 1, b + 1));
            ping(&t.hosts[a].ns, t.hosts[b].underlay, 10)
                .unwrap_or_else(|e| panic!("underlay h{} -> h{}: {e:#}", a + 1, b + 1));
        }
    }
}

/// The issue's by-hand repro: h3 restarted with `cluster-cidr = "198.18.0.0/16"` and
/// `subnet = "198.18.0.0/24"`, the lab's underlay. Its claim reaches h1 and h2 (they list
/// the member with that subnet), who refuse it, saying why; neither routes it, both keep their
/// connected underlay route, their pods and underlay still reach each other, and all of that
/// still holds once h3 is gone (before, h2 replaced the connected route with h3's and deleted
/// it with h3, and h1 and h2 declared each other down for good).
fn a_claim_on_the_underlay_is_refused(tag: &str, encryption: Encryption) {
    require_root();
    let t = lab(tag, 3, encryption);
    let all = [0, 1, 2];
    wait_for_mesh(&t, &all);
    for i in [0, 1] {
        assert_underlay_intact(&t, i);
    }
    let bad = t.hosts[2].name.clone();
    // Its bridge takes 198.18.0.1, h1's address, so h3 cannot reach h1 any more: it joins
    // through h2 (its claim reaches h1 by gossip all the same).
    let (h1, h2) = (t.hosts[0].underlay, t.hosts[1].underlay);
    let config = format!(
        "cluster-cidr = \"198.18.0.0/16\"\nsubnet = \"{UNDERLAY}\"\n{}",
        t.meshd_config(&t.hosts[2])
    )
    .replace(&format!("\"{h1}:"), &format!("\"{h2}:"));
    assert!(config.contains(&format!("\"{h2}:")), "{config}");
    t.restart_meshd(2, &config).unwrap();
    for i in [0, 1] {
        // The staged fault happened: the claim is known here...
        wait_for(&t, i, "the member's claim on the underlay arrived", |s| {
            s.members.as_deref().unwrap_or_default().iter().any(|m| {
                m.name == bad && m.state == "alive" && m.subnet.as_deref() == Some(UNDERLAY)
            })
        });
        // ... and refused, saying why.
        let s = wait_for(&t, i, "the claim is refused", |s| {
            refusal(s, &bad).is_some_and(|r| r.subnet == UNDERLAY)
        });
        let r = refusal(&s, &bad).unwrap();
        assert_eq!(r.source, "member");
        assert!(r.reason.contains("cluster-cidr"), "{r:?}");
        assert!(s.refusals >= 1);
        assert!(!peer_names(&s).contains(&bad), "{s:#?}");
    }
    let log = wait_for_log(&t, 1, "refusing to route a peer's subnet");
    assert!(log.contains(&bad), "the log names the member");
    for i in [0, 1] {
        assert_underlay_intact(&t, i);
    }
    wait_for_mesh(&t, &[0, 1]);
    assert_reach(&t, &[0, 1]);

    // The member goes: what it claimed was never installed, so nothing is removed with it.
    t.stop_meshd(2).unwrap();
    for i in [0, 1] {
        wait_for(&t, i, "the bad member is gone and refused no more", |s| {
            refusal(s, &bad).is_none()
                && s.members
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|m| m.name == bad && m.state != "alive")
        });
        assert_underlay_intact(&t, i);
    }
    for i in [0, 1] {
        wait_for(&t, i, "the other good node stays alive", |s| {
            s.members
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == t.hosts[1 - i].name && m.state == "alive")
        });
    }
    assert_reach(&t, &[0, 1]);
}

#[test]
fn a_member_claiming_the_underlay_is_refused_cleartext() {
    a_claim_on_the_underlay_is_refused("clund", Encryption::None);
}

#[test]
fn a_member_claiming_the_underlay_is_refused_encrypted() {
    a_claim_on_the_underlay_is_refused("clundwg", Encryption::Wireguard);
}

/// The subnets every host of `hosts` holds now.
fn subnets(t: &Topology, hosts: &[usize]) -> Vec<String> {
    hosts.iter().map(|&i| status(t, i).subnet).collect()
}

/// The aligned block of prefix `len` around `subnet` (a.b.c.0/24).
fn block(subnet: &str, len: u8) -> String {
    let net: ipnet::Ipv4Net = subnet.parse().unwrap();
    ipnet::Ipv4Net::new(net.network(), len)
        .unwrap()
        .trunc()
        .to_string()
}

/// A static peer with a `/17` added on h1 over h2's running subnet: h2 keeps its subnet (it
/// is told a wider static subnet covers it, and keeps it), h1 refuses its static peer and
/// names the node whose subnet wins, nobody is renumbered and every pod pair still reaches.
/// Before, h2 gave its subnet up (its pod kept an address of the old one) and h1 stopped
/// routing to h2.
#[test]
fn a_static_slash17_over_running_nodes_renumbers_none() {
    require_root();
    let t = lab("clst", 3, Encryption::None);
    let all = [0, 1, 2];
    wait_for_mesh(&t, &all);
    let before = subnets(&t, &all);
    let half = block(&before[1], 17);
    let name = format!("{}-static", t.spec.prefix);
    let config = format!(
        "{}\n[[peers]]\nname = \"{name}\"\naddress = \"198.18.0.50\"\nsubnet = \"{half}\"\n",
        t.meshd_config(&t.hosts[0])
    );
    t.restart_meshd(0, &config).unwrap();
    // The staged fault happened: h2 heard of the reservation over its subnet.
    wait_for_log(&t, 1, "a static peer's wider subnet");
    let s = wait_for(&t, 0, "h1 refuses its static peer", |s| {
        refusal(s, &name).is_some()
    });
    let r = refusal(&s, &name).unwrap();
    assert_eq!(
        (r.source.as_str(), r.subnet.as_str()),
        ("static peer", half.as_str())
    );
    assert!(r.reason.contains("overlaps"), "{r:?}");
    wait_for_mesh(&t, &all);
    assert_eq!(subnets(&t, &all), before, "a node was renumbered");
    assert_reach(&t, &all);
}

/// h4 restarted with an explicit `/23` over h3's running `/24`: h3 keeps it (the narrower
/// claim wins), every node refuses h4's claim naming h3, h4 is told to change its subnet, and
/// h1 to h3 keep their subnets and all reach each other. Before, a `/23` could not be
/// configured next to gossip at all, and an equality check would never have contested it.
#[test]
fn an_explicit_slash23_over_a_running_node_renumbers_none() {
    require_root();
    let t = lab("cl23", 4, Encryption::None);
    let all = [0, 1, 2, 3];
    wait_for_mesh(&t, &all);
    let good = [0, 1, 2];
    let before = subnets(&t, &good);
    let wide = block(&before[2], 23);
    let newcomer = t.hosts[3].name.clone();
    let config = format!("subnet = \"{wide}\"\n{}", t.meshd_config(&t.hosts[3]));
    t.restart_meshd(3, &config).unwrap();
    for i in good {
        let s = wait_for(&t, i, "h4's /23 is refused", |s| {
            refusal(s, &newcomer).is_some_and(|r| r.subnet == wide)
        });
        let r = refusal(&s, &newcomer).unwrap();
        // h3 names its own subnet; the others, the narrower claim that wins.
        let why = if i == 2 {
            "this node's subnet"
        } else {
            "narrower"
        };
        assert!(r.reason.contains(why), "h{}: {r:?}", i + 1);
    }
    wait_for_log(
        &t,
        3,
        "this node's configured subnet overlaps another node's claim",
    );
    wait_until("h4 holds its configured /23", || {
        let s = status(&t, 3);
        (s.subnet == wide).then_some(()).ok_or(s.subnet)
    });
    wait_for_mesh(&t, &good);
    assert_eq!(subnets(&t, &good), before, "a node was renumbered");
    assert_reach(&t, &good);
}
