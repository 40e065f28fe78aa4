#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::status::health::tests::peer;
use crate::status::MemberStatus;
use crate::tiers::{Tier, TierReport};

/// The status of node `a` (10.244.1.0/24) routing `peers`, with gossip `members`.
pub(crate) fn status(peers: Vec<crate::status::PeerStatus>, members: &[(&str, &str)]) -> Status {
    let tier = Tier::DisabledByConfig;
    Status {
        node: "a".into(),
        version: "0.1.0".into(),
        pid: 1,
        address: "198.18.0.1".into(),
        address_source: None,
        public: None,
        relaying: Vec::new(),
        subnet: "10.244.1.0/24".into(),
        cluster: Some("10.244.0.0/16".into()),
        vtep_mac: "02:00:00:00:00:01".into(),
        encryption: "none (VXLAN cleartext)".into(),
        public_key: None,
        cookie_replies_sent: 0,
        refusals_over_source_limit: 0,
        mtu: 1450,
        tiers: TierReport {
            multi_queue: tier.clone(),
            tun_offload: tier.clone(),
            udp_gso: tier.clone(),
            udp_gro: tier.clone(),
            udp_flows: tier,
            queues: 1,
        },
        peers,
        unattributed: Default::default(),
        members: Some(
            members
                .iter()
                .enumerate()
                .map(|(i, (name, state))| MemberStatus {
                    name: (*name).into(),
                    state: (*state).into(),
                    since_secs: 60,
                    address: format!("198.18.0.{}:7946", i + 2),
                    subnet: Some(format!("10.244.{}.0/24", i + 2)),
                    held: false,
                    heard_ms_ago: None,
                    signing_key: None,
                })
                .collect(),
        ),
        gossip: None,
        secrets: None,
        kernel: None,
        egress: None,
        queues: Vec::new(),
        refused: Vec::new(),
        refusals: 0,
    }
}

pub(crate) fn named(name: &str, path: &str) -> crate::status::PeerStatus {
    crate::status::PeerStatus {
        name: name.into(),
        ..peer(path)
    }
}

pub(crate) fn summary(reporter: &str, peers: &[(&str, &str, &str)]) -> SummaryStatus {
    SummaryStatus {
        reporter: reporter.into(),
        version: 1,
        age_secs: 4,
        omitted: 0,
        reports: peers
            .iter()
            .map(|(peer, path, health)| ReportStatus {
                peer: (*peer).into(),
                path: (*path).into(),
                route: "direct".into(),
                health: (*health).into(),
                reason: String::new(),
                rtt_us: Some(420),
                mtu: 1450,
            })
            .collect(),
    }
}

/// `a` routes b and c; b and c report each other and `a`.
pub(crate) fn three() -> Mesh {
    let s = status(
        vec![named("b", "kernel-vxlan"), named("c", "kernel-vxlan")],
        &[("b", "alive"), ("c", "alive")],
    );
    let sums = [
        summary(
            "b",
            &[("a", "kernel-vxlan", "ok"), ("c", "userspace", "ok")],
        ),
        summary(
            "c",
            &[("a", "kernel-vxlan", "ok"), ("b", "userspace", "degraded")],
        ),
    ];
    Mesh::build(
        &s,
        &sums,
        SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
    )
}

#[test]
fn three_nodes_three_pairs_each_seen_from_both_ends() {
    let m = three();
    let names: Vec<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(m.nodes[0].state, "self");
    assert_eq!(m.at, "01:00:00");
    assert_eq!(m.encryption, "none");
    let pairs: Vec<(&str, &str, usize)> = m
        .pairs
        .iter()
        .map(|p| (p.a.as_str(), p.b.as_str(), p.views.len()))
        .collect();
    assert_eq!(pairs, [("a", "b", 2), ("a", "c", 2), ("b", "c", 2)]);
    let bc = &m.pairs[2];
    assert_eq!(bc.health, "degraded", "the worst end's word");
    assert_eq!(bc.views[0].reporter, "b");
    assert_eq!(bc.views[0].rtt_ms, Some(0.42));
    assert_eq!(bc.views[1].path, "userspace");
    let ab = &m.pairs[0];
    assert_eq!(
        (
            ab.views[0].reporter.as_str(),
            ab.views[0].age_secs,
            ab.health.as_str()
        ),
        ("a", 0, "ok")
    );
}

#[test]
fn a_down_member_draws_its_pairs_down_and_a_left_one_none() {
    let s = status(
        vec![named("b", "kernel-vxlan")],
        &[("b", "alive"), ("c", "down"), ("d", "left")],
    );
    let m = Mesh::build(
        &s,
        &[summary("b", &[("a", "kernel-vxlan", "ok")])],
        SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
    );
    let pairs: Vec<(&str, &str, &str)> = m
        .pairs
        .iter()
        .map(|p| (p.a.as_str(), p.b.as_str(), p.health.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("a", "b", "ok"), ("a", "c", "down"), ("b", "c", "down")]
    );
    assert_eq!(m.pairs[1].reason.as_deref(), Some("c down since 00:59:00"));
    assert!(m.nodes.iter().any(|n| n.name == "d" && n.state == "left"));
}

#[test]
fn peers_outside_gossip_and_reported_strangers_are_nodes_with_their_views_only() {
    let s = status(vec![named("static-x", "userspace")], &[("b", "alive")]);
    let m = Mesh::build(
        &s,
        &[summary("b", &[("far", "userspace", "ok")])],
        SystemTime::UNIX_EPOCH,
    );
    let states: Vec<(&str, &str)> = m
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("a", "self"),
            ("b", "alive"),
            ("far", "reported"),
            ("static-x", "static")
        ]
    );
    let pairs: Vec<(&str, &str)> = m
        .pairs
        .iter()
        .map(|p| (p.a.as_str(), p.b.as_str()))
        .collect();
    assert_eq!(pairs, [("a", "b"), ("a", "static-x"), ("b", "far")]);
    assert_eq!(m.pairs[0].health, "unknown");
    assert_eq!(m.pairs[0].reason.as_deref(), Some("no report yet"));
}

#[test]
fn a_summary_about_this_node_is_its_reporters_word_and_ours_wins_for_our_half() {
    // A member claims to report as this node: only this node's own view speaks for it.
    let s = status(vec![named("b", "kernel-vxlan")], &[("b", "alive")]);
    let m = Mesh::build(
        &s,
        &[summary("a", &[("b", "userspace", "down")])],
        SystemTime::UNIX_EPOCH,
    );
    assert_eq!(m.pairs[0].views.len(), 1);
    assert_eq!(m.pairs[0].views[0].path, "kernel-vxlan");
}
