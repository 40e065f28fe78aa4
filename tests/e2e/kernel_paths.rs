//! The kernel fast path, per peer (issue 10): real kernel VXLAN devices, host-gw routes,
//! probes, fallback and return, adoption across a restart, and kernel WireGuard's fallback on
//! this kernel (which has no WireGuard module).
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, auto) ── meshbr0 ── p1
//!            ├─ h2 (meshd, auto) ── meshbr0 ── p1
//!            ├─ h3 (meshd, userspace) ─ …          (mixed cluster)
//!            └─ rt ── sw2: br0 ── h3              (host-gw lab: h3 behind a router)
//! ```
//!
//! A kernel path is broken with an nftables rule in the sender's namespace that drops only the
//! kernel device's datagrams to one peer: the device sends VXLAN with a zero UDP checksum
//! (RFC 7348), while meshd's own socket never does (the kernel checksums what userspace sends).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{
    meshd_bin, nft, nft_delete, nft_load, require_root, status, tcp_established, wait_until,
};
use meshd::config::{Datapath, Encryption};
use meshd::status::{PathStatus, Status};
use meshd_lab::probe::{ping, tcp_transfer, Pinger};
use meshd_lab::{HostKind, LabPaths, Spec, Topology};

use crate::cluster::{self, unreachable_pairs};

/// The cleartext test lab of `cluster.rs` with `nodes` meshd hosts of one pod each, in
/// `encryption` mode, with the data paths `paths`.
pub(crate) fn spec(tag: &str, nodes: usize, encryption: Encryption, paths: LabPaths) -> Spec {
    Spec {
        encryption,
        pods_per_host: 1,
        paths,
        ..cluster::spec(tag, vec![HostKind::Meshd; nodes], &[])
    }
}

/// What `ip ARGS` prints.
fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn auto(userspace_nodes: usize, host_gw: bool, routed: usize) -> LabPaths {
    LabPaths {
        datapath: Datapath::Auto,
        userspace_nodes,
        host_gw,
        routed,
        nat: false,
        nat_b_keeps_ports: false,
    }
}

/// Host `from`'s path to host `to`.
fn path(t: &Topology, from: usize, to: usize) -> PathStatus {
    let s = status(t, from);
    let name = &t.hosts[to].name;
    let p = find_path(&s, name);
    assert!(
        p.is_some(),
        "{} has no path for {name}: {s:#?}",
        t.hosts[from].name
    );
    p.unwrap()
}

fn find_path(s: &Status, name: &str) -> Option<PathStatus> {
    s.peers
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.path.clone())
}

/// Waits until host `from`'s path to `to` satisfies `cond`; fails with the last one after
/// [`crate::support::SETTLE`]. Returns the path and how long it took.
pub(crate) fn wait_path(
    t: &Topology,
    from: usize,
    to: usize,
    cond: impl Fn(&PathStatus) -> bool,
) -> (PathStatus, Duration) {
    let start = Instant::now();
    let what = format!("h{} → h{}: the path as expected", from + 1, to + 1);
    let p = wait_until(&what, || {
        let p = find_path(&status(t, from), &t.hosts[to].name);
        p.clone().filter(|p| cond(p)).ok_or(p.map(Box::new))
    });
    (p, start.elapsed())
}

/// Drop what `ns`'s kernel VXLAN device sends to `peer` (`extra` narrows it, e.g. by length).
pub(crate) fn break_kernel_path(ns: &str, peer: std::net::Ipv4Addr, extra: &str) {
    nft_load(
        ns,
        &format!(
            "table ip kbreak {{\n chain out {{\n type filter hook output priority 0;\n \
             ip daddr {peer} udp dport 8472 udp checksum 0 {extra} drop\n }}\n}}\n"
        ),
    );
}

#[test]
fn a_mixed_cluster_reaches_every_pod_and_says_which_path_and_why() {
    require_root();
    let t = Topology::up(spec("kpmix", 3, Encryption::None, auto(1, false, 0))).unwrap();
    // h1 and h2 send to each other by kernel VXLAN; to h3, which receives in userspace, they
    // send from userspace: on this veth underlay the kernel path to it would need checksums in
    // software, which cost more (`kernel_receivers.rs` has the checksums' side).
    for (from, to) in [(0, 1), (1, 0)] {
        let (p, _) = wait_path(&t, from, to, |p| p.path == "kernel-vxlan");
        assert_eq!(p.reason, None, "h{} → h{}: {p:?}", from + 1, to + 1);
    }
    for from in [0, 1] {
        crate::kernel_receivers::held_on_userspace(&t, from, 2);
    }
    for to in [0, 1] {
        let p = path(&t, 2, to);
        assert_eq!(p.to_string(), "userspace: datapath = \"userspace\"");
    }
    for h in 0..2 {
        let k = status(&t, h).kernel.unwrap();
        assert!(k.vxlan.starts_with("in use: meshvx0 (created"), "{k:?}");
        assert_eq!(k.datapath, "auto");
    }
    assert!(status(&t, 2)
        .kernel
        .unwrap()
        .vxlan
        .contains("datapath = \"userspace\""));
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    for (i, (a, b)) in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
        .into_iter()
        .enumerate()
    {
        let (src, dst) = (&t.hosts[a].pods[0], &t.hosts[b].pods[0]);
        let x = tcp_transfer(&src.ns, &dst.ns, dst.addr, 5600 + i as u16, 16 << 20).unwrap();
        assert!(x.verified, "h{} → h{}: {x:?}", a + 1, b + 1);
    }
}

/// Breaks h1's kernel path to h2 with `extra` while a transfer runs; the transfer completes
/// on userspace, and after the repair the peer returns once.
fn fall_back_and_return(tag: &str, extra: &str, port: u16) {
    require_root();
    let t = Topology::up(spec(tag, 2, Encryption::None, auto(0, false, 0))).unwrap();
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    let moves_before = path(&t, 0, 1).moves;
    let (src, dst) = (t.hosts[0].pods[0].clone(), t.hosts[1].pods[0].clone());
    let ns = src.ns.clone();
    let transfer =
        std::thread::spawn(move || tcp_transfer(&src.ns, &dst.ns, dst.addr, port, 96 << 20));
    // The break lands while the transfer runs (were it done already, the assertions below
    // would still hold; the wait only keeps the break from coming first).
    wait_until("the transfer's connection", || {
        let running = tcp_established(&ns, port) || transfer.is_finished();
        running.then_some(()).ok_or(port)
    });
    break_kernel_path(&t.hosts[0].ns, t.hosts[1].underlay, extra);
    let (p, took) = wait_path(&t, 0, 1, |p| p.path == "userspace");
    let why = p.reason.clone().unwrap_or_default();
    // At the pod MTU, or at the floor path-MTU discovery lowered the probes to: a hole below
    // the floor is no MTU the peer can have, and the path is left.
    assert!(
        why.starts_with("probes at ") && why.contains(" B lost on kernel-vxlan since "),
        "{why}"
    );
    eprintln!("{tag}: on userspace {took:?} after the break: {p}");
    let x = transfer.join().unwrap().unwrap();
    assert!(x.verified, "the transfer across the break: {x:?}");
    assert_eq!(path(&t, 0, 1).moves, moves_before + 1);
    nft_delete(&t.hosts[0].ns, "ip", "kbreak");
    let (p, took) = wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    eprintln!("{tag}: back on the kernel path {took:?} after the repair");
    assert_eq!(p.moves, moves_before + 2);
    // And it stays there: the return happened once.
    std::thread::sleep(Duration::from_secs(3));
    let p = path(&t, 0, 1);
    assert_eq!(
        (p.path.as_str(), p.moves),
        ("kernel-vxlan", moves_before + 2)
    );
    let (src, dst) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    let x = tcp_transfer(&src.ns, &dst.ns, dst.addr, port + 1, 16 << 20).unwrap();
    assert!(x.verified, "after the return: {x:?}");
}

#[test]
fn a_kernel_path_dropped_by_a_firewall_falls_back_and_returns_once() {
    fall_back_and_return("kpfw", "", 5610);
}

#[test]
fn a_kernel_path_with_an_mtu_black_hole_falls_back_and_returns_once() {
    // Small packets pass, pod-sized ones vanish: only probes at the full pod MTU see it.
    fall_back_and_return("kpmtu", "meta length > 1000", 5620);
}

#[test]
fn host_gw_on_the_segment_vxlan_past_the_router_and_a_vpc_that_drops_foreign_addresses() {
    require_root();
    let t = Topology::up(spec("kphgw", 3, Encryption::None, auto(0, true, 1))).unwrap();
    let (p, _) = wait_path(&t, 0, 1, |p| p.path == "host-gw");
    assert_eq!(p.reason, None, "{p:?}");
    wait_path(&t, 1, 0, |p| p.path == "host-gw");
    let (p, _) = wait_path(&t, 0, 2, |p| p.path == "kernel-vxlan");
    assert_eq!(
        p.reason.as_deref(),
        Some("host-gw: not on this node's L2 segment")
    );
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    let (src, dst) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    assert!(
        tcp_transfer(&src.ns, &dst.ns, dst.addr, 5630, 16 << 20)
            .unwrap()
            .verified
    );
    // h2's "VPC" drops packets for addresses it did not assign (pod addresses) on the underlay.
    nft_load(
        &t.hosts[1].ns,
        "table ip vpc {\n chain pre {\n type filter hook prerouting priority -300;\n \
         iifname \"u0\" ip daddr 10.244.0.0/16 drop\n }\n}\n",
    );
    let (p, took) = wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    assert!(
        p.reason
            .as_deref()
            .unwrap_or("")
            .contains("lost on host-gw"),
        "{p:?}"
    );
    eprintln!("host-gw → kernel-vxlan {took:?} after the VPC rule");
    let bad = unreachable_pairs(&t);
    assert!(
        bad.is_empty(),
        "unreachable pod pairs after the fallback: {bad:#?}"
    );
    assert!(
        tcp_transfer(&src.ns, &dst.ns, dst.addr, 5631, 16 << 20)
            .unwrap()
            .verified
    );
}

#[test]
fn pods_on_kernel_paths_keep_talking_while_meshd_is_down_and_restarts() {
    require_root();
    let t = Topology::up(spec("kprst", 2, Encryption::None, auto(0, false, 0))).unwrap();
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    wait_path(&t, 1, 0, |p| p.path == "kernel-vxlan");
    let (src, dst) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    // The pods talk before meshd stops; then pings every 50 ms across its absence.
    ping(&src.ns, dst.addr, 10).unwrap();
    let pinger = Pinger::start(&src.ns, dst.addr, Duration::from_millis(50)).unwrap();
    t.stop_meshd(0).unwrap();
    // meshd stays down a while: the kernel path must carry the pings on its own.
    std::thread::sleep(Duration::from_secs(3));
    t.start_meshd(0).unwrap();
    // Adopted, not recreated: the device, the routes and the peer's path.
    let k = status(&t, 0).kernel.unwrap();
    assert!(k.vxlan.starts_with("in use: meshvx0 (adopted"), "{k:?}");
    assert!(k.adopted.iter().any(|a| a == "device meshvx0"), "{k:?}");
    assert!(k.adopted.iter().any(|a| a.ends_with("routes")), "{k:?}");
    let (p, _) = wait_path(&t, 0, 1, |_| true);
    assert_eq!(p.path, "kernel-vxlan", "{p:?}");
    assert_eq!(
        p.moves, 0,
        "adopted on the kernel path, not moved there: {p:?}"
    );
    // And a while on the restarted meshd.
    std::thread::sleep(Duration::from_secs(2));
    let log = pinger.stop().unwrap();
    assert!(log.sent > 80, "{log:?}");
    assert_eq!(
        log.lost(),
        0,
        "pings lost across the restart (longest gap {:?})",
        log.longest_gap()
    );
    // `meshd cleanup` (meshd stopped) removes the device and meshd's routes, nothing else.
    t.stop_meshd(0).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.hosts[0].ns])
        .arg(meshd_bin())
        .args(["cleanup", "--config"])
        .arg(t.hosts[0].dir.join("meshd.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("removed link meshvx0"), "{said}");
    assert!(said.contains("removed nftables table inet meshd"), "{said}");
    let tables = nft(&t.hosts[0].ns, &["list", "tables"], "");
    assert!(!tables.contains("inet meshd"), "{tables}");
    let routes = ip_out(&["-n", &t.hosts[0].ns, "route", "show", "proto", "109"]);
    assert!(routes.is_empty(), "{routes}");
    let links = ip_out(&["-n", &t.hosts[0].ns, "-o", "link"]);
    assert!(
        !links.contains("meshvx0") && links.contains("u0"),
        "{links}"
    );
}

#[test]
fn encrypted_auto_falls_back_to_userspace_with_the_kernels_reason_and_kernel_mode_refuses() {
    require_root();
    let t = Topology::up(spec("kpwg", 2, Encryption::Wireguard, auto(0, false, 0))).unwrap();
    let k = status(&t, 0).kernel.unwrap();
    assert!(k.wireguard.starts_with("unavailable ("), "{k:?}");
    let p = path(&t, 0, 1);
    assert_eq!(p.path, "userspace");
    let why = p.reason.unwrap_or_default();
    assert!(why.starts_with("kernel wireguard unavailable ("), "{why}");
    assert!(unreachable_pairs(&t).is_empty());
    // datapath = "kernel" cannot be had here: meshd refuses to start, saying why.
    let cfg = t
        .meshd_config(&t.hosts[0])
        .replace("datapath = \"auto\"", "datapath = \"kernel\"");
    t.stop_meshd(0).unwrap();
    let path = t.hosts[0].dir.join("kernel.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.hosts[0].ns])
        .arg(meshd_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "datapath = \"kernel\": the kernel would not make the WireGuard device `meshwg0`"
        ),
        "{stderr}"
    );
    // And it left nothing behind: no TUN device, no WireGuard device.
    let links = ip_out(&["-n", &t.hosts[0].ns, "-o", "link"]);
    assert!(
        !links.contains("meshwg0") && !links.contains("mesh0:"),
        "{links}"
    );
}

#[test]
fn kernel_mode_starts_on_the_kernel_path_and_keeps_it_when_it_breaks_saying_so() {
    require_root();
    let paths = LabPaths {
        datapath: Datapath::Kernel,
        ..auto(0, false, 0)
    };
    let t = Topology::up(spec("kpkrn", 2, Encryption::None, paths)).unwrap();
    let (p, _) = wait_path(&t, 0, 1, |p| p.probes.iter().any(|x| x.sent > 0));
    assert_eq!((p.path.as_str(), p.moves), ("kernel-vxlan", 0), "{p:?}");
    assert!(unreachable_pairs(&t).is_empty());
    break_kernel_path(&t.hosts[0].ns, t.hosts[1].underlay, "");
    let (p, _) = wait_path(&t, 0, 1, |p| p.reason.is_some());
    assert_eq!(p.path, "kernel-vxlan");
    assert!(
        p.reason
            .as_deref()
            .unwrap_or("")
            .ends_with("; datapath = \"kernel\": no fallback"),
        "{p:?}"
    );
    assert_eq!(p.moves, 0);
}
