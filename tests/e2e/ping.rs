//! `meshd ping`: to a live node and a pod (replies, the path named, exit 0), at a size the path
//! does not carry, to an address no member owns and to a node whose meshd was killed (no
//! reply, the reason named, non-zero); an address outside the cluster is refused unsent.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed, datapath auto)  ── meshbr0 ── p1   pings h2 (kernel-vxlan)
//!            ├─ h2 (meshd, datapath auto)               ── meshbr0 ── p1   killed
//!            └─ h3 (meshd, datapath userspace)          ── meshbr0 ── p1   pings h1's pod (userspace vxlan)
//! ```
//! Cleartext, subnets by gossip.

use std::process::{Command, Output};

use meshd::config::Encryption;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, wait_for_all_alive, wait_for_mesh};
use crate::kernel_paths::{auto, wait_path};
use crate::support::{
    meshd_bin, meshd_pid, nft, nft_load, require_root, status, wait_for, wait_gone,
};

/// `meshd ping ARGS` on host `i`, as an operator would run it there.
pub(crate) fn ping(t: &Topology, i: usize, args: &[&str]) -> Output {
    let run_dir = t.hosts[i].dir.join("run");
    Command::new("ip")
        .args(["netns", "exec", &t.hosts[i].ns])
        .arg(meshd_bin())
        .arg("ping")
        .args(args)
        .args(["--interval", "0.2", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn ping_names_the_path_or_why_nothing_came_back() {
    require_root();
    let spec = gossip_spec("ping", 3, Encryption::None);
    let t = Topology::up(meshd_lab::Spec {
        paths: auto(1, false, 0),
        ..spec
    })
    .unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    wait_for_all_alive(&t, 0, 2);
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    let h2 = t.hosts[1].name.clone();

    // A live node: every probe answered, the path its status gives named on each line.
    let o = ping(&t, 0, &[&h2, "--count", "3"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out.matches("path kernel-vxlan").count(), 4, "{out}");
    assert!(out.contains("3 sent, 3 received, 0% lost"), "{out}");
    // A pod, from the userspace node, at the pod MTU, waiting for a direct path first.
    let pod = t.hosts[0].pods[0].addr.to_string();
    let mtu = status(&t, 2).mtu;
    let o = ping(&t, 2, &[&pod, "--size", &mtu.to_string(), "--until-direct"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("is direct: userspace vxlan"), "{out}");
    assert!(out.contains(&format!("{mtu} B from {pod}: seq=1")), "{out}");
    assert!(out.contains("path userspace vxlan"), "{out}");

    // Too large for the path: DF is set, so nothing is fragmented and nothing comes back.
    let o = ping(
        &t,
        0,
        &[&h2, "--count", "1", "--size", &(mtu + 50).to_string()],
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(
        err.contains("do not fit the route") || err.contains("larger than the MTU"),
        "{err}"
    );

    // An address in the cluster that no member owns.
    let taken: Vec<String> = (0..3).map(|i| status(&t, i).subnet).collect();
    let free = (1..=254u8)
        .map(|n| format!("10.244.{n}.0/24"))
        .find(|s| !taken.contains(s))
        .unwrap();
    let addr = free.replace(".0/24", ".7");
    let o = ping(&t, 0, &[&addr, "--count", "2"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(out.contains("2 sent, 0 received, 100% lost"), "{out}");
    assert!(
        err.contains(&format!("no route: no member owns {free}")),
        "{err}"
    );
    // Outside the cluster: refused, nothing sent.
    let o = ping(&t, 0, &["192.0.2.1"]);
    let (out, err) = text(&o);
    assert!(!o.status.success() && !out.contains("PING"), "{out}{err}");
    assert!(
        err.contains("outside the cluster CIDR 10.244.0.0/16"),
        "{err}"
    );

    // h2's meshd dies without a word: first that it died and that h1 knows, then the reason.
    let pid = meshd_pid(&t, 1);
    // SAFETY: kill(2) on the pid of the meshd the lab started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
    wait_for(&t, 0, &format!("{h2} down"), |s| {
        s.members
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| m.name == h2 && m.state == "down")
    });
    let h2_pod = t.hosts[1].pods[0].addr.to_string();
    for target in [h2.as_str(), h2_pod.as_str()] {
        let o = ping(&t, 0, &[target, "--count", "2"]);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{out}{err}");
        assert!(out.contains("0 received"), "{out}");
        assert!(err.contains(&format!("peer {h2} down since ")), "{err}");
    }
    // The live node still answers.
    let h3 = t.hosts[2].name.clone();
    assert!(ping(&t, 0, &[&h3, "--count", "1"]).status.success());
}

/// Encrypted, userspace: the path is named with its encapsulation, and a node whose WireGuard
/// port drops everything (its gossip still flows, so it stays a routed member) is named for the
/// handshake that never completes.
///
/// ```text
///   sw: br0 ─┬─ h1 (meshd, gossip seed)   pings h2 and h3
///            ├─ h2 (meshd)
///            └─ h3 (meshd)                nftables: UDP to its WireGuard port dropped
/// ```
#[test]
fn ping_over_userspace_wireguard_and_a_handshake_that_never_completes() {
    require_root();
    let t = Topology::up(gossip_spec("pingwg", 3, Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    let (h2, h3) = (t.hosts[1].name.clone(), t.hosts[2].name.clone());
    let port = status(&t, 2)
        .encryption
        .split("UDP ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')')
        .to_owned();
    nft_load(
        &t.hosts[2].ns,
        &format!(
            "table inet pingblock {{\n chain in {{\n type filter hook input priority 0;\n \
             udp dport {port} counter drop\n }}\n}}\n"
        ),
    );
    let o = ping(&t, 0, &[&h2, "--count", "2"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out.matches("path userspace wireguard").count(), 3, "{out}");

    let session = |s: &meshd::status::Status| {
        s.peers
            .iter()
            .find(|p| p.name == h3)
            .and_then(|p| p.wireguard.clone())
            .unwrap()
    };
    assert_eq!(session(&status(&t, 0)).last_handshake_secs, None);
    let o = ping(&t, 0, &[&h3, "--count", "2"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    // The fault took: h1's handshakes reached h3 and were dropped, and none completed.
    let rules = nft(&t.hosts[2].ns, &["list", "table", "inet", "pingblock"], "");
    assert!(!rules.contains("packets 0 "), "{rules}");
    assert_eq!(session(&status(&t, 0)).last_handshake_secs, None);
    assert!(err.contains("handshake not completed"), "{err}");
}
