//! Clusters formed by gossip from one seed: full mesh in both encryption modes, a killed node
//! withdrawn and restored with its subnet, a node with the wrong cluster secret kept out, and a
//! partition made with nftables, then healed.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed) ── meshbr0 ── p1
//!            ├─ h2 (meshd, seeds = [h1]) ── meshbr0 ── p1
//!            ├─ …
//!            └─ hN (meshd, seeds = [h1]) ── meshbr0 ── p1
//! ```
//! Subnets are not configured: gossip allocates them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd::config::Encryption;
use meshd::status::Status;
use meshd_lab::probe::ping;
use meshd_lab::{Formation, HostKind, Spec, Topology};

use crate::cluster::unreachable_pairs;
use crate::support::{
    log, meshd_bin, meshd_pid, nft_delete, nft_load, prefix, require_root, status, wait_for,
    wait_until,
};

pub(crate) fn gossip_spec(tag: &str, nodes: usize, encryption: Encryption) -> Spec {
    Spec {
        encryption,
        prefix: prefix(tag),
        hosts: vec![HostKind::Meshd; nodes],
        pods_per_host: 1,
        meshd_args: Vec::new(),
        meshd_bin: meshd_bin(),
        sandbox: Default::default(),
        underlay_mtu: 1500,
        formation: Formation::Gossip,
        paths: Default::default(),
    }
}

pub(crate) fn peer_names(s: &Status) -> HashSet<String> {
    s.peers.iter().map(|p| p.name.clone()).collect()
}

fn names(t: &Topology, hosts: impl IntoIterator<Item = usize>, but: usize) -> HashSet<String> {
    hosts
        .into_iter()
        .filter(|&i| i != but)
        .map(|i| t.hosts[i].name.clone())
        .collect()
}

/// Every host routes exactly to the hosts in `group` (other than itself).
pub(crate) fn wait_for_mesh(t: &Topology, group: &[usize]) {
    for &i in group {
        let want = names(t, group.iter().copied(), i);
        wait_for(t, i, &format!("peers should be {want:?}"), |s| {
            peer_names(s) == want
        });
    }
}

/// Waits until host `i` knows `n` members, all alive.
pub(crate) fn wait_for_all_alive(t: &Topology, i: usize, n: usize) -> Status {
    wait_for(t, i, &format!("{n} members, all alive"), |s| {
        let m = s.members.as_deref().unwrap_or_default();
        m.len() == n && m.iter().all(|m| m.state == "alive")
    })
}

fn assert_unique_subnets(t: &Topology) {
    let subnets: Vec<String> = (0..t.hosts.len()).map(|i| status(t, i).subnet).collect();
    let unique: HashSet<&String> = subnets.iter().collect();
    assert_eq!(
        unique.len(),
        subnets.len(),
        "duplicate subnets: {subnets:?}"
    );
}

fn five_nodes_form_a_mesh(tag: &str, encryption: Encryption) {
    require_root();
    let t = Topology::up(gossip_spec(tag, 5, encryption)).unwrap();
    let all: Vec<usize> = (0..5).collect();
    wait_for_mesh(&t, &all);
    assert_unique_subnets(&t);
    for i in all {
        // Suspicion under load is transient: wait for it to clear rather than sample once.
        let s = wait_for_all_alive(&t, i, 4);
        assert_eq!(s.gossip.unwrap().open_failures, 0);
    }
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
}

#[test]
fn five_nodes_from_one_seed_form_a_full_mesh_cleartext() {
    five_nodes_form_a_mesh("gmesh", Encryption::None);
}

#[test]
fn five_nodes_from_one_seed_form_a_full_mesh_encrypted() {
    five_nodes_form_a_mesh("gmeshwg", Encryption::Wireguard);
}

#[test]
fn a_killed_node_is_withdrawn_and_returns_with_its_subnet() {
    require_root();
    let t = Topology::up(gossip_spec("gkill", 4, Encryption::None)).unwrap();
    let all: Vec<usize> = (0..4).collect();
    wait_for_mesh(&t, &all);
    let victim = 3;
    let subnet = status(&t, victim).subnet;
    let name = t.hosts[victim].name.clone();

    // Pings between two survivors, from before the kill until the others withdrew the victim.
    let stop = Arc::new(AtomicBool::new(false));
    let pinged = Arc::new(AtomicUsize::new(0));
    let (src, dst) = (t.hosts[0].pods[0].ns.clone(), t.hosts[1].pods[0].addr);
    let pinger = {
        let (stop, pinged) = (stop.clone(), pinged.clone());
        std::thread::spawn(move || {
            let (mut sent, mut lost) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                lost += usize::from(ping(&src, dst, 2).is_err());
                pinged.store(sent, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            (sent, lost)
        })
    };
    wait_until("h1 -> h2 pings before the kill", || {
        let n = pinged.load(Ordering::Relaxed);
        (n >= 2).then_some(()).ok_or(n)
    });

    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(meshd_pid(&t, victim), libc::SIGKILL) };
    let killed = Instant::now();
    for i in 0..3 {
        wait_for(&t, i, "the killed node's routes should be withdrawn", |s| {
            !peer_names(s).contains(&name)
        });
    }
    let withdrawn = killed.elapsed();
    eprintln!("routes to the killed node withdrawn everywhere after {withdrawn:?}");
    stop.store(true, Ordering::Relaxed);
    let (sent, lost) = pinger.join().unwrap();
    eprintln!("h1 -> h2 while h4 died: {sent} pings, {lost} lost");
    assert_eq!(
        lost, 0,
        "h1 -> h2 pings lost while h4 died: {lost} of {sent}"
    );
    let rest: Vec<usize> = (0..3).collect();
    wait_for_mesh(&t, &rest);
    for &a in &rest {
        for &b in &rest {
            let dst = t.hosts[b].pods[0].addr;
            ping(&t.hosts[a].pods[0].ns, dst, 5).unwrap();
        }
    }

    let config = t.meshd_config(&t.hosts[victim]);
    t.restart_meshd(victim, &config).unwrap();
    wait_for_mesh(&t, &all);
    assert_eq!(
        status(&t, victim).subnet,
        subnet,
        "a new subnet after restart"
    );
    for i in 0..3 {
        let s = status(&t, i);
        let p = s.peers.iter().find(|p| p.name == name).unwrap();
        assert_eq!(p.subnet, subnet);
    }
    // The pod kept its address: the bridge came back with the same subnet.
    let back = t.hosts[victim].pods[0].addr;
    ping(&t.hosts[0].pods[0].ns, back, 10).unwrap();
}

#[test]
fn a_node_with_the_wrong_cluster_secret_never_becomes_a_member() {
    require_root();
    let t = Topology::up(gossip_spec("gsec", 3, Encryption::None)).unwrap();
    let all: Vec<usize> = (0..3).collect();
    wait_for_mesh(&t, &all);
    let h3 = &t.hosts[2];
    let other = h3.dir.join("other.secret");
    meshd_crypto::ClusterSecret::generate()
        .write_new_file(&other)
        .unwrap();
    let lab_secret = meshd_lab::wireguard::host_secret_path(h3);
    // A new node (name and state) with the wrong secret, on h3's address.
    let intruder = "intruder";
    let config = t
        .meshd_config(h3)
        .replace(
            &lab_secret.display().to_string(),
            &other.display().to_string(),
        )
        .replace(&format!("\"{}\"", h3.name), &format!("\"{intruder}\""))
        .replace(
            &h3.dir.join("state").display().to_string(),
            &h3.dir.join("state-intruder").display().to_string(),
        );
    assert!(config.contains("other.secret") && config.contains(intruder));
    t.restart_meshd(2, &config).unwrap();

    // h1 (the seed the intruder joins) drops its datagrams unopened.
    wait_for(&t, 0, "h1 should count datagrams that did not open", |s| {
        s.gossip.as_ref().unwrap().open_failures >= 5
    });
    // Not a wait: for a while (many gossip rounds) nobody lets the intruder in.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for i in 0..2 {
            let s = status(&t, i);
            assert!(
                s.members
                    .as_ref()
                    .unwrap()
                    .iter()
                    .all(|m| m.name != intruder),
                "{s:#?}"
            );
            assert!(!peer_names(&s).contains(intruder), "{s:#?}");
        }
        let s = status(&t, 2);
        assert!(
            s.members.as_ref().unwrap().is_empty() && s.peers.is_empty(),
            "the intruder learnt members: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Drops, in host `i`'s namespace, everything to and from the underlay addresses of `others`.
pub(crate) fn partition(t: &Topology, i: usize, others: &[usize]) {
    let addrs: Vec<String> = others
        .iter()
        .map(|&o| t.hosts[o].underlay.to_string())
        .collect();
    let set = addrs.join(", ");
    let rules = format!(
        "table inet gpart {{\n chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n}}\n"
    );
    nft_load(&t.hosts[i].ns, &rules);
}

/// Undoes [`partition`] in host `i`'s namespace.
pub(crate) fn heal(t: &Topology, i: usize) {
    nft_delete(&t.hosts[i].ns, "inet", "gpart");
}

#[test]
fn a_healed_partition_leaves_one_mesh_without_duplicate_subnets() {
    require_root();
    let t = Topology::up(gossip_spec("gpart", 4, Encryption::None)).unwrap();
    let all: Vec<usize> = (0..4).collect();
    wait_for_mesh(&t, &all);
    let (a, b) = ([0, 1], [2, 3]);
    for i in a {
        partition(&t, i, &b);
    }
    for i in b {
        partition(&t, i, &a);
    }
    // Each side withdraws the other.
    wait_for_mesh(&t, &a);
    wait_for_mesh(&t, &b);
    for i in all.clone() {
        heal(&t, i);
    }
    wait_for_mesh(&t, &all);
    for i in all {
        wait_for_all_alive(&t, i, 3);
    }
    assert_unique_subnets(&t);
    let bad = unreachable_pairs(&t);
    assert!(
        bad.is_empty(),
        "unreachable pod pairs after healing: {bad:#?}"
    );
}

/// Restarts host `i`'s meshd with a persisted lease on `subnet`, as if it had held it last.
pub(crate) fn restart_with_lease(t: &Topology, i: usize, subnet: &str) {
    let h = &t.hosts[i];
    let (addr, prefix) = subnet.split_once('/').unwrap();
    let lease = format!("{{\"subnet\":{{\"addr\":\"{addr}\",\"prefix\":{prefix}}},\"stamp\":1}}");
    std::fs::write(h.dir.join("state").join("lease.json"), lease).unwrap();
    t.restart_meshd(i, &t.meshd_config(h)).unwrap();
}

/// Waits until host `i` routes to every other host of `group` and no two of them (itself
/// included) hold the same subnet.
fn wait_for_distinct_mesh(t: &Topology, i: usize, group: &[usize]) -> Status {
    let want = names(t, group.iter().copied(), i);
    wait_for(
        t,
        i,
        &format!("one mesh of {want:?}, distinct subnets"),
        |s| {
            let mut subnets: HashSet<&String> = s.peers.iter().map(|p| &p.subnet).collect();
            subnets.insert(&s.subnet);
            peer_names(s) == want && subnets.len() == group.len()
        },
    )
}

#[test]
fn a_subnet_claimed_on_both_sides_of_a_partition_is_settled_after_healing() {
    require_root();
    let t = Topology::up(gossip_spec("gclaim", 4, Encryption::None)).unwrap();
    let all: Vec<usize> = (0..4).collect();
    wait_for_mesh(&t, &all);
    let taken: HashSet<String> = all.iter().map(|&i| status(&t, i).subnet).collect();
    let contested = (200..=255)
        .map(|n| format!("10.244.{n}.0/24"))
        .find(|s| !taken.contains(s))
        .unwrap();
    let (a, b) = ([0, 1], [2, 3]);
    for i in a {
        partition(&t, i, &b);
    }
    for i in b {
        partition(&t, i, &a);
    }
    // h2 and h4 come back each claiming the same subnet; neither side sees the other's claim.
    restart_with_lease(&t, 1, &contested);
    restart_with_lease(&t, 3, &contested);
    wait_for(&t, 1, "h2 should hold the contested subnet", |s| {
        s.subnet == contested
    });
    wait_for(&t, 3, "h4 should hold the contested subnet", |s| {
        s.subnet == contested
    });
    for i in all.clone() {
        heal(&t, i);
    }
    for i in all.clone() {
        wait_for_distinct_mesh(&t, i, &all);
    }
    assert_unique_subnets(&t);
    let holders = all
        .iter()
        .filter(|&&i| status(&t, i).subnet == contested)
        .count();
    assert_eq!(holders, 1, "exactly one of h2 and h4 keeps {contested}");
    // The loser saw the conflict and took a new lease.
    let logs: String = [1, 3].iter().map(|&i| log(&t, i)).collect();
    assert!(logs.contains("subnet conflict"), "{logs}");
}

#[test]
fn a_stopped_node_announces_that_it_left() {
    require_root();
    let t = Topology::up(gossip_spec("gleave", 3, Encryption::None)).unwrap();
    let all: Vec<usize> = (0..3).collect();
    wait_for_mesh(&t, &all);
    let name = t.hosts[2].name.clone();
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(meshd_pid(&t, 2), libc::SIGTERM) };
    for i in 0..2 {
        // `left`, not `down`: the others heard the departure instead of timing it out.
        let s = wait_for(&t, i, "the stopped node should be left and unrouted", |s| {
            let left = s
                .members
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == name && m.state == "left");
            left && !peer_names(s).contains(&name)
        });
        assert!(s.gossip.unwrap().datagrams_in > 0);
    }
}
