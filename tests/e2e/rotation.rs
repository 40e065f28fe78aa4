//! Rotating the cluster secret on a running encrypted gossip cluster, node by node, in the
//! three documented steps (add the new secret, make it primary, drop the old), while pods ping
//! each other: not one ping may be lost, every pair ends up keyed from the new secret, and a
//! node that goes back to the old secret alone is shut out.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed)  <dir>/cluster.secret ── meshbr0 ── p1
//!            ├─ h2 (meshd)               <dir>/cluster.secret ── meshbr0 ── p1
//!            └─ h3 (meshd)               <dir>/cluster.secret ── meshbr0 ── p1
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshd::config::Encryption;
use meshd::status::Status;
use meshd_crypto::{ClusterSecret, SecretId};
use meshd_lab::probe::ping;
use meshd_lab::wireguard::host_secret_path;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, peer_names, wait_for_all_alive};
use crate::support::{meshd_pid, require_root, status, wait_for};

/// Replaces host `i`'s secret file the way an operator (or a Kubernetes Secret volume) would:
/// a new file renamed over the old one, mode 0600.
fn write_ring(t: &Topology, i: usize, ring: &[&ClusterSecret]) {
    let path = host_secret_path(&t.hosts[i]);
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .unwrap();
    for s in ring {
        writeln!(f, "{}", s.to_base64().as_str()).unwrap();
    }
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();
}

fn hup(t: &Topology, i: usize) {
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(meshd_pid(t, i), libc::SIGHUP) };
}

/// The ids host `i` reports holding, primary first, with the sealing flag.
fn held(s: &Status) -> Vec<(String, bool)> {
    s.secrets
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|k| (k.id.clone(), k.sealing))
        .collect()
}

fn expect_ring(ring: &[&ClusterSecret]) -> Vec<(String, bool)> {
    ring.iter()
        .enumerate()
        .map(|(n, s)| (SecretId::of(s).to_string(), n == 0))
        .collect()
}

/// Every peer of host `i` is keyed from `secret`, agreed, with a completed handshake and no
/// session left over from the previous key.
fn settled_on(s: &Status, secret: &str) -> bool {
    s.peers.len() == 2
        && s.peers.iter().all(|p| {
            p.wireguard.as_ref().is_some_and(|w| {
                w.psk_secret == secret
                    && w.psk_agreed
                    && !w.retiring
                    && !w.psk_pending
                    && w.last_handshake_secs.is_some()
            })
        })
}

/// One rotation step, applied host by host, a second apart; by SIGHUP or left to the file poll.
pub(crate) fn step(t: &Topology, ring: &[&ClusterSecret], signal: bool) {
    for i in 0..t.hosts.len() {
        write_ring(t, i, ring);
        if signal {
            hup(t, i);
        }
        let want = expect_ring(ring);
        wait_for(t, i, &format!("secrets should be {want:?}"), |s| {
            held(s) == want
        });
        // Not a wait: a rolling change, the next host a second later.
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn the_cluster_secret_rotates_without_losing_a_ping() {
    require_root();
    let t = Topology::up(gossip_spec("grot", 3, Encryption::Wireguard)).unwrap();
    let all: Vec<usize> = (0..3).collect();
    crate::gossip::wait_for_mesh(&t, &all);
    let old = ClusterSecret::read_file(&host_secret_path(&t.hosts[0])).unwrap();
    let new = ClusterSecret::generate();
    let (old_id, new_id) = (
        SecretId::of(&old).to_string(),
        SecretId::of(&new).to_string(),
    );
    // Sessions start with traffic.
    for &i in &all {
        for &j in &all {
            if i != j {
                ping(&t.hosts[i].pods[0].ns, t.hosts[j].pods[0].addr, 5).unwrap();
            }
        }
    }
    for i in all.clone() {
        wait_for(&t, i, "every pair keyed from the lab's secret", |s| {
            settled_on(s, &old_id)
        });
    }

    // Each pod pings the next host's pod, one echo at a time, each given a second.
    let stop = Arc::new(AtomicBool::new(false));
    let pingers: Vec<_> = all
        .iter()
        .map(|&i| {
            let (src, dst) = (
                t.hosts[i].pods[0].ns.clone(),
                t.hosts[(i + 1) % 3].pods[0].addr,
            );
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent, mut lost) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    lost += u32::from(ping(&src, dst, 1).is_err());
                    std::thread::sleep(Duration::from_millis(20));
                }
                (sent, lost)
            })
        })
        .collect();

    step(&t, &[&old, &new], true);
    // Both secrets everywhere: each pair keyed from the lower id of the two.
    let both = old_id.clone().min(new_id.clone());
    for &i in &all {
        wait_for(&t, i, &format!("pairs keyed from {both}"), |s| {
            settled_on(s, &both)
        });
    }
    step(&t, &[&new, &old], false);
    step(&t, &[&new], true);
    for &i in &all {
        wait_for(&t, i, "pairs keyed from the new secret", |s| {
            settled_on(s, &new_id)
        });
        wait_for_all_alive(&t, i, 2);
    }
    stop.store(true, Ordering::Relaxed);
    for (i, p) in pingers.into_iter().enumerate() {
        let (sent, lost) = p.join().unwrap();
        eprintln!(
            "h{} -> h{}: {sent} pings, {lost} lost",
            i + 1,
            (i + 1) % 3 + 1
        );
        assert!(sent > 50, "the pinger barely ran: {sent}");
        assert_eq!(lost, 0, "h{} lost {lost} of {sent} pings", i + 1);
    }
    for &i in &all {
        let s = status(&t, i);
        assert_eq!(s.gossip.as_ref().unwrap().open_failures, 0, "{s:#?}");
        // One preshared key change per pair over the whole rotation: at step 1 or step 3,
        // depending on which of the two secrets has the lower id.
        for p in &s.peers {
            let w = p.wireguard.as_ref().unwrap();
            assert_eq!(w.psk_switches, 1, "h{} -> {}: {w:#?}", i + 1, p.name);
        }
    }

    // The old secret is retired for real: a node that goes back to it alone is shut out.
    write_ring(&t, 2, &[&old]);
    hup(&t, 2);
    let h3 = t.hosts[2].name.clone();
    for i in 0..2 {
        wait_for(
            &t,
            i,
            "h3, on the retired secret, should be withdrawn",
            |s| !peer_names(s).contains(&h3) && s.gossip.as_ref().unwrap().open_failures > 0,
        );
    }
    assert!(ping(&t.hosts[0].pods[0].ns, t.hosts[2].pods[0].addr, 2).is_err());
}
