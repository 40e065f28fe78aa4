//! A cluster of meshd nodes: every pod reaches every pod (ICMP) and a TCP transfer between two
//! hosts arrives intact, with every tier on, with all tiers off, and with each one off alone.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd) ── meshbr0 ── p1, p2
//!            ├─ h2 (meshd) ── meshbr0 ── p1, p2
//!            └─ h3 (meshd) ── meshbr0 ── p1, p2
//! ```

use crate::support::{meshd_bin, prefix, require_root, status};
use meshd::config::Encryption;
use meshd_lab::probe::{ping, tcp_transfer};
use meshd_lab::{Formation, HostKind, Spec, Topology};

/// A cleartext (VXLAN) lab: these tests exercise the VXLAN tiers; `encrypted.rs` covers
/// WireGuard clusters.
pub fn spec(tag: &str, hosts: Vec<HostKind>, args: &[&str]) -> Spec {
    Spec {
        encryption: Encryption::None,
        prefix: prefix(tag),
        hosts,
        pods_per_host: 2,
        meshd_args: args.iter().map(|s| s.to_string()).collect(),
        meshd_bin: meshd_bin(),
        sandbox: Default::default(),
        underlay_mtu: 1500,
        formation: Formation::Static,
        paths: Default::default(),
    }
}

/// Every pod pings every pod; returns the pairs that failed.
pub fn unreachable_pairs(t: &Topology) -> Vec<String> {
    let pods: Vec<_> = t.pods().map(|(_, p)| p.clone()).collect();
    let mut bad = Vec::new();
    for a in &pods {
        for b in &pods {
            if let Err(e) = ping(&a.ns, b.addr, 5) {
                bad.push(format!("{} -> {}: {e}", a.addr, b.addr));
            }
        }
    }
    bad
}

/// 32 MiB from a pod on host `from` to a pod on host `to`, SHA-256 checked at the far end.
pub fn assert_transfer(t: &Topology, from: usize, to: usize, port: u16) {
    let (a, b) = (&t.hosts[from].pods[0], &t.hosts[to].pods[0]);
    let x = tcp_transfer(&a.ns, &b.ns, b.addr, port, 32 << 20).unwrap();
    assert!(
        x.verified,
        "transfer {} -> {} arrived corrupted or short: {} bytes",
        a.addr, b.addr, x.bytes
    );
}

fn full_check(tag: &str, args: &[&str]) -> Topology {
    require_root();
    let t = Topology::up(spec(tag, vec![HostKind::Meshd; 3], args)).unwrap();
    let bad = unreachable_pairs(&t);
    assert!(
        bad.is_empty(),
        "unreachable pod pairs with {args:?}: {bad:#?}"
    );
    assert_transfer(&t, 0, 1, 5201);
    assert_transfer(&t, 2, 0, 5202);
    t
}

#[test]
fn all_tiers_on() {
    let t = full_check("tall", &[]);
    let s = status(&t, 0);
    let h2 = s.peers.iter().find(|p| p.name == t.hosts[1].name).unwrap();
    // 32 MiB went out to h2: the counters saw it.
    assert!(h2.stats.tx_bytes >= 32 << 20, "{h2:?}");
    assert!(h2.stats.rx_packets > 0, "{h2:?}");
    assert!(h2.stats.drops.is_empty(), "{h2:?}");
}

#[test]
fn all_tiers_off() {
    let t = full_check(
        "toff",
        &[
            "--no-multi-queue",
            "--no-tun-offload",
            "--no-udp-gso",
            "--no-udp-gro",
        ],
    );
    let s = status(&t, 0);
    let off = meshd::tiers::Tier::DisabledByConfig;
    assert_eq!(s.tiers.multi_queue, off);
    assert_eq!(s.tiers.tun_offload, off);
    assert_eq!(s.tiers.udp_gso, off);
    assert_eq!(s.tiers.udp_gro, off);
    assert_eq!(s.tiers.queues, 1);
}

#[test]
fn without_tun_offload() {
    let t = full_check("tnotso", &["--no-tun-offload"]);
    assert_eq!(
        status(&t, 1).tiers.tun_offload,
        meshd::tiers::Tier::DisabledByConfig
    );
}

#[test]
fn without_udp_gso() {
    let t = full_check("tnogso", &["--no-udp-gso"]);
    assert_eq!(
        status(&t, 1).tiers.udp_gso,
        meshd::tiers::Tier::DisabledByConfig
    );
}

#[test]
fn without_udp_gro() {
    let t = full_check("tnogro", &["--no-udp-gro"]);
    assert_eq!(
        status(&t, 1).tiers.udp_gro,
        meshd::tiers::Tier::DisabledByConfig
    );
}

#[test]
fn single_queue() {
    let t = full_check("tnomq", &["--no-multi-queue"]);
    let s = status(&t, 2);
    assert_eq!(s.tiers.multi_queue, meshd::tiers::Tier::DisabledByConfig);
    assert_eq!(s.tiers.queues, 1);
}
