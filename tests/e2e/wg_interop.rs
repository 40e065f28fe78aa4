//! meshd and Debian's `wireguard-go` speak the same bytes: a host running wireguard-go
//! (configured with `wg` by docs/interop.md's recipe, run word for word: its key, port 51820, each
//! meshd node as a peer with the preshared key `meshd psk` prints and allowed-ips = the node's
//! subnet) and meshd hosts reach each other's pods in both directions, also when a meshd node
//! sends from several source ports (wireguard-go answers the latest). And `meshd psk` on each
//! meshd node, reading its own config and node key, prints the key wireguard-go holds for it.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd)        ── meshbr0 ── p1, p2
//!            ├─ h2 (meshd)        ── meshbr0 ── p1, p2
//!            └─ h3 (wireguard-go: TUN wgXXXXXXXX, 10.244.0.0/16 routed into it) ── meshbr0 ── p1, p2
//! ```

use super::cluster::{assert_transfer, unreachable_pairs};
use super::encrypted::encrypted_spec;
use super::flows::{
    assert_flows, destination_ports, record_destination_ports, record_source_ports, source_ports,
};
use crate::support::{meshd_bin, require_root, status};
use meshd_lab::{HostKind, Topology};
use std::process::Command;

#[test]
fn wireguard_go_node_and_meshd_nodes_interoperate() {
    require_root();
    let mut spec = encrypted_spec(
        "wgo",
        vec![HostKind::Meshd, HostKind::Meshd, HostKind::WireguardGo],
    );
    spec.meshd_args = vec!["--queues".into(), "2".into()];
    let t = Topology::up(spec).unwrap();
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    assert_transfer(&t, 0, 2, 5601); // meshd -> wireguard-go
    assert_transfer(&t, 2, 1, 5602); // wireguard-go -> meshd

    // Several UDP flows per peer: wireguard-go follows h1's latest source port and answers
    // there; h1 reads those ports too, so the flows (and their ACKs) get through both ways.
    record_source_ports(&t.hosts[2].ns, t.hosts[0].underlay, 51820);
    record_destination_ports(&t.hosts[0].ns, t.hosts[2].underlay, 51820);
    let before: Vec<u64> = status(&t, 0)
        .queues
        .iter()
        .map(|q| q.rx_datagrams)
        .collect();
    assert_flows(&t, 0, 2, 5610);
    assert_flows(&t, 2, 0, 5630);
    let data: Vec<u16> = source_ports(&t.hosts[2].ns)
        .into_iter()
        .filter(|&p| p != 51820)
        .collect();
    assert!(
        data.len() >= 2,
        "h1's data reached wireguard-go from {data:?} only"
    );
    // wireguard-go followed: it sent to h1's source ports, and h1 read all of it on one queue.
    let answered = destination_ports(&t.hosts[0].ns);
    assert!(
        answered.iter().filter(|p| data.contains(p)).count() >= 2,
        "wireguard-go sent to h1's ports {answered:?}, h1 sends from {data:?}"
    );
    let after = status(&t, 0).queues;
    let got: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(q, b)| q.rx_datagrams - b)
        .collect();
    let total: u64 = got.iter().sum();
    assert!(
        got.iter().any(|&n| n >= total / 100 * 99),
        "h1's queues read {got:?} datagrams during the flows (wireguard-go sent to {answered:?})"
    );
    let s = status(&t, 0);
    let g = s.peers.iter().find(|p| p.name == t.hosts[2].name).unwrap();
    assert!(g.stats.rx_bytes > 0 && g.stats.tx_bytes > 0, "{g:?}");
    assert!(
        g.stats.drops.is_empty(),
        "wireguard-go's datagrams were dropped: {g:?}"
    );
    let wg = g.wireguard.as_ref().unwrap();
    assert!(wg.handshakes >= 1 && wg.decrypt_failures == 0, "{wg:?}");

    // And wireguard-go saw handshakes with both meshd nodes.
    let text = wg_show(&t, "latest-handshakes");
    let stamps: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(stamps.len(), 2, "{text}");
    assert!(
        stamps.iter().all(|&s| s > 0),
        "a peer never completed a handshake: {text}"
    );

    // From the meshd side: `meshd psk --config` (the node's secret file and node key) prints
    // the key the recipe gave wireguard-go for that node.
    let held = wg_show(&t, "preshared-keys");
    let wg_key = t.hosts[2].public_key.unwrap().to_base64();
    for h in &t.hosts[..2] {
        let out = Command::new(meshd_bin())
            .args(["psk", "--peer", &wg_key, "--config"])
            .arg(h.dir.join("meshd.toml"))
            .env_remove("MESHD_CLUSTER_SECRET")
            .env_remove("MESHD_CLUSTER_SECRET_FILE")
            .env_remove("MESHD_STATE_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let psk = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let node_key = h.public_key.unwrap().to_base64();
        let line = format!("{node_key}\t{psk}");
        assert!(
            held.lines().any(|l| l == line),
            "{} {psk} not in:\n{held}",
            h.name
        );
    }
}

/// `wg show DEV WHAT` on the wireguard-go host (host 3).
fn wg_show(t: &Topology, what: &str) -> String {
    let ns = &t.hosts[2].ns;
    let dev = meshd_lab::wireguard::ifname(ns);
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "wg", "show", &dev, what])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
