//! meshd and the Linux kernel's VXLAN device speak the same bytes: a host with a kernel VXLAN
//! device (set up as flannel's vxlan backend does, by docs/interop.md's recipe run word for word,
//! `meshd vtep-mac` included) and meshd hosts reach each other's pods in both directions, also
//! when a meshd node sends one peer's flows from several source ports.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd)        ── meshbr0 ── p1, p2
//!            ├─ h2 (meshd)        ── meshbr0 ── p1, p2
//!            └─ h3 (kernel vxlan0, MAC = h3's VTEP MAC, static FDB/neigh/routes) ── p1, p2
//! ```

use super::cluster::{assert_transfer, spec, unreachable_pairs};
use super::flows::{assert_flows, record_source_ports, source_ports};
use crate::support::{meshd_bin, require_root, status};
use meshd_lab::{HostKind, Topology};
use std::process::Command;

#[test]
fn kernel_vxlan_node_and_meshd_nodes_interoperate() {
    require_root();
    let t = Topology::up(spec(
        "kvx",
        vec![HostKind::Meshd, HostKind::Meshd, HostKind::KernelVxlan],
        &[],
    ))
    .unwrap();
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    assert_transfer(&t, 0, 2, 5301); // meshd -> kernel
    assert_transfer(&t, 2, 1, 5302); // kernel -> meshd
                                     // Several UDP flows per peer: the kernel device takes each of h1's source ports.
    record_source_ports(&t.hosts[2].ns, t.hosts[0].underlay, 8472);
    assert_flows(&t, 0, 2, 5310);
    assert_flows(&t, 2, 0, 5330);
    let ports = source_ports(&t.hosts[2].ns);
    assert!(
        ports.len() >= 2,
        "h1 reached the kernel from {ports:?} only"
    );
    let s = status(&t, 0);
    let k = s.peers.iter().find(|p| p.name == t.hosts[2].name).unwrap();
    assert!(k.stats.rx_bytes > 0 && k.stats.tx_bytes > 0, "{k:?}");
    assert!(
        k.stats.drops.is_empty(),
        "the kernel's frames were dropped: {k:?}"
    );
    // The MAC the recipe gave the kernel device (`meshd vtep-mac`) is the one meshd sends to.
    let h3 = &t.hosts[2];
    let out = Command::new(meshd_bin())
        .args(["vtep-mac", &h3.name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(printed, k.vtep_mac);
    let link = Command::new("ip")
        .args(["-n", &h3.ns, "-o", "link", "show", "vxlan0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(&format!("link/ether {printed} ")), "{link}");
}
