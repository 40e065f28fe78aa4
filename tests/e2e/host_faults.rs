//! Faults a by-hand deployment found on the host side of a node (issue 14): the host itself
//! cannot reach remote pods, gossip hands out a static peer's subnet, a state directory meshd
//! cannot write leaves a half-configured daemon, a corrupt lease re-addresses the bridge.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed; [[peers]] static-x 198.18.0.250 → X, never answers)
//!            ├─ h2 (meshd) ── meshbr0 ── p1
//!            └─ h3 (meshd) ── meshbr0 ── p1
//! ```
//! Each test builds only what it needs of this (two hosts, or one); the state-directory test
//! runs its meshd in a mount namespace of its own (`unshare -m`) holding a read-only or a full
//! tmpfs, so nothing is mounted outside it.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshd::config::Encryption;
use meshd_lab::probe::{ping, tcp_transfer};
use meshd_lab::{HostKind, Topology};

use crate::cluster::spec;
use crate::gossip::{gossip_spec, peer_names, restart_with_lease, wait_for_mesh};
use crate::support::{log, meshd_bin, require_root, status, wait_for, wait_for_log};

/// Every host pings a pod on every other host from its own namespace, with no source chosen,
/// and sends it 4 MiB over TCP. Returns what failed, with the route the host used.
fn host_to_remote_pods(t: &Topology) -> Vec<String> {
    let mut bad = Vec::new();
    for a in &t.hosts {
        for (j, b) in t
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, b)| b.index != a.index)
        {
            let pod = &b.pods[0];
            let echo = ping(&a.ns, pod.addr, 5);
            let port = 5300 + u16::try_from(10 * a.index + j).unwrap();
            let tcp = tcp_transfer(&a.ns, &pod.ns, pod.addr, port, 4 << 20);
            let tcp_ok = tcp.as_ref().is_ok_and(|x| x.verified);
            if echo.is_err() || !tcp_ok {
                bad.push(format!(
                    "{} -> {}: ping {}, tcp {}; route: {}",
                    a.name,
                    pod.addr,
                    echo.map_or_else(|e| format!("{e:#}"), |rtt| format!("{rtt:?}")),
                    tcp.map_or_else(|e| format!("{e:#}"), |x| format!("{x:?}")),
                    route_get(&a.ns, pod.addr)
                ));
            }
        }
    }
    bad
}

fn route_get(ns: &str, dst: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "get", &dst.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Static peers, cleartext: the subnet is known when the host is set up.
#[test]
fn a_host_reaches_remote_pods_without_choosing_a_source_cleartext() {
    require_root();
    let t = Topology::up(spec("hsrc", vec![HostKind::Meshd; 2], &[])).unwrap();
    let bad = host_to_remote_pods(&t);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Gossip, encrypted: the subnet (and so the route's source) arrives with the lease.
#[test]
fn a_host_reaches_remote_pods_without_choosing_a_source_encrypted() {
    require_root();
    let t = Topology::up(gossip_spec("hsrcwg", 2, Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1]);
    let bad = host_to_remote_pods(&t);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// h1 routes a static peer (a host outside gossip, which never answers) to the subnet h3 held:
/// h3 moves off it, h3 started afresh (no lease) never takes it although only h1 lists the
/// peer, and h2 configured with it explicitly keeps it and logs the conflict at error.
#[test]
fn a_static_peers_subnet_is_never_given_to_a_gossip_node() {
    require_root();
    let t = Topology::up(gossip_spec("hstatic", 3, Encryption::None)).unwrap();
    let all = [0, 1, 2];
    wait_for_mesh(&t, &all);
    let x = status(&t, 2).subnet;
    let h1 = &t.hosts[0];
    let with_static = format!(
        "{}\n[[peers]]\nname = \"static-x\"\naddress = \"198.18.0.250\"\nsubnet = \"{x}\"\n",
        t.meshd_config(h1)
    );
    t.restart_meshd(0, &with_static).unwrap();
    wait_for(&t, 2, &format!("h3 should leave {x}"), |s| {
        s.subnet != x && s.subnet.ends_with("/24")
    });
    let log = wait_for_log(&t, 2, "static peer");
    assert!(log.contains("WARN"), "{log}");

    // h3 again, as a new node: a state directory without a lease.
    let h3 = &t.hosts[2];
    let state = h3.dir.join("state").display().to_string();
    let fresh = t
        .meshd_config(h3)
        .replace(&state, &h3.dir.join("state-new").display().to_string());
    assert_ne!(fresh, t.meshd_config(h3));
    t.restart_meshd(2, &fresh).unwrap();
    // One mesh again; h1 also routes the static peer.
    for i in all {
        let mut want: HashSet<String> = all
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| t.hosts[j].name.clone())
            .collect();
        if i == 0 {
            want.insert("static-x".into());
        }
        wait_for(&t, i, &format!("peers should be {want:?}"), |s| {
            peer_names(s) == want
        });
    }
    wait_for(&t, 2, "h3 should take a lease", |s| {
        s.subnet.ends_with("/24")
    });
    let leases = leases_in_log(&t, 2);
    eprintln!("h3 held {x}; started afresh after h1 reserved it, it was given {leases:?}");
    assert!(!leases.is_empty(), "h3 took no lease");
    assert!(!leases.contains(&x), "h3 was given {x}: {leases:?}");
    for i in all {
        assert_ne!(status(&t, i).subnet, x, "h{} holds {x}", i + 1);
    }

    // h2 claims it explicitly: kept, and an error says why it cannot be routed.
    let explicit = format!("subnet = \"{x}\"\n{}", t.meshd_config(&t.hosts[1]));
    t.restart_meshd(1, &explicit).unwrap();
    wait_for(&t, 1, &format!("h2 should hold {x}"), |s| s.subnet == x);
    let log = wait_for_log(&t, 1, "static peer");
    let line = log.lines().find(|l| l.contains("static peer")).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&t.hosts[0].name), "the line names h1: {line}");
}

/// The `subnet lease` lines of host `i`'s log: every subnet it was given since it started.
fn leases_in_log(t: &Topology, i: usize) -> Vec<String> {
    without_colour(&log(t, i))
        .lines()
        .filter(|l| l.contains("subnet lease"))
        .filter_map(|l| l.split("subnet=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which colour log fields.
fn without_colour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A gossip node whose state directory is a read-only tmpfs, then a full one: meshd exits
/// non-zero at start, naming the directory and the cause, and makes nothing (no network.json,
/// no status socket). Before, it ran on with no lease, no bridge and no network.json.
#[test]
fn a_state_directory_meshd_cannot_write_stops_it_with_the_path() {
    require_root();
    let t = Topology::up(gossip_spec("hstate", 1, Encryption::None)).unwrap();
    t.stop_meshd(0).unwrap();
    let h = &t.hosts[0];
    let cases = [
        ("ro", "mount -t tmpfs -o ro,size=64k meshd-test \"$1\"", "Read-only file system"),
        (
            "full",
            "mount -t tmpfs -o size=4k meshd-test \"$1\" && { dd if=/dev/zero of=\"$1/fill\" bs=4096 2>/dev/null; true; }",
            "No space left on device",
        ),
    ];
    for (tag, mount, cause) in cases {
        let state = h.dir.join(format!("state-{tag}"));
        let run = h.dir.join(format!("run-{tag}"));
        std::fs::create_dir_all(&state).unwrap();
        let config = t
            .meshd_config(h)
            .replace(
                &h.dir.join("state").display().to_string(),
                &state.display().to_string(),
            )
            .replace(
                &h.dir.join("run").display().to_string(),
                &run.display().to_string(),
            );
        let config_path = h.dir.join(format!("meshd-{tag}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log_path = h.dir.join(format!("meshd-{tag}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        // The mount lives in the private mount namespace `unshare` makes, and dies with it.
        let script = format!("{mount} && exec ip netns exec \"$2\" \"$3\" run --config \"$4\"");
        let mut child = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script.as_str(),
                "sh",
            ])
            .arg(&state)
            .arg(&h.ns)
            .arg(meshd_bin())
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = std::fs::read_to_string(&log_path).unwrap();
        assert!(exit.is_some(), "{tag}: meshd still ran after 20 s:\n{text}");
        assert!(!exit.unwrap().success(), "{tag}: {exit:?}\n{text}");
        assert!(
            text.contains(&state.display().to_string()),
            "{tag}: the path:\n{text}"
        );
        assert!(text.contains(cause), "{tag}: the cause:\n{text}");
        assert!(!text.contains("meshd is up"), "{tag}: it started:\n{text}");
        assert!(!run.join(meshd::runfiles::NETWORK_FILE).exists(), "{tag}");
        assert!(!run.join(meshd::runfiles::SOCKET_NAME).exists(), "{tag}");
    }
}

/// A lone gossip node holds S (not the subnet a fresh pick gives it); then its lease file is
/// emptied, truncated, or made garbage, and meshd restarted: it keeps S on the bridge and in its
/// status, logs the file's path at error, and rewrites the file with a lease on S. Before, it
/// took a new subnet and re-addressed the bridge under its pods.
#[test]
fn a_corrupt_lease_keeps_the_bridges_subnet() {
    require_root();
    let t = Topology::up(gossip_spec("hlease", 1, Encryption::None)).unwrap();
    let picked = status(&t, 0).subnet;
    let held = (200..=255)
        .map(|n| format!("10.244.{n}.0/24"))
        .find(|s| *s != picked)
        .unwrap();
    restart_with_lease(&t, 0, &held);
    wait_for(&t, 0, &format!("h1 should hold {held}"), |s| {
        s.subnet == held
    });
    let h = &t.hosts[0];
    let lease = h.dir.join("state").join(meshd::runfiles::LEASE_FILE);
    let valid = std::fs::read_to_string(&lease).unwrap();
    let gateway = format!("{}/24", held.replace(".0/24", ".1"));
    for (what, body) in [
        ("empty", String::new()),
        ("truncated", valid[..valid.len() / 2].to_string()),
        ("garbage", "\u{0}\u{1}not a lease at all".to_string()),
    ] {
        // Stopped first: a running meshd may write its lease again on the way out.
        t.stop_meshd(0).unwrap();
        std::fs::write(&lease, &body).unwrap();
        assert_eq!(
            std::fs::read_to_string(&lease).unwrap(),
            body,
            "{what}: staged"
        );
        t.start_meshd(0).unwrap();
        // Longer than the claim delay (3 s), after which a node with no claim picks one.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let s = status(&t, 0);
            assert_eq!(s.subnet, held, "{what} lease: the subnet moved");
            std::thread::sleep(Duration::from_millis(250));
        }
        let addrs = Command::new("ip")
            .args(["-n", &h.ns, "-4", "-o", "addr", "show", "dev", "meshbr0"])
            .output()
            .unwrap();
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        assert!(addrs.contains(&gateway), "{what}: bridge has {addrs}");
        assert_eq!(addrs.lines().count(), 1, "{what}: bridge has {addrs}");
        let text = log(&t, 0);
        let line = text
            .lines()
            .find(|l| l.contains("ERROR") && l.contains(&lease.display().to_string()));
        assert!(
            line.is_some(),
            "{what}: no error naming {}:\n{text}",
            lease.display()
        );
        assert!(line.unwrap().contains(&held), "{what}: {line:?}");
        let rewritten: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&lease).unwrap()).unwrap();
        let addr = held.split('/').next().unwrap();
        assert_eq!(rewritten["subnet"]["addr"], addr, "{what}: {rewritten}");
    }
}
