//! Connection tracking, which the egress masquerade turns on for a node's namespace, is skipped
//! for meshd's own underlay datagrams and for traffic between cluster addresses while meshd is
//! the namespace's only netfilter user, and everything is tracked again once another user (a
//! firewall, kube-proxy, a CNI portmap) puts a table there.
//!
//! Each look at the kernel's connection table comes after traffic that would have made entries,
//! and beside a flow that must be tracked (host to the peer's underlay address, ICMP): an empty
//! table could otherwise mean tracking was off altogether.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use crate::egress::{add_server, rules, NODE_SIDE, SERVER};
use crate::kernel_paths::{auto, spec};
use crate::support::{nft_delete, nft_load, require_root, wait_for};
use meshd::config::{Datapath, Encryption};
use meshd_lab::probe::ping;
use meshd_lab::{LabPaths, Topology};

const WIREGUARD_PORT: &str = "51820";
/// Someone else's table: its presence alone must turn the skipping off.
const OPERATOR: &str = "table ip operator {\n\tchain c {\n\t\ttype filter hook input priority 10; policy accept;\n\t}\n}\n";

/// `conntrack ARG` in namespace `ns` (`-L` lists, `-F` flushes): its output, one entry a line.
fn conntrack(ns: &str, arg: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", arg])
        .output()
        .unwrap_or_else(|e| panic!("conntrack {arg} in {ns}: {e}"));
    assert!(out.status.success(), "conntrack {arg} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Pod to pod, host to pod, and host to the peer's underlay address (the flow that is always
/// tracked); each must be answered.
fn traffic(t: &Topology) {
    let (h1, p1, p2) = (&t.hosts[0], &t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    ping(&p1.ns, p2.addr, 5).unwrap_or_else(|e| panic!("pod to pod: {e}"));
    ping(&h1.ns, p2.addr, 5).unwrap_or_else(|e| panic!("host to pod: {e}"));
    ping(&h1.ns, t.hosts[1].underlay, 3).unwrap_or_else(|e| panic!("host to host: {e}"));
}

/// Whether meshd's table in `ns` has the chains that skip tracking.
fn has_notrack(ns: &str) -> bool {
    rules(ns).iter().any(|r| r.contains("notrack"))
}

/// h1's connection table after a flush and [`traffic`], which always holds the host-to-host
/// flow: without it, tracking would be off altogether and an empty table would prove nothing.
fn entries_after_traffic(t: &Topology) -> Vec<String> {
    let h1 = &t.hosts[0].ns;
    conntrack(h1, "-F");
    traffic(t);
    let seen = conntrack(h1, "-L");
    let underlay = format!("dst={} ", t.hosts[1].underlay);
    assert!(
        seen.iter().any(|e| e.contains(&underlay)),
        "host to host was not tracked, so tracking is off altogether: {seen:?}"
    );
    seen
}

/// A datagram from port 51820 in pod namespace `pod` to the server's port 51820: the server
/// sees the node's address, and its answer reaches the pod.
fn pod_on_the_data_port(pod: &str, server: &str) {
    let port: u16 = WIREGUARD_PORT.parse().unwrap();
    let listen = meshd_lab::netns::in_netns(server, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    listen
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = meshd_lab::netns::in_netns(pod, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"to the server", (SERVER, port)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = listen
        .recv_from(&mut buf)
        .expect("the server hears the pod");
    assert_eq!(&buf[..n], b"to the server");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(NODE_SIDE),
        "not masqueraded"
    );
    listen.send_to(b"answer", from).unwrap();
    let (n, _) = client
        .recv_from(&mut buf)
        .expect("the answer reaches the pod");
    assert_eq!(&buf[..n], b"answer");
}

fn in_cluster(entry: &str) -> bool {
    entry.contains("src=10.244.") && entry.contains("dst=10.244.") && !entry.contains("224.0.0.")
}

fn underlay(entry: &str) -> bool {
    entry.contains(&format!("port={WIREGUARD_PORT} "))
}

#[test]
fn tracking_is_skipped_only_while_meshd_is_the_only_netfilter_user() {
    require_root();
    let paths = LabPaths {
        datapath: Datapath::Userspace,
        ..auto(0, false, 0)
    };
    let t = Topology::up(spec("ntk", 2, Encryption::Wireguard, paths)).unwrap();
    let h1 = t.hosts[0].ns.clone();
    let s = wait_for(&t, 0, "tracking skipped", |s| {
        s.egress.as_ref().is_some_and(|e| e.untracked)
    });
    assert!(s
        .egress
        .is_some_and(|e| e.masquerade && e.untracked_off.is_none()));
    assert!(has_notrack(&h1), "{:?}", rules(&h1));
    let seen = entries_after_traffic(&t);
    assert!(
        !seen.iter().any(|e| in_cluster(e) || underlay(e)),
        "in-cluster or underlay traffic was tracked: {seen:?}"
    );

    // A pod's own traffic on the data port to a server outside the cluster (a WireGuard client
    // in a pod) is not meshd's: it is masqueraded both ways, the answer to the port included.
    let server = add_server(&t, 0);
    pod_on_the_data_port(&t.hosts[0].pods[0].ns, &server);

    // The staged fault: an operator's table appears. Then every packet is tracked again.
    nft_load(&h1, OPERATOR);
    let s = wait_for(&t, 0, "tracking on again", |s| {
        s.egress.as_ref().is_some_and(|e| !e.untracked)
    });
    let why = s.egress.and_then(|e| e.untracked_off).unwrap_or_default();
    assert!(why.contains("table ip operator"), "{why}");
    assert!(!has_notrack(&h1), "{:?}", rules(&h1));
    let seen = entries_after_traffic(&t);
    assert!(
        seen.iter().any(|e| in_cluster(e)),
        "pod to pod untracked: {seen:?}"
    );
    assert!(
        seen.iter().any(|e| underlay(e)),
        "the underlay untracked: {seen:?}"
    );
    nft_delete(&h1, "ip", "operator");
}
