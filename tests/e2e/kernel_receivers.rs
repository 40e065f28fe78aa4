//! Where each peer receives VXLAN decides its path on a veth underlay (issue 25), and is learnt
//! at run time: static peers (`[[peers]]`) as well as gossip members. Nodes that both receive
//! in their kernel keep the VXLAN device's checksum offload (read with `ethtool -k`); a peer
//! that truly receives in userspace stays on the userspace path, and checksummed TCP to it
//! arrives intact, pod to pod and host to pod.

use std::process::Command;

use meshd::config::Encryption;
use meshd::host::gateway;
use meshd::status::PathStatus;
use meshd_lab::probe::tcp_transfer;
use meshd_lab::{Formation, Topology};

use crate::kernel_paths::{auto, spec, wait_path};
use crate::support::{require_root, status};

/// The state `ethtool -k` gives `dev`'s transmit checksumming in `ns`: "on" or "off".
fn tx_checksumming(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-k", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool -k {dev} in {ns}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let state = text
        .lines()
        .find_map(|l| l.strip_prefix("tx-checksumming: "))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_string);
    state.unwrap_or_else(|| panic!("no tx-checksumming line: {text}"))
}

/// Waits until host `from` has found that host `to` receives in userspace, and checks that it
/// keeps `to` on the userspace path, saying why.
pub(crate) fn held_on_userspace(t: &Topology, from: usize, to: usize) -> PathStatus {
    let (p, _) = wait_path(t, from, to, |p| {
        p.receives
            .as_deref()
            .is_some_and(|r| r.starts_with("userspace ("))
    });
    assert_eq!(p.path, "userspace", "{p:?}");
    let why = p.reason.clone().unwrap_or_default();
    assert!(
        why.contains("receives in userspace") && why.contains("cost more than the userspace"),
        "{p:?}"
    );
    p
}

/// Checked TCP transfers pod to pod and host to pod, both ways between hosts `a` and `b`.
fn transfers_arrive_intact(t: &Topology, a: usize, b: usize, port: u16) {
    for (i, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
        let (src, dst) = (&t.hosts[from], &t.hosts[to]);
        let pods = tcp_transfer(
            &src.pods[0].ns,
            &dst.pods[0].ns,
            dst.pods[0].addr,
            port + 2 * i as u16,
            16 << 20,
        )
        .unwrap();
        assert!(
            pods.verified,
            "h{} pod → h{} pod: {pods:?}",
            from + 1,
            to + 1
        );
        let host = tcp_transfer(
            &src.ns,
            &dst.pods[0].ns,
            dst.pods[0].addr,
            port + 2 * i as u16 + 1,
            16 << 20,
        )
        .unwrap();
        assert!(host.verified, "h{} → h{} pod: {host:?}", from + 1, to + 1);
    }
}

fn both_receive_in_their_kernel(tag: &str, formation: Formation) {
    let mut s = spec(tag, 2, Encryption::None, auto(0, false, 0));
    s.formation = formation;
    let t = Topology::up(s).unwrap();
    for (a, b) in [(0, 1), (1, 0)] {
        // The verdict of this node's own checks, not a record's word.
        let (p, _) = wait_path(&t, a, b, |p| {
            p.path == "kernel-vxlan"
                && p.receives.as_deref().is_some_and(|r| {
                    r.starts_with("kernel (")
                        && !r.contains("gossip")
                        && !r.starts_with("kernel (0 of")
                })
        });
        assert_eq!(p.reason, None, "h{} → h{}: {p:?}", a + 1, b + 1);
    }
    for h in 0..2 {
        let k = status(&t, h).kernel.unwrap();
        assert!(
            k.vxlan.contains("checksum offload on") && !k.vxlan.contains("in software"),
            "h{}: {k:?}",
            h + 1
        );
        assert_eq!(
            tx_checksumming(&t.hosts[h].ns, "meshvx0"),
            "on",
            "h{}",
            h + 1
        );
    }
    // Host to host from the bridge address, the shape the outside harness measures.
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let x = tcp_transfer(&h1.ns, &h2.ns, gateway(h2.subnet), 5710, 16 << 20).unwrap();
    assert!(x.verified, "h1 → h2's bridge: {x:?}");
    transfers_arrive_intact(&t, 0, 1, 5712);
}

#[test]
fn static_peers_learn_they_receive_in_their_kernels_and_keep_the_offload() {
    require_root();
    both_receive_in_their_kernel("krst", Formation::Static);
}

#[test]
fn gossip_members_are_checked_too_and_keep_the_offload() {
    require_root();
    both_receive_in_their_kernel("krgs", Formation::Gossip);
}

#[test]
fn a_static_peer_that_receives_in_userspace_stays_on_userspace_with_offload_on_and_intact_tcp() {
    require_root();
    // h2 runs `datapath = "userspace"`: a real userspace receiver, which h1 cannot be told of.
    let t = Topology::up(spec("krus", 2, Encryption::None, auto(1, false, 0))).unwrap();
    let k2 = status(&t, 1).kernel.unwrap();
    assert!(k2.vxlan.contains("datapath = \"userspace\""), "{k2:?}");
    let p = held_on_userspace(&t, 0, 1);
    // The kernel path itself works: its probes pass while the checks go unanswered.
    let vx = p.probes.iter().find(|x| x.path == "kernel-vxlan");
    assert!(vx.is_some_and(|x| x.sent > 0 && !x.failing), "{p:?}");
    let k1 = status(&t, 0).kernel.unwrap();
    assert!(k1.vxlan.contains("checksum offload on"), "{k1:?}");
    assert_eq!(tx_checksumming(&t.hosts[0].ns, "meshvx0"), "on");
    transfers_arrive_intact(&t, 0, 1, 5720);
    // Still so after the transfers: no verdict flipped back and forth.
    let (p, _) = wait_path(&t, 0, 1, |_| true);
    assert_eq!((p.path.as_str(), p.moves), ("userspace", 0), "{p:?}");
}

#[test]
fn a_gossip_member_that_receives_in_userspace_stays_on_userspace_with_offload_on() {
    require_root();
    // h3's record says it has no kernel VXLAN device: h1 and h2 send to it from userspace and
    // keep their offload for each other.
    let mut s = spec("krgu", 3, Encryption::None, auto(1, false, 0));
    s.formation = Formation::Gossip;
    let t = Topology::up(s).unwrap();
    for from in [0, 1] {
        held_on_userspace(&t, from, 2);
        wait_path(&t, from, 1 - from, |p| p.path == "kernel-vxlan");
        let k = status(&t, from).kernel.unwrap();
        assert!(k.vxlan.contains("checksum offload on"), "{k:?}");
        assert_eq!(tx_checksumming(&t.hosts[from].ns, "meshvx0"), "on");
    }
    transfers_arrive_intact(&t, 0, 2, 5730);
    transfers_arrive_intact(&t, 1, 2, 5734);
}
