//! One object per peer, seen from outside: a change that leaves a peer's path alone leaves its
//! kernel state alone (a secret rotation on a cluster on kernel paths moves no path and removes
//! no route), and kernel state converges on what meshd wants (a route the kernel refuses is
//! retried, and shown as refused meanwhile, until it holds).
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, kernel VXLAN) ── meshbr0 ── p1      `ip monitor route` in h1..h3
//!            ├─ h2 (meshd, kernel VXLAN) ── meshbr0 ── p1
//!            └─ h3 (meshd, kernel VXLAN) ── meshbr0 ── p1
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::cluster::unreachable_pairs;
use crate::gossip::{peer_names, wait_for_all_alive};
use crate::kernel_paths::{auto, spec, wait_path};
use crate::rotation::step;
use crate::support::{meshd_pid, require_root, status, wait_for, wait_until};
use meshd::config::{Datapath, Encryption};
use meshd_crypto::{ClusterSecret, SecretId};
use meshd_lab::wireguard::host_secret_path;
use meshd_lab::{Formation, LabPaths, Topology};

/// `ip monitor route` in a namespace, its lines collected as they come.
struct RouteMonitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RouteMonitor {
    fn start(ns: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["-n", ns, "monitor", "route"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        RouteMonitor { child, lines }
    }

    /// meshd's routes (protocol 109) deleted so far.
    fn deleted(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("Deleted") && l.contains("proto 109"))
            .cloned()
            .collect()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_secret_rotation_on_kernel_paths_moves_no_path_and_removes_no_route() {
    require_root();
    let mut s = spec("plrot", 3, Encryption::None, auto(0, false, 0));
    s.formation = Formation::Gossip;
    let t = Topology::up(s).unwrap();
    let all = [0, 1, 2];
    for i in all {
        for j in all.iter().copied().filter(|j| *j != i) {
            wait_path(&t, i, j, |p| p.path == "kernel-vxlan");
        }
    }
    assert!(unreachable_pairs(&t).is_empty());
    let monitors: Vec<RouteMonitor> = t.hosts.iter().map(|h| RouteMonitor::start(&h.ns)).collect();
    // Moves so far (each peer's climb from userspace at start), node-wide and per peer.
    let moves = |i: usize| {
        let s = status(&t, i);
        let peers: Vec<(String, u64)> = s
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.path.as_ref().map_or(0, |x| x.moves)))
            .collect();
        (s.kernel.unwrap().moves, peers)
    };
    let moves_before: Vec<_> = all.map(moves).to_vec();

    let old = ClusterSecret::read_file(&host_secret_path(&t.hosts[0])).unwrap();
    let new = ClusterSecret::generate();
    let new_id = SecretId::of(&new).to_string();
    step(&t, &[&old, &new], true);
    step(&t, &[&new, &old], true);
    step(&t, &[&new], true);
    // The rotation happened: every node seals with the new secret alone, and gossip from both
    // others opens under it.
    for i in all {
        wait_for(
            &t,
            i,
            "sealing with the new secret, gossip opening under it",
            |s| {
                let held = s.secrets.as_deref().unwrap_or_default();
                held.len() == 1
                    && held[0].id == new_id
                    && held[0].sealing
                    && held[0].opened.unwrap_or(0) > 0
            },
        );
        wait_for_all_alive(&t, i, 2);
    }
    for (i, m) in monitors.iter().enumerate() {
        assert_eq!(m.deleted(), Vec::<String>::new(), "h{} lost a route", i + 1);
        assert_eq!(moves(i), moves_before[i], "h{} moved a path", i + 1);
        for p in &status(&t, i).peers {
            let path = p.path.as_ref().unwrap().path.as_str();
            assert_eq!(path, "kernel-vxlan", "h{} → {}", i + 1, p.name);
        }
    }
    assert!(unreachable_pairs(&t).is_empty());

    // And the monitors do see meshd remove a route: h3 leaves, the others withdraw it.
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(meshd_pid(&t, 2), libc::SIGTERM) };
    let h3 = t.hosts[2].name.clone();
    for i in [0, 1] {
        wait_for(&t, i, "h3 withdrawn", |s| !peer_names(s).contains(&h3));
        let m = &monitors[i];
        wait_until("h3's route deleted", || {
            let d = m.deleted();
            if d.is_empty() {
                Err(d)
            } else {
                Ok(())
            }
        });
    }
}

#[test]
fn a_route_the_kernel_refuses_is_retried_until_it_holds() {
    require_root();
    let paths = LabPaths {
        datapath: Datapath::Kernel,
        ..auto(0, false, 0)
    };
    let t = Topology::up(spec("plret", 2, Encryption::None, paths)).unwrap();
    wait_path(&t, 0, 1, |p| p.probes.iter().any(|x| x.sent > 0));
    assert!(unreachable_pairs(&t).is_empty());
    let (ns, subnet) = (&t.hosts[0].ns, t.hosts[1].subnet.to_string());
    let routed = || {
        let out = Command::new("ip")
            .args(["-n", ns, "route", "show", "proto", "109", &subnet])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("dev meshvx0")
    };
    assert!(routed());
    let link = |state: &str| {
        let ok = Command::new("ip")
            .args(["-n", ns, "link", "set", "meshvx0", state])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set meshvx0 {state}");
    };
    // The device goes down: the kernel takes meshd's route with it, and refuses it back
    // ("Network is down") while the device stays down.
    link("down");
    wait_until("the kernel dropped the route with the device", || {
        (!routed()).then_some(()).ok_or("still routed")
    });
    let (p, _) = wait_path(&t, 0, 1, |p| p.route_error.is_some());
    let refused = p.route_error.unwrap_or_default();
    assert!(refused.contains("Network is down"), "{refused}");
    assert!(!routed());
    // Up again: the next retry holds, the entries the device lost come back, pods talk.
    link("up");
    wait_path(&t, 0, 1, |p| p.route_error.is_none());
    wait_until("the route is back", || {
        routed().then_some(()).ok_or("no route")
    });
    wait_until("pods reach each other again", || {
        let bad = unreachable_pairs(&t);
        bad.is_empty().then_some(()).ok_or(bad)
    });
    assert_eq!(wait_path(&t, 0, 1, |_| true).0.moves, 0);
}
