//! A kernel that refuses to steer the WireGuard port's reuseport group by peer address
//! (`SO_ATTACH_REUSEPORT_CBPF`, refused here for real by a seccomp filter around h1's meshd):
//! one socket then receives for every queue, so one thread decrypts each peer's session in the
//! order its datagrams came, however many source ports the peer sends from. Several RX
//! threads decrypting one session would reorder its counters past boringtun's window.
//!
//! ```text
//!   h2 pod ══ 16 TCP flows ══▶ h2: 4 queues, 4 source ports ─▶ h1:51820, one socket, one RX
//!                                                              worker (4 queues; steering refused)
//! ```

use super::encrypted::encrypted_spec;
use super::flows::{assert_flows, record_source_ports, source_ports};
use crate::support::{drops, require_root, status, wait_for_log};
use meshd::tiers::{Tier, Unavailable};
use meshd_lab::{HostKind, Topology};

#[test]
fn without_steering_one_socket_receives_each_session() {
    require_root();
    let mut spec = encrypted_spec("wgste", vec![HostKind::Meshd; 2]);
    spec.meshd_args = ["--queues", "4"].map(String::from).to_vec();
    spec.pods_per_host = 1;
    let mut t = Topology::up(spec).unwrap();
    // h1 again, under the filter.
    t.spec.meshd_bin = env!("CARGO_BIN_EXE_refuse-reuseport-bpf").into();
    let config = t.meshd_config(&t.hosts[0]);
    t.restart_meshd(0, &config).unwrap();
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    // The kernel did refuse it, and h1 says what it did instead.
    wait_for_log(&t, 0, "SO_ATTACH_REUSEPORT_CBPF refused");
    let s1 = status(&t, 0);
    assert!(
        matches!(
            s1.tiers.udp_flows,
            Tier::Unavailable(Unavailable::SteeringRefused(_))
        ),
        "{:?}",
        s1.tiers.udp_flows
    );
    assert_eq!(s1.queues.len(), 4);
    // h2 steers as usual and sends from a port per queue.
    record_source_ports(&h1.ns, h2.underlay, 51820);
    assert_flows(&t, 1, 0, 6501);
    let ports = source_ports(&h1.ns);
    assert!(ports.len() >= 2, "h2 sent from {ports:?} only");

    let s1 = status(&t, 0);
    let receiving: Vec<u64> = s1.queues.iter().map(|q| q.rx_datagrams).collect();
    assert_eq!(
        receiving.iter().filter(|n| **n > 0).count(),
        1,
        "h2's datagrams from ports {ports:?} were read by several of h1's queues: {receiving:?}"
    );
    assert_eq!(drops(&s1, Some(&h2.name), "replayed"), 0, "{:?}", s1.peers);
    // Every queue still sends, from the one port.
    assert!(
        s1.queues.iter().all(|q| q.source_port == 51820),
        "{:?}",
        s1.queues
    );
}
