//! Several UDP flows per peer (`tiers.udp-flows`): each queue sends from a source port of its
//! own, so one peer's inner flows (spread over the TUN queues by flow hash) reach the receiver
//! as several UDP flows, and the receiver's sockets take them by source port, a queue each
//! (cleartext), or all on the queue the peer's address picks (WireGuard: one thread checks a
//! session's counters, in the order they came, against boringtun's 1,024-counter window).
//! With the tier off, everything a peer sends comes from the data port and lands on one queue;
//! and since the TUN device sends a flow out of the queue its answers came in on, one queue
//! then carries nearly all of it on both nodes.
//! Foreign peers keep working: a kernel VXLAN device takes any source port, and wireguard-go
//! answers the latest source, which an RX worker reads (the one its address picks, whichever
//! port: `wg_interop.rs`); `interop.rs` and `wg_interop.rs` run [`assert_flows`] against them.
//!
//! ```text
//!   h1 pod ══ 16 TCP flows ══▶ h1 TUN queues 0, 1 ─▶ UDP from ports B, B+1 ─▶ h2 queues 0, 1 ─▶ h2 pod
//! ```

use super::cluster::spec;
use crate::support::{nft, nft_load, require_root, status};
use meshd::config::Encryption;
use meshd::tiers::{InUse, Steer, Tier};
use meshd_lab::probe::tcp_transfer;
use meshd_lab::{HostKind, Topology};
use std::net::Ipv4Addr;
use std::process::Command;

/// Concurrent TCP flows in [`assert_flows`]: with two queues, the chance that the TUN device's
/// flow hash puts all of them on one queue is 2^-15.
pub const FLOWS: u16 = 16;

/// [`FLOWS`] TCP transfers at once from host `from`'s first pod to host `to`'s, on ports from
/// `base`, each 4 MiB and checked end to end.
pub fn assert_flows(t: &Topology, from: usize, to: usize, base: u16) {
    let (a, b) = (t.hosts[from].pods[0].clone(), t.hosts[to].pods[0].clone());
    let flows: Vec<_> = (0..FLOWS)
        .map(|i| {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || tcp_transfer(&a.ns, &b.ns, b.addr, base + i, 4 << 20))
        })
        .collect();
    for (i, f) in flows.into_iter().enumerate() {
        let x = f.join().unwrap().unwrap();
        assert!(
            x.verified,
            "flow {i} of {FLOWS}, {} -> {}: arrived corrupted or short ({} bytes)",
            a.addr, b.addr, x.bytes
        );
    }
}

/// From now on, host namespace `ns` records the UDP source ports of datagrams from `from` to
/// its port `dport`.
pub fn record_source_ports(ns: &str, from: Ipv4Addr, dport: u16) {
    record_ports(
        ns,
        "sports",
        &format!("ip saddr {from} udp dport {dport}"),
        "udp sport",
    );
}

/// The source ports [`record_source_ports`] saw.
pub fn source_ports(ns: &str) -> Vec<u16> {
    recorded_ports(ns, "sports")
}

/// From now on, host namespace `ns` records the ports datagrams from `from`'s port `sport`
/// are sent to.
pub fn record_destination_ports(ns: &str, from: Ipv4Addr, sport: u16) {
    record_ports(
        ns,
        "dports",
        &format!("ip saddr {from} udp sport {sport}"),
        "udp dport",
    );
}

/// The ports [`record_destination_ports`] saw.
pub fn destination_ports(ns: &str) -> Vec<u16> {
    recorded_ports(ns, "dports")
}

/// An nftables set `set` in `ns` that collects `what` of the datagrams matching `filter`.
fn record_ports(ns: &str, set: &str, filter: &str, what: &str) {
    nft_load(
        ns,
        &format!(
            "table ip meshd_test_{set} {{
               set ports {{ type inet_service; flags dynamic; size 4096; }}
               chain input {{
                 type filter hook input priority -10; policy accept;
                 {filter} add @ports {{ {what} }}
               }}
             }}"
        ),
    );
}

fn recorded_ports(ns: &str, set: &str) -> Vec<u16> {
    let text = nft(
        ns,
        &["list", "set", "ip", &format!("meshd_test_{set}"), "ports"],
        "",
    );
    let Some(inside) = text
        .split_once("elements = {")
        .and_then(|(_, r)| r.split_once('}'))
        .map(|(e, _)| e)
    else {
        return Vec::new();
    };
    inside
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

fn two_queue_lab(tag: &str, encryption: Encryption, args: &[&str]) -> Topology {
    require_root();
    let mut args = args.to_vec();
    args.extend(["--queues", "2"]);
    let mut s = spec(tag, vec![HostKind::Meshd, HostKind::Meshd], &args);
    s.pods_per_host = 1;
    s.encryption = encryption;
    Topology::up(s).unwrap()
}

fn flows_spread_over_the_receivers_queues(tag: &str, encryption: Encryption) {
    let t = two_queue_lab(tag, encryption, &[]);
    let port = status(&t, 1).peers[0]
        .endpoint
        .rsplit_once(':')
        .unwrap()
        .1
        .parse::<u16>()
        .unwrap();
    record_source_ports(&t.hosts[1].ns, t.hosts[0].underlay, port);
    assert_flows(&t, 0, 1, 6301);
    let (s1, s2) = (status(&t, 0), status(&t, 1));
    let by = match encryption {
        Encryption::None => Steer::SourcePort,
        Encryption::Wireguard => Steer::PeerAddress,
    };
    let first = match s1.tiers.udp_flows {
        Tier::InUse(InUse::Flows {
            ports: 2,
            first,
            steered: Some(b),
        }) if b == by => first,
        ref other => unreachable!("udp flows: {other:?}"),
    };
    assert_eq!(first % 840, 0, "flow ports start at a multiple of 840");
    let sent: Vec<u16> = s1.queues.iter().map(|q| q.source_port).collect();
    assert_eq!(sent, [first, first + 1]);
    // h1 sent from both of its queues' ports.
    let seen = source_ports(&t.hosts[1].ns);
    assert!(
        seen.contains(&first) && seen.contains(&(first + 1)),
        "h2 saw source ports {seen:?}, h1 sends from {sent:?}"
    );
    match by {
        // Cleartext: h2 took each port on the same-numbered queue.
        Steer::SourcePort => {
            for (i, (q1, q2)) in s1.queues.iter().zip(&s2.queues).enumerate() {
                assert!(
                    q1.tx_datagrams > 100 && q2.rx_datagrams >= q1.tx_datagrams / 100 * 95,
                    "queue {i}: h1 sent {} datagrams from port {}, h2's queue {i} received {}: {:?} / {:?}",
                    q1.tx_datagrams,
                    q1.source_port,
                    q2.rx_datagrams,
                    s1.queues,
                    s2.queues
                );
            }
        }
        // WireGuard: h2 took all of h1's datagrams, from both ports, on one queue, so one
        // thread checks the session's counters in the order they came (no replay drops below).
        // Its answers then leave from that one queue, and the TUN device sends h1's flows out
        // of the queue their answers came in on: h1's second port carries little.
        Steer::PeerAddress => {
            let sent: u64 = s1.queues.iter().map(|q| q.tx_datagrams).sum();
            let busiest = s2.queues.iter().map(|q| q.rx_datagrams).max().unwrap();
            assert!(
                busiest >= sent / 100 * 95,
                "h1 sent {sent} datagrams from {} ports; h2's queues received {:?}",
                s1.queues.len(),
                s2.queues
            );
        }
    }
    assert!(s2.peers[0].stats.drops.is_empty(), "{:?}", s2.peers[0]);
}

#[test]
fn a_peers_flows_spread_over_the_receivers_queues_cleartext() {
    flows_spread_over_the_receivers_queues("flwc", Encryption::None);
}

#[test]
fn a_peers_flows_spread_over_the_receivers_queues_wireguard() {
    flows_spread_over_the_receivers_queues("flww", Encryption::Wireguard);
}

#[test]
fn without_udp_flows_a_peer_is_one_flow_on_one_queue() {
    let t = two_queue_lab("flwoff", Encryption::Wireguard, &["--no-udp-flows"]);
    record_source_ports(&t.hosts[1].ns, t.hosts[0].underlay, 51820);
    assert_flows(&t, 0, 1, 6401);
    let (s1, s2) = (status(&t, 0), status(&t, 1));
    assert_eq!(s1.tiers.udp_flows, Tier::DisabledByConfig);
    assert_eq!(source_ports(&t.hosts[1].ns), [51820]);
    assert!(
        s1.queues.iter().all(|q| q.source_port == 51820),
        "{:?}",
        s1.queues
    );
    let busy = s2.queues.iter().filter(|q| q.rx_datagrams > 0).count();
    assert_eq!(
        busy, 1,
        "one source port, one receiving queue: {:?}",
        s2.queues
    );
}

/// The RX worker's hand-off: a ping's echo reply, produced inside h2's TUN write of the
/// request, is sent by the RX worker that wrote the request while the TX workers sleep (one
/// thread wake-up less per round trip), whichever TUN queue the kernel put it in: an echo
/// reply does not hash as its request did, so with two queues it often lands in the other
/// one. Every ping must come back, h2 must count answers sent that way, and h2's TX workers
/// must not be woken for them (the RX worker's claim stops their wake-up across the write):
/// they sleep about once for each batch they send themselves (a probe, a keepalive), not once
/// a ping.
#[test]
fn answers_leave_from_the_rx_worker_whichever_queue_they_land_in() {
    const PINGS: u64 = 20;
    let t = two_queue_lab("flwans", Encryption::Wireguard, &[]);
    let (a, b) = (&t.hosts[0].pods[0], &t.hosts[1].pods[0]);
    let ping = |count: u64| {
        Command::new("ip")
            .args(["netns", "exec", &a.ns, "ping", "-c", &count.to_string()])
            .args(["-i", "0.1", "-W", "2"])
            .arg(b.addr.to_string())
            .output()
            .unwrap()
    };
    ping(2); // sessions up
    let (sleeps0, s0) = (tx_sleeps(&t.hosts[1].ns), status(&t, 1));
    let out = ping(PINGS);
    let (sleeps1, s1) = (tx_sleeps(&t.hosts[1].ns), status(&t, 1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{PINGS} packets transmitted, {PINGS} received")),
        "ping {} -> {}: {text}",
        a.addr,
        b.addr
    );
    let total = |s: &meshd::status::Status, f: fn(&meshd::status::QueueStatus) -> u64| -> u64 {
        s.queues.iter().map(f).sum()
    };
    let answered = total(&s1, |q| q.answered) - total(&s0, |q| q.answered);
    let sent = total(&s1, |q| q.tx_datagrams) - total(&s0, |q| q.tx_datagrams);
    assert!(
        answered >= 1 && answered <= sent,
        "h2 sent {sent} datagrams, {answered} of them answers from its RX workers: {:?}",
        s1.queues
    );
    // Each TX worker's own sends cost it a sleep each at most (and a timeout or two).
    let woken = sleeps1 - sleeps0;
    assert!(
        woken < PINGS / 2 + (sent - answered),
        "h2's TX workers slept {woken} times over {PINGS} pings, sending {} datagrams themselves",
        sent - answered
    );
}

/// Sleeps (voluntary context switches) so far of the data-path TX workers of the meshd in
/// host namespace `ns`.
fn tx_sleeps(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    let mut n = 0;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "meshd" {
            continue;
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if !name.contains("-tx-") {
                continue;
            }
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            n += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    assert!(n > 0, "no TX worker of meshd found in {ns}");
    n
}
