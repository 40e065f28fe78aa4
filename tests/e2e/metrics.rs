//! `/metrics` (issue 24), scraped by a real Prometheus server: byte counters grow while a
//! transfer runs, on a userspace path and on a kernel path; a departed member's per-peer series
//! go; `promtool check metrics` accepts a scrape; and the number of series does not grow with
//! the cluster.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, auto: kernel VXLAN)  ── meshbr0 ── p1     Prometheus in h1's
//!            ├─ h2 (meshd, auto: kernel VXLAN)  ── meshbr0 ── p2     namespace scrapes h1
//!            └─ h3 (meshd, userspace)           ── meshbr0 ── p3     and h3 every second
//! ```

use std::net::SocketAddr;

use meshd::config::Encryption;
use meshd_lab::probe::tcp_transfer;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, wait_for_all_alive};
use crate::kernel_paths::{auto, wait_path};
use crate::observe::{promtool_check, scrape, scrape_at, series, value, Prometheus, METRICS_PORT};
use crate::support::{require_root, wait_for, wait_until};

/// What each transfer sends.
const BYTES: u64 = 16 << 20;

#[test]
fn prometheus_sees_bytes_grow_on_userspace_and_kernel_paths() {
    require_root();
    let mut spec = gossip_spec("mprom", 3, Encryption::None);
    spec.paths = auto(1, false, 0);
    spec.meshd_args = [
        "--metrics-address",
        "0.0.0.0:9472",
        "--metrics-per-peer",
        "true",
    ]
    .map(String::from)
    .to_vec();
    let t = Topology::up(spec).unwrap();
    wait_for_all_alive(&t, 0, 2);
    // h1 sends to h2 by kernel VXLAN; h3 (a userspace node) sends to h1 by its userspace path.
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    wait_path(&t, 2, 0, |p| p.path == "userspace");
    let (h1, h2, h3) = (&t.hosts[0], &t.hosts[1], &t.hosts[2]);
    let at = |h: &meshd_lab::topology::Host| SocketAddr::new(h.underlay.into(), METRICS_PORT);
    let prom = Prometheus::start(&t, &h1.ns, &[at(h1), at(h3)]);
    wait_until("Prometheus scrapes both nodes", || {
        let up = prom.query("up == 1");
        (up.len() == 2).then_some(()).ok_or(prom.log())
    });
    let bytes = |h: &meshd_lab::topology::Host, path: &str| {
        format!(
            "meshd_path_bytes_total{{instance=\"{}\",path=\"{path}\",direction=\"tx\"}}",
            at(h)
        )
    };
    let (kernel, user) = (bytes(h1, "kernel-vxlan"), bytes(h3, "userspace"));
    let k0 = prom.scalar(&kernel).unwrap();
    let u0 = prom.scalar(&user).unwrap();

    let (p1, p2, p3) = (&h1.pods[0], &h2.pods[0], &h3.pods[0]);
    let sent = tcp_transfer(&p1.ns, &p2.ns, p2.addr, 5201, BYTES).unwrap();
    assert!(sent.verified, "{sent:?}");
    let sent = tcp_transfer(&p3.ns, &p1.ns, p1.addr, 5202, BYTES).unwrap();
    assert!(sent.verified, "{sent:?}");
    // Each path's counter grew by at least what crossed it (payload plus headers).
    for (q, before) in [(&kernel, k0), (&user, u0)] {
        wait_until(&format!("{q} to grow by {BYTES} bytes"), || {
            let now = prom.scalar(q).unwrap_or(before);
            (now - before >= BYTES as f64)
                .then_some(())
                .ok_or(now - before)
        });
    }
    // h1 probes its kernel paths: their round trips are counted (kernel-stamped, so well
    // under the path manager's tick on this lab; printed, not asserted).
    let probes = format!("meshd_probe_rtt_seconds_count{{instance=\"{}\"}}", at(h1));
    let count = wait_until("h1's probe round trips in Prometheus", || {
        let n = prom.scalar(&probes).unwrap_or(0.0);
        (n > 0.0).then_some(n).ok_or(n)
    });
    let sum = format!("meshd_probe_rtt_seconds_sum{{instance=\"{}\"}}", at(h1));
    let mean = prom.scalar(&sum).unwrap_or(0.0) / count;
    eprintln!(
        "h1: {count} probe round trips, {:.3} ms on average",
        mean * 1e3
    );
    // Per-peer series name the peers, and the scrape passes promtool's checks.
    let text = scrape_at(&t, 0, at(h1));
    assert!(text.contains(&format!("peer=\"{}\"", h3.name)), "{text}");
    assert_eq!(promtool_check(&text), "", "{text}");

    // h3 leaves: h1 forgets it, and its per-peer series on h1 go out of Prometheus too.
    let peer_q = format!(
        "meshd_peer_bytes_total{{instance=\"{}\",peer=\"{}\"}}",
        at(h1),
        h3.name
    );
    // Each way on each path that carried its traffic: userspace, and kernel VXLAN.
    let paths = prom.query(&peer_q);
    assert!(paths.len() >= 2, "{paths:?}");
    t.stop_meshd(2).unwrap();
    wait_for(&t, 0, "h3 gone from h1's peers", |s| {
        s.peers.iter().all(|p| p.name != h3.name)
    });
    wait_until("h3's series gone from Prometheus", || {
        let left = prom.query(&peer_q);
        left.is_empty().then_some(()).ok_or(left.len())
    });
    let text = scrape_at(&t, 0, at(h1));
    assert!(!text.contains(&format!("peer=\"{}\"", h3.name)), "{text}");
    assert!(text.contains(&format!("peer=\"{}\"", h2.name)), "{text}");
}

/// host-gw's traffic leaves by the underlay interface, not a device of meshd's: nftables counts
/// it per peer, each way, and the node's totals and per-peer series show it.
#[test]
fn host_gw_traffic_is_counted_each_way() {
    require_root();
    let mut spec = crate::kernel_paths::spec("mhostgw", 2, Encryption::None, auto(0, true, 0));
    spec.meshd_args = ["--metrics-per-peer", "true"].map(String::from).to_vec();
    let t = Topology::up(spec).unwrap();
    wait_path(&t, 0, 1, |p| p.path == "host-gw");
    wait_path(&t, 1, 0, |p| p.path == "host-gw");
    let total = |i: usize, dir: &str| {
        let text = scrape(&t, i);
        let q = format!("meshd_path_bytes_total{{path=\"host-gw\",direction=\"{dir}\"}}");
        value(&text, &q).unwrap_or(0.0)
    };
    let (tx0, rx0) = (total(0, "tx"), total(1, "rx"));
    let (p1, p2) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    let sent = tcp_transfer(&p1.ns, &p2.ns, p2.addr, 5203, BYTES).unwrap();
    assert!(sent.verified, "{sent:?}");
    // Counted within a reading of the table (every few seconds).
    for (i, dir, before) in [(0, "tx", tx0), (1, "rx", rx0)] {
        wait_until(
            &format!("h{}'s host-gw {dir} bytes to grow by {BYTES}", i + 1),
            || {
                let now = total(i, dir);
                (now - before >= BYTES as f64)
                    .then_some(())
                    .ok_or(now - before)
            },
        );
    }
    let text = scrape(&t, 0);
    let peer = format!(
        "meshd_peer_bytes_total{{peer=\"{}\",path=\"host-gw\",direction=\"tx\"}}",
        t.hosts[1].name
    );
    assert!(value(&text, &peer).unwrap_or(0.0) >= BYTES as f64, "{text}");
    assert_eq!(promtool_check(&text), "", "{text}");
}

/// A node of a 10-node cluster has exactly the series of a node of a 3-node cluster.
#[test]
fn the_series_do_not_grow_with_the_cluster() {
    require_root();
    let count = |nodes: usize| {
        let t = Topology::up(gossip_spec("mcount", nodes, Encryption::None)).unwrap();
        wait_for_all_alive(&t, 0, nodes - 1);
        let text = scrape(&t, 0);
        let alive = format!("meshd_members{{state=\"alive\"}} {}", nodes - 1);
        assert!(text.contains(&alive), "{text}");
        assert!(!text.contains("peer="), "{text}");
        series(&text).len()
    };
    let (small, large) = (count(3), count(10));
    assert!(small > 50, "{small} series");
    assert_eq!(small, large);
}
