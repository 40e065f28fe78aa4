//! The page from a real backend with static peers: names, values, bounded series, departures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::backend::Backend;
use crate::peers::{Endpoint, EndpointSource, Peer};
use crate::routes::{Local, Routes};
use crate::status::Status;
use crate::tiers::{InUse, Tier, TierReport};

fn peer(i: u8) -> Peer {
    Peer {
        name: format!("node-{i}"),
        endpoints: vec![Endpoint {
            addr: format!("198.18.0.{i}:8472").parse().unwrap(),
            source: EndpointSource::Configured,
        }],
        subnet: format!("10.244.{i}.0/24").parse().unwrap(),
        key: None,
        kernel_vxlan: false,
    }
}

fn base() -> Status {
    let on = || Tier::InUse(InUse::Yes);
    serde_json::from_value(serde_json::json!({
        "node": "me", "version": "0", "pid": 1, "address": "198.18.0.1",
        "subnet": "10.244.1.0/24", "vtep_mac": "02:00:00:00:00:01",
        "encryption": "none", "mtu": 1450, "peers": [],
        "unattributed": crate::stats::PeerStats::default().snapshot(),
        "tiers": TierReport {
            multi_queue: on(), tun_offload: on(), udp_gso: on(),
            udp_gro: Tier::DisabledByConfig, udp_flows: on(), queues: 2,
        },
    }))
    .unwrap()
}

/// A node with `n` static peers (cleartext), its metrics, and its backend.
/// (Also the reload's tests' node.)
pub(crate) fn node(n: u8, per_peer: bool) -> (Arc<Metrics>, Arc<Backend>) {
    let routes = Arc::new(Routes::new(Local {
        name: "me".into(),
        vni: 1,
        port: 8472,
    }));
    let backend = Arc::new(Backend::new(routes, None, Vec::new(), 1450));
    backend.update(|set| {
        for p in (2..2 + n).map(peer) {
            set.upsert_member(p);
        }
        true
    });
    let report = Arc::new(Report {
        base: base(),
        backend: backend.clone(),
        gossip: None,
        subnet: None,
        queues: Vec::new(),
        nat_keepalive: None,
    });
    let m = Metrics::new(
        report,
        KernelDevices::new(Vec::new()),
        per_peer,
        Arc::new(Counters::default()),
        Arc::new(Histogram::new(&PROBE_RTT_BUCKETS)),
    );
    (m, backend)
}

fn scrape(m: &Metrics) -> String {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(m.render())
}

/// Series lines: not comments, not blank.
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

fn value(text: &str, name_and_labels: &str) -> u64 {
    let line = series(text)
        .into_iter()
        .find(|l| l.rsplit_once(' ').map(|(k, _)| k) == Some(name_and_labels))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn the_node_counters_are_written_with_their_names() {
    let (m, backend) = node(2, false);
    let table = backend.routes().load();
    table.peers()[0].stats.tx(3, 3000, 3000);
    table.peers()[1].stats.rx(2, 1000);
    table.peers()[1]
        .stats
        .count_drop(crate::stats::DropReason::SpoofedSource, 5);
    backend
        .routes()
        .unattributed
        .count_drop(crate::stats::DropReason::NoRoute, 7);
    // What nftables counted for a peer on host-gw (the path manager's call).
    let host_gw = crate::paths::manager::COUNTED_PATHS
        .iter()
        .position(|k| *k == crate::paths::PathKind::HostGw)
        .unwrap();
    table.peers()[1].stats.kernel(host_gw, true, 4, 4000);
    let text = scrape(&m);
    assert!(
        text.contains("# TYPE meshd_path_bytes_total counter"),
        "{text}"
    );
    let tx = "meshd_path_bytes_total{path=\"userspace\",direction=\"tx\"}";
    assert_eq!(value(&text, tx), 3000);
    assert_eq!(
        value(
            &text,
            "meshd_path_packets_total{path=\"userspace\",direction=\"rx\"}"
        ),
        2
    );
    assert_eq!(
        value(
            &text,
            "meshd_path_bytes_total{path=\"kernel-vxlan\",direction=\"rx\"}"
        ),
        0
    );
    let gw = "meshd_path_bytes_total{path=\"host-gw\",direction=\"rx\"}";
    assert_eq!(value(&text, gw), 4000);
    let gw = "meshd_path_packets_total{path=\"host-gw\",direction=\"rx\"}";
    assert_eq!(value(&text, gw), 4);
    assert_eq!(
        value(&text, "meshd_drops_total{reason=\"spoofed-source\"}"),
        5
    );
    assert_eq!(value(&text, "meshd_drops_total{reason=\"no-route\"}"), 7);
    assert_eq!(value(&text, "meshd_tier_in_use{tier=\"udp-gro\"}"), 0);
    assert_eq!(value(&text, "meshd_tier_in_use{tier=\"udp-gso\"}"), 1);
    assert_eq!(value(&text, "meshd_queues"), 2);
    assert_eq!(value(&text, "meshd_path_moves_total"), 0);
    assert!(text.contains("meshd_build_info{version=\""), "{text}");
    assert!(
        text.contains("meshd_probe_rtt_seconds_bucket{le=\"+Inf\"} 0"),
        "{text}"
    );
    // Cleartext: no WireGuard families; no gossip: no member families.
    assert!(!text.contains("meshd_wireguard"), "{text}");
    assert!(!text.contains("meshd_members"), "{text}");
    // Without metrics-per-peer no series names a peer.
    assert!(!text.contains("peer="), "{text}");
}

/// The number of series is the same for 2 peers as for 40; per-peer series add a set per peer.
#[test]
fn series_do_not_grow_with_the_cluster_by_default() {
    let few = scrape(&node(2, false).0);
    let many = scrape(&node(40, false).0);
    assert_eq!(series(&few).len(), series(&many).len());
    let (m, backend) = node(40, true);
    let table = backend.routes().load();
    for p in table.peers() {
        p.stats.tx(1, 100, 100);
    }
    let text = scrape(&m);
    let per_peer = series(&text).len() - series(&many).len();
    // Bytes and packets each way: four per peer (no drops, no path yet, no session).
    assert_eq!(per_peer, 40 * 4, "{text}");
    assert_eq!(
        value(
            &text,
            "meshd_peer_bytes_total{peer=\"node-9\",path=\"userspace\",direction=\"tx\"}"
        ),
        100
    );
}

/// A peer that leaves takes its series with it, and the node's totals do not fall.
#[test]
fn a_departed_peer_leaves_its_bytes_and_takes_its_series() {
    let (m, backend) = node(3, true);
    let tx = "meshd_path_bytes_total{path=\"userspace\",direction=\"tx\"}";
    for p in backend.routes().load().peers() {
        p.stats.tx(1, 100, 100);
    }
    let before = scrape(&m);
    assert_eq!(value(&before, tx), 300);
    assert!(before.contains("peer=\"node-4\""));
    backend.update(|set| set.remove_member("node-4"));
    assert_eq!(backend.routes().load().peers().len(), 2);
    let after = scrape(&m);
    assert!(!after.contains("peer=\"node-4\""), "{after}");
    assert!(after.contains("peer=\"node-3\""), "{after}");
    assert_eq!(value(&after, tx), 300);
    m.set_per_peer(false);
    assert!(!scrape(&m).contains("peer="));
}

#[test]
fn histograms_count_into_their_buckets() {
    let h = Histogram::new(&PROBE_RTT_BUCKETS);
    h.observe(std::time::Duration::from_micros(300));
    h.observe(std::time::Duration::from_millis(3));
    h.observe(std::time::Duration::from_secs(5));
    let s = h.snapshot();
    assert_eq!(s.count, 3);
    assert_eq!(s.buckets[0], (0.0005, 1));
    assert_eq!(s.buckets[3], (0.005, 1));
    assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
    assert!((s.sum - 5.0033).abs() < 1e-9, "{}", s.sum);
    let ages = HistogramSnapshot::of(&[5.0, 30.0], &[1.0, 10.0, 40.0, 2.0]);
    assert_eq!(ages.buckets, [(5.0, 2), (30.0, 1), (f64::INFINITY, 1)]);
    let none = HistogramSnapshot::of(&[5.0], &[]);
    assert!(
        none.sum == 0.0 && none.sum.is_sign_positive(),
        "{}",
        none.sum
    );
}
