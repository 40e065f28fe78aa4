//! Relaying (encrypted mode), in the NAT lab: a1 (behind a port-keeping masquerade) and b1
//! (behind a NAT that maps every destination anew) have no direct path, so their WireGuard
//! datagrams go through a public member's per-pair relay port, unopened.
//!
//! The pair reaches each other both ways (ICMP, a checksummed TCP transfer); both name the same
//! relay; the relay counts the pair's bytes each way; a capture on the relay sees only
//! WireGuard datagrams between the pair's public addresses and never a pod's plaintext marker,
//! which the same capture on the pod's own interface shows (so the check can fail); a stranger's
//! datagrams to the pair's port are refused and counted. Then the
//! relay in use is killed during a transfer: the transfer completes through the other relay
//! with a correct checksum, and no other member is declared down.

use std::process::Command;
use std::time::Duration;

use meshd::status::Status;
use meshd_lab::probe::{tcp_transfer, Pinger};
use meshd_lab::Topology;

use crate::gossip::wait_for_mesh;
use crate::nat::{nat_spec, pod, reach, reach_of, role, A1, B1, C1, PUB1, PUB2};
use crate::support::capture::{udp_datagrams, Capture};
use crate::support::{
    log, meshd_pid, require_root, status, try_status, wait_for, wait_gone, wait_until,
};

/// A plaintext a pod writes (`ping -p` fills the payload with it), 8 bytes.
const MARKER: &[u8; 8] = b"rlymark!";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `payload` is shaped as a WireGuard message: type 1 to 4, three reserved zeros.
pub(crate) fn is_wireguard(payload: &[u8]) -> bool {
    payload.len() >= 32 && (1..=4).contains(&payload[0]) && payload[1..4] == [0, 0, 0]
}

/// The relay both a1 and b1 route through, once both say so (and it is not `not`). Each side
/// chooses on its own measurements, so for a moment (one side's newer measurement, a loaded
/// machine) the two may name different relays, which the relays carry all the same (every
/// relay offered forwards the pair): the answer is the one they agree on.
pub(crate) fn relay_in_use(t: &Topology, not: Option<&str>) -> String {
    let route = |i: usize, j: usize| {
        try_status(t, i).and_then(|s| {
            s.peers
                .iter()
                .find(|p| p.name == t.hosts[j].name)
                .and_then(|p| p.reach.as_ref())
                .map(|r| r.route.clone())
        })
    };
    wait_until("a1 and b1 relayed through the same relay", || {
        let (a, b) = (route(A1, B1), route(B1, A1));
        match (&a, &b) {
            (Some(x), Some(y))
                if x == y
                    && x.starts_with("relayed via ")
                    && not.is_none_or(|n| !x.ends_with(n)) =>
            {
                Ok(x.trim_start_matches("relayed via ").to_string())
            }
            _ => Err((a, b)),
        }
    })
}

pub(crate) fn pair_counted(s: &Status, t: &Topology) -> Option<(u64, u64)> {
    let (a1, b1) = (&t.hosts[A1].name, &t.hosts[B1].name);
    s.relaying.iter().find_map(|r| {
        let ab = (&r.a == a1 && &r.b == b1) || (&r.a == b1 && &r.b == a1);
        ab.then_some((r.a_to_b_bytes, r.b_to_a_bytes))
    })
}

/// The NAT lab, formed, with a1 and b1 reaching each other through a relay: the lab and the
/// relay's index (pub1 or pub2).
pub(crate) fn relayed_lab(prefix: &str) -> (Topology, usize) {
    let t = Topology::up(nat_spec(prefix, &[])).unwrap();
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    reach(&t, A1, B1);
    reach(&t, B1, A1);
    let via = relay_in_use(&t, None);
    let relay = [PUB1, PUB2]
        .into_iter()
        .find(|&i| t.hosts[i].name == via)
        .unwrap_or_else(|| panic!("relayed via {via}, not pub1 or pub2"));
    (t, relay)
}

#[test]
fn a_pair_without_a_direct_path_is_relayed_end_to_end_encrypted_and_survives_its_relay() {
    require_root();
    let (t, relay) = relayed_lab("relay");
    let via = t.hosts[relay].name.clone();
    let other = if relay == PUB1 { PUB2 } else { PUB1 };
    println!("a1↔b1 relayed via {} ({via})", role(&t, relay));
    let s = status(&t, A1);
    let r = reach_of(&s, &t, B1);
    // The relay a1 chose is the one in use, or waits while the pair is on the one b1 chose.
    assert!(
        r.relay.as_deref().is_some_and(|w| {
            w.starts_with(&format!("{via} at")) && w.contains(", in use, no direct path works:")
                || w.contains(&format!(", standby, the pair is on {via}'s port:"))
        }),
        "{r:#?}"
    );
    assert_eq!(
        r.endpoint.split(':').next(),
        Some(t.hosts[relay].underlay.to_string().as_str())
    );
    for (n, (x, y)) in [(A1, B1), (B1, A1)].into_iter().enumerate() {
        let ((from, _), (to, addr)) = (pod(&t, x), pod(&t, y));
        let r = tcp_transfer(&from, &to, addr, 5300 + n as u16, 2 << 20).unwrap();
        assert!(r.verified, "{} → {}: {r:?}", role(&t, x), role(&t, y));
    }
    // Through the relays, whichever each side sent into (every relay offered forwards both
    // ways, and a side may move to one measured clearly faster meanwhile).
    let (ab, ba) = [relay, other]
        .iter()
        .filter_map(|&i| pair_counted(&status(&t, i), &t))
        .fold((0, 0), |(x, y), (a, b)| (x + a, y + b));
    assert!(
        ab > 2 << 20 && ba > 2 << 20,
        "relayed bytes each way, both relays: {ab}, {ba}"
    );

    let port = s
        .peers
        .iter()
        .find(|p| p.name == t.hosts[B1].name)
        .and_then(|p| p.reach.as_ref())
        .map(|r| r.endpoint.rsplit(':').next().unwrap().to_string())
        .unwrap();
    let port: u16 = port.parse().unwrap();
    // A stranger (c1, neither side) sends WireGuard-shaped datagrams to the pair's port: each
    // refused and counted, nothing forwarded, the pair untouched.
    let refused = |s: &Status| {
        let (a1, b1) = (&t.hosts[A1].name, &t.hosts[B1].name);
        let r = s
            .relaying
            .iter()
            .find(|r| [&r.a, &r.b] == [a1, b1] || [&r.a, &r.b] == [b1, a1]);
        r.map_or(0, |r| r.refused)
    };
    let before = refused(&status(&t, relay));
    let to = std::net::SocketAddr::from((t.hosts[relay].underlay, port));
    meshd_lab::netns::in_netns(&t.hosts[C1].ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut forged = vec![4u8, 0, 0, 0];
        forged.extend([7u8; 60]);
        for _ in 0..5 {
            s.send_to(&forged, to).unwrap();
        }
    })
    .unwrap();
    wait_for(&t, relay, "the stranger's datagrams refused", |s| {
        refused(s) >= before + 5
    });
    reach(&t, A1, B1);
    let through_port = |pcap: &[u8], port: Option<u16>| {
        udp_datagrams(pcap)
            .into_iter()
            .filter(|(from, to, _)| Some(from.port()) == port || Some(to.port()) == port)
            .collect::<Vec<_>>()
    };
    // The pair's port on each relay: a side may move to the other relay (measured faster)
    // at any time, so both are captured.
    let pair_port = |i: usize| {
        let (a1, b1) = (&t.hosts[A1].name, &t.hosts[B1].name);
        status(&t, i)
            .relaying
            .iter()
            .find(|r| [&r.a, &r.b] == [a1, b1] || [&r.a, &r.b] == [b1, a1])
            .map(|r| r.port)
    };
    // Captures on the relays: WireGuard between router-a's and router-b's addresses only; the
    // pod's plaintext marker, which the pod's own interface shows, never.
    let on_relays: Vec<(Capture, Option<u16>)> = [relay, other]
        .into_iter()
        .map(|i| {
            let c = Capture::start(
                &t.hosts[i].ns,
                &format!("{}-relay{i}", t.spec.prefix),
                "udp",
            );
            (c, pair_port(i))
        })
        .collect();
    let (a1_pod, _) = pod(&t, A1);
    let on_pod = Capture::start_on(&a1_pod, "eth0", &format!("{}-pod", t.spec.prefix), "icmp");
    let (_, b1_addr) = pod(&t, B1);
    let hex: String = MARKER.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &a1_pod, "ping", "-c", "5", "-i", "0.2", "-s", "200", "-p",
        ])
        .args([hex.as_str(), &b1_addr.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Five echoes and five replies, each into the relay port and out of it.
    let mut relayed = Vec::new();
    let mut relay_bytes = Vec::new();
    for (capture, port) in on_relays {
        let before = relayed.len();
        let bytes = capture.finish_when(|b| before + through_port(b, port).len() >= 20);
        relayed.extend(through_port(&bytes, port).into_iter().map(|d| (d, port)));
        relay_bytes.extend(bytes);
    }
    let pod_bytes = on_pod.finish_when(|b| contains(b, MARKER));
    assert!(
        contains(&pod_bytes, MARKER),
        "the pod sent the marker in the clear ({} bytes captured; ping said {})",
        pod_bytes.len(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !contains(&relay_bytes, MARKER),
        "the relay saw a pod's plaintext"
    );
    assert!(
        relayed.len() >= 20,
        "the pings went through the relays' ports: {}",
        relayed.len()
    );
    let sides = ["198.18.0.101", "198.18.0.102"];
    for ((from, to, payload), port) in &relayed {
        let side = if Some(from.port()) == *port { to } else { from };
        assert!(
            sides.contains(&side.ip().to_string().as_str()),
            "{from} → {to}"
        );
        assert!(
            is_wireguard(payload),
            "{from} → {to}: not WireGuard: {payload:02x?}"
        );
    }

    // The relay dies during a transfer: the other one takes over.
    let ((a_ns, _), (b_ns, b_addr)) = (pod(&t, A1), pod(&t, B1));
    let pinger = Pinger::start(&a_ns, b_addr, Duration::from_millis(50)).unwrap();
    let transfer = std::thread::spawn(move || tcp_transfer(&a_ns, &b_ns, b_addr, 5310, 256 << 20));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !transfer.is_finished(),
        "the transfer runs when the relay dies"
    );
    let pid = meshd_pid(&t, relay);
    // SAFETY: a signal to the lab's meshd.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
    let r = transfer.join().unwrap().unwrap();
    assert!(r.verified, "the transfer across the relay's death: {r:?}");
    std::thread::sleep(Duration::from_millis(500));
    let pings = pinger.stop().unwrap();
    println!(
        "relay {} killed: transfer {:?}, pings lost {}, longest silence {:?}",
        role(&t, relay),
        r.elapsed,
        pings.lost(),
        pings.longest_gap()
    );
    let now = relay_in_use(&t, Some(&t.hosts[relay].name));
    assert_eq!(now, t.hosts[other].name, "the other relay took over");
    assert!(pair_counted(&status(&t, other), &t).is_some_and(|(ab, _)| ab > 0));
    // Nobody but the killed relay was declared down.
    for i in (0..t.hosts.len()).filter(|&i| i != relay) {
        let s = status(&t, i);
        for m in s.members.unwrap_or_default() {
            if m.name != t.hosts[relay].name {
                assert_eq!(m.state, "alive", "{} sees {}", role(&t, i), m.name);
            }
        }
        let downs: Vec<String> = log(&t, i)
            .lines()
            .filter(|l| l.contains("member down: withdrawing"))
            .filter(|l| !l.contains(t.hosts[relay].name.as_str()))
            .map(String::from)
            .collect();
        assert!(downs.is_empty(), "{}: {downs:#?}", role(&t, i));
    }
}
