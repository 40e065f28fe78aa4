//! Path-MTU discovery sends nothing to a peer nobody talks to (issue 23: "small probes for
//! liveness, full-size ones rarely, so probing costs little at scale"; issue 22: "idle public
//! nodes stay silent"): two encrypted nodes that formed a cluster and whose pods say nothing
//! exchange no WireGuard datagram and no handshake, and show each other's MTU as unconfirmed;
//! once a pod talks, the MTU is probed and confirmed.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed)   nftables: WireGuard datagrams in and out counted
//!            └─ h2 (meshd)
//! ```

use meshd::config::Encryption;
use meshd::paths::mtud::IDLE_AFTER;
use meshd::status::WireguardStatus;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, wait_for_mesh};
use crate::pmtud::{peer, pod_traffic};
use crate::support::{nft, nft_load, require_root, status, wait_until};

/// The UDP port host `i`'s WireGuard listens on, as its status says.
fn wireguard_port(t: &Topology, i: usize) -> String {
    let s = status(t, i).encryption;
    s.split("UDP ")
        .nth(1)
        .map(|p| p.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("no port in {s:?}"))
}

/// WireGuard datagrams h1 received and sent since the counters were loaded.
fn datagrams(t: &Topology) -> (u64, u64) {
    let count = |chain: &str| {
        let out = nft(
            &t.hosts[0].ns,
            &["list", "chain", "inet", "wgidle", chain],
            "",
        );
        out.split("packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {out}"))
    };
    (count("in"), count("out"))
}

/// Host `i`'s session with host `j`.
fn session(t: &Topology, i: usize, j: usize) -> WireguardStatus {
    let p = peer(t, i, j).unwrap_or_else(|| panic!("h{} does not know h{}", i + 1, j + 1));
    p.wireguard
        .unwrap_or_else(|| panic!("no session in {:?}", p.name))
}

#[test]
fn idle_encrypted_nodes_send_each_other_nothing_until_their_pods_talk() {
    require_root();
    let t = Topology::up(gossip_spec("pmi", 2, Encryption::Wireguard)).unwrap();
    let port = wireguard_port(&t, 0);
    nft_load(
        &t.hosts[0].ns,
        &format!(
            "table inet wgidle {{\n chain in {{\n  type filter hook input priority 0;\n  \
             udp dport {port} counter\n }}\n chain out {{\n  type filter hook output priority \
             0;\n  udp sport {port} counter\n }}\n}}\n"
        ),
    );
    wait_for_mesh(&t, &[0, 1]);
    // Idle: three times as long as a peer that carried traffic is still probed after it.
    std::thread::sleep(IDLE_AFTER * 3);
    assert_eq!(
        datagrams(&t),
        (0, 0),
        "idle nodes exchanged WireGuard datagrams"
    );
    for (i, j) in [(0, 1), (1, 0)] {
        let wg = session(&t, i, j);
        assert_eq!((wg.handshakes, wg.last_handshake_secs), (0, None), "{wg:?}");
        let p = peer(&t, i, j).unwrap();
        assert_eq!(
            (p.mtu_source.as_str(), p.mtu_idle.as_deref()),
            ("unconfirmed", Some("no traffic yet")),
            "h{}'s view of h{}: {p:#?}",
            i + 1,
            j + 1
        );
    }

    // h1's pod talks to h2's: a handshake, and h1 confirms h2's MTU.
    let p = wait_until("h1 confirms h2's MTU under pod traffic", || {
        pod_traffic(&t, 0, 1);
        match peer(&t, 0, 1) {
            Some(p) if p.mtu_source == "probed" && p.mtu_idle.is_none() => Ok(p),
            other => Err(other.map(|p| (p.mtu, p.mtu_source, p.mtu_idle))),
        }
    });
    assert_eq!(p.mtu, status(&t, 0).mtu, "nothing narrows this path");
    assert!(p.mtu_confirmed_secs.is_some(), "{p:#?}");
    // The counters count: the zeros above could have been otherwise.
    let (rx, tx) = datagrams(&t);
    assert!(rx > 0 && tx > 0, "({rx}, {tx})");
    for (i, j) in [(0, 1), (1, 0)] {
        let wg = session(&t, i, j);
        assert!(
            wg.handshakes >= 1 && wg.last_handshake_secs.is_some(),
            "{wg:?}"
        );
    }
}
