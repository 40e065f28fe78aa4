//! Traffic leaving the cluster: pods reach a server outside `cluster-cidr` behind their node,
//! masqueraded to the node's address, except for destinations in `no-masquerade-cidrs`; pod to
//! pod and host to pod are never masqueraded; the rules live in meshd's table alone, once,
//! however often meshd restarts, come back after a firewall flush, and go with `meshd cleanup`.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd) ── meshbr0 ── p1 (10.244.1.x)
//!            │     └─ srv0 192.0.2.1 ──── s1: e0 192.0.2.2, lo 203.0.113.2 (exempt)
//!            └─ h2 (meshd) ── meshbr0 ── p1 (10.244.2.x)
//!                  └─ srv0 192.0.2.1 ──── s2: likewise
//! ```
//!
//! A server has no route to the pods (only to the node's 192.0.2.1), except for what it sends
//! from its exempt address 203.0.113.2 (a policy rule): a pod's ping of 192.0.2.2 is answered
//! only when masqueraded, one of 203.0.113.2 only when not.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::kernel_paths::{auto, spec};
use crate::support::{
    meshd_bin, nft, nft_delete, nft_load, require_root, status, wait_for, wait_until, SETTLE,
};
use meshd::config::{Datapath, Encryption};
use meshd_lab::netns::{in_netns, ip};
use meshd_lab::probe::ping;
use meshd_lab::{LabPaths, Topology};

pub(crate) const NODE_SIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const EXEMPT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const EXEMPT_CIDR: &str = "203.0.113.0/24";
/// A table of someone else's, which meshd must never touch.
const OPERATOR: &str = "table inet operator {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t\ttcp dport 9 accept\n\t}\n}\n";

/// A server namespace behind host `i` (named with the lab's prefix: the lab removes it).
pub(crate) fn add_server(t: &Topology, i: usize) -> String {
    let h = &t.hosts[i];
    let s = format!("{}-s{}", t.spec.prefix, i + 1);
    ip(&["netns", "add", &s]).unwrap();
    ip(&[
        "-n", &h.ns, "link", "add", "srv0", "type", "veth", "peer", "name", "e0", "netns", &s,
    ])
    .unwrap();
    ip(&["-n", &h.ns, "addr", "add", "192.0.2.1/24", "dev", "srv0"]).unwrap();
    ip(&["-n", &h.ns, "link", "set", "srv0", "up"]).unwrap();
    ip(&["-n", &h.ns, "route", "add", EXEMPT_CIDR, "via", "192.0.2.2"]).unwrap();
    ip(&["-n", &s, "link", "set", "lo", "up"]).unwrap();
    ip(&["-n", &s, "addr", "add", "192.0.2.2/24", "dev", "e0"]).unwrap();
    ip(&["-n", &s, "addr", "add", "203.0.113.2/32", "dev", "lo"]).unwrap();
    ip(&["-n", &s, "link", "set", "e0", "up"]).unwrap();
    // Only what the exempt address sends may go back to pod addresses.
    ip(&[
        "-n",
        &s,
        "rule",
        "add",
        "from",
        "203.0.113.2",
        "lookup",
        "100",
    ])
    .unwrap();
    ip(&[
        "-n",
        &s,
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "192.0.2.1",
        "table",
        "100",
    ])
    .unwrap();
    s
}

/// The address a TCP connection from namespace `from` to `to`:`port` arrives from, as the
/// listener in namespace `listen_ns` sees it.
pub(crate) fn peer_of(listen_ns: &str, from: &str, to: Ipv4Addr, port: u16) -> Ipv4Addr {
    let listener = in_netns(listen_ns, move || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept().map(|(_, a)| a));
    });
    let from = from.to_string();
    wait_until(&format!("{from} connects to {to}:{port}"), || {
        in_netns(&from, move || {
            TcpStream::connect_timeout(&SocketAddrV4::new(to, port).into(), Duration::from_secs(2))
        })
        .unwrap()
    });
    match rx.recv_timeout(SETTLE).unwrap().unwrap() {
        std::net::SocketAddr::V4(a) => *a.ip(),
        other => panic!("an IPv6 peer {other}"),
    }
}

/// The rules of meshd's table (chain and expression, as nft's JSON has them), sorted; empty
/// when there is no table.
pub(crate) fn rules(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "meshd",
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut rules: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("rule"))
        .map(|r| format!("{} {}", r["chain"], r["expr"]))
        .collect();
    rules.sort();
    rules
}

/// The packets of named counter `name` in meshd's table.
pub(crate) fn counter(ns: &str, name: &str) -> u64 {
    let out = nft(ns, &["-j", "list", "counter", "inet", "meshd", name], "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["counter"]["packets"].as_u64())
        .unwrap()
}

/// Pods on both hosts reach their node's server masqueraded (ping and TCP), its exempt address
/// with their own; pod to pod and host to pod are left alone.
fn check_egress(t: &Topology, servers: &[String], port: u16) {
    for (i, s) in servers.iter().enumerate() {
        let (h, pod) = (&t.hosts[i], &t.hosts[i].pods[0]);
        ping(&pod.ns, SERVER, 10)
            .unwrap_or_else(|e| panic!("h{}: pod cannot ping its server: {e}", i + 1));
        let seen = peer_of(s, &pod.ns, SERVER, port);
        assert_eq!(
            seen,
            NODE_SIDE,
            "h{}: the server saw the pod unmasqueraded",
            i + 1
        );
        ping(&pod.ns, EXEMPT, 10)
            .unwrap_or_else(|e| panic!("h{}: pod cannot ping the exempt address: {e}", i + 1));
        let seen = peer_of(s, &pod.ns, EXEMPT, port + 1);
        assert_eq!(
            seen,
            pod.addr,
            "h{}: an exempt destination saw the node",
            i + 1
        );
        assert!(h.subnet.contains(&seen));
    }
    // Pod to pod, and host to pod: what the receiver sees is the sender's own address, and the
    // masquerade rule never fired for them.
    let masq = counter(&t.hosts[0].ns, "egress_masq");
    let (a, b) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    assert_eq!(peer_of(&b.ns, &a.ns, b.addr, port + 2), a.addr);
    let host_seen = peer_of(&b.ns, &t.hosts[0].ns, b.addr, port + 3);
    let own = Command::new("ip")
        .args(["-n", &t.hosts[0].ns, "-4", "-o", "addr"])
        .output()
        .unwrap();
    let own = String::from_utf8_lossy(&own.stdout);
    assert!(
        own.contains(&format!("inet {host_seen}/")) && host_seen != NODE_SIDE,
        "host to pod arrived from {host_seen}, not one of h1's own addresses: {own}"
    );
    assert_eq!(counter(&t.hosts[0].ns, "egress_masq"), masq);
}

fn cleanup(t: &Topology, i: usize) -> std::process::Output {
    let h = &t.hosts[i];
    Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(meshd_bin())
        .args(["cleanup", "--config"])
        .arg(h.dir.join("meshd.toml"))
        .output()
        .unwrap()
}

fn lab(tag: &str, encryption: Encryption, paths: LabPaths) -> Topology {
    require_root();
    let mut s = spec(tag, 2, encryption, paths);
    s.meshd_args = vec!["--no-masquerade-cidrs".into(), EXEMPT_CIDR.into()];
    Topology::up(s).unwrap()
}

/// Cleartext on kernel paths: egress from both nodes, two restarts leave one copy of each
/// rule, `meshd cleanup` removes the table, and the operator's table is never touched.
#[test]
fn pods_leave_the_cluster_masqueraded_once_across_restarts() {
    let t = lab("egc", Encryption::None, auto(0, false, 0));
    let h1 = t.hosts[0].ns.clone();
    nft_load(&h1, OPERATOR);
    let operator = nft(&h1, &["list", "table", "inet", "operator"], "");
    // Another user's table: meshd's table tracks everything (no notrack chains) from now on.
    wait_for(
        &t,
        0,
        "every packet tracked for the operator's table",
        |s| {
            s.egress.as_ref().is_some_and(|e| {
                !e.untracked
                    && e.untracked_off
                        .as_deref()
                        .is_some_and(|w| w.contains("table inet operator"))
            })
        },
    );
    let servers: Vec<String> = (0..2).map(|i| add_server(&t, i)).collect();
    check_egress(&t, &servers, 7100);
    let e = status(&t, 0).egress.unwrap();
    assert!(e.masquerade && e.mss_clamping, "{e:?}");
    assert_eq!(e.no_masquerade_cidrs, [EXEMPT_CIDR]);

    let before = rules(&h1);
    assert_eq!(
        before
            .iter()
            .filter(|r| r.contains("\"masquerade\""))
            .count(),
        1,
        "{before:#?}"
    );
    for round in 0..2 {
        t.restart_meshd(0, &t.meshd_config(&t.hosts[0])).unwrap();
        wait_until(&format!("restart {round}: the same table again"), || {
            let now = rules(&h1);
            if now == before {
                Ok(())
            } else {
                Err(now)
            }
        });
    }
    let mut unique = before.clone();
    unique.dedup();
    assert_eq!(unique, before, "a rule appears twice");
    ping(&t.hosts[0].pods[0].ns, SERVER, 10).unwrap();
    assert_eq!(
        peer_of(&servers[0], &t.hosts[0].pods[0].ns, SERVER, 7110),
        NODE_SIDE
    );

    t.stop_meshd(0).unwrap();
    let out = cleanup(&t, 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rules(&h1).is_empty(), "cleanup left meshd's table");
    let tables = nft(&h1, &["list", "tables"], "");
    assert!(!tables.contains("meshd"), "{tables}");
    assert_eq!(
        nft(&h1, &["list", "table", "inet", "operator"], ""),
        operator
    );
}

/// Encrypted, on the userspace path (no kernel WireGuard here: the manager has no kernel path
/// to tend, and keeps the table all the same): egress from both nodes, and a firewall flush
/// is repaired.
#[test]
fn encrypted_userspace_nodes_masquerade_and_repair_a_flush() {
    let t = lab(
        "ege",
        Encryption::Wireguard,
        LabPaths {
            datapath: Datapath::Userspace,
            ..auto(0, false, 0)
        },
    );
    let h2 = t.hosts[1].ns.clone();
    let servers: Vec<String> = (0..2).map(|i| add_server(&t, i)).collect();
    check_egress(&t, &servers, 7200);
    // A firewall reload that flushes every table: the staged fault, then the repair.
    nft_load(&h2, OPERATOR);
    nft_delete(&h2, "inet", "meshd");
    assert!(rules(&h2).is_empty());
    wait_until("h2 writes its table again", || {
        let r = rules(&h2);
        if r.iter().any(|r| r.contains("\"masquerade\"")) {
            Ok(())
        } else {
            Err(r)
        }
    });
    ping(&t.hosts[1].pods[0].ns, SERVER, 10).unwrap();
    assert_eq!(
        peer_of(&servers[1], &t.hosts[1].pods[0].ns, SERVER, 7210),
        NODE_SIDE
    );
    assert!(nft(&h2, &["list", "tables"], "").contains("operator"));
    wait_for(&t, 1, "masqueraded connections counted", |s| {
        s.egress.as_ref().is_some_and(|e| e.masqueraded >= 1)
    });
}

/// `masquerade = false`: the server is reached unmasqueraded (it cannot answer) and the status
/// says masquerade is off and why.
#[test]
fn masquerade_off_leaves_pod_addresses_and_says_so() {
    let t = lab("egoff", Encryption::None, LabPaths::default());
    let h = &t.hosts[0];
    let servers = [add_server(&t, 0)];
    ping(&h.pods[0].ns, SERVER, 10).unwrap();
    let config = format!("masquerade = false\n{}", t.meshd_config(h));
    t.restart_meshd(0, &config).unwrap();
    let s = wait_for(&t, 0, "masquerade off", |s| {
        s.egress.as_ref().is_some_and(|e| !e.masquerade)
    });
    let e = s.egress.unwrap();
    assert_eq!(e.masquerade_off.as_deref(), Some("masquerade = false"));
    assert!(!rules(&h.ns).iter().any(|r| r.contains("\"masquerade\"")));
    assert!(
        ping(&h.pods[0].ns, SERVER, 3).is_err(),
        "answered without masquerade"
    );
    // The exempt route still works, from the pod's own address.
    assert_eq!(
        peer_of(&servers[0], &h.pods[0].ns, EXEMPT, 7300),
        h.pods[0].addr
    );
}
