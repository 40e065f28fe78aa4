//! Trust between members, with real meshd processes: a member that forges another's gossip
//! record (its own key, a newer or the last generation, a false departure) is refused
//! everywhere while the victim's traffic flows; a node reinstalled without its state directory
//! takes its name back after `meshd forget`; and a cluster of this build and the previous one
//! (before record signatures) forms, carries traffic and upgrades.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed) ── meshbr0 ── p1
//!            ├─ h2 (meshd: the victim)   ── meshbr0 ── p1
//!            └─ h3 (meshd; the test sends the forged, sealed records from here)
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::SystemTime;

use meshd::config::Encryption;
use meshd::status::Status;
use meshd_crypto::{GossipSealer, Keyring, SealerConfig};
use meshd_gossip::record::encode_record;
use meshd_gossip::wire::{self, Kind, Records};
use meshd_gossip::{Capabilities, NodeRecord, SigningKey, Subnet, SubnetClaim};
use meshd_lab::netns::in_netns;
use meshd_lab::probe::ping;
use meshd_lab::topology::GOSSIP_PORT;
use meshd_lab::Topology;

use crate::cluster::unreachable_pairs;
use crate::gossip::{gossip_spec, wait_for_mesh};
use crate::support::{log_mark, log_since, meshd_bin, meshd_pid, require_root, status, wait_for};

/// The seconds since the Unix epoch: generations are `boot epoch << 32 | changes`.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The signing key meshd keeps in host `i`'s state directory.
fn signing_key(t: &Topology, i: usize) -> SigningKey {
    let path = t.hosts[i].dir.join("state").join("signing.key");
    let key = meshd_crypto::read_private_key(&path).unwrap().unwrap();
    SigningKey::from_seed(key.as_bytes())
}

/// A record under host `victim`'s name that sends its traffic to host `thief`: the thief's
/// endpoint, a WireGuard key of nobody's.
fn forged_record(t: &Topology, victim: usize, thief: usize) -> NodeRecord {
    let v = &t.hosts[victim];
    let subnet: Subnet = status(t, victim).subnet.parse().unwrap();
    NodeRecord {
        name: v.name.clone(),
        gossip_addr: SocketAddr::new(v.underlay.into(), GOSSIP_PORT),
        public_key: [0xee; 32],
        endpoints: vec![SocketAddr::new(t.hosts[thief].underlay.into(), 51820)],
        subnet: Some(SubnetClaim {
            subnet,
            stamp: 0,
            explicit: true,
        }),
        vtep_mac: meshd::wire::vtep_mac(&v.name).0,
        capabilities: Capabilities(Capabilities::ENCRYPTION_WIREGUARD),
        version: "0.1.0".into(),
        // Newer than anything the victim published: it started before now.
        generation: (unix_now() << 32) + 1000,
        leaving: false,
        secret_ids: Vec::new(),
        reserved: Vec::new(),
        signer: None,
        forgets: Vec::new(),
        learned: Vec::new(),
        punch: Vec::new(),
    }
}

/// Seals `blob` in a `Records` datagram with the lab's cluster secret (as every member can) and
/// sends it from host `from`'s namespace to the gossip port of every host.
fn send_sealed(t: &Topology, from: usize, blob: &[u8]) {
    let ring = Keyring::read_file(&meshd_lab::wireguard::host_secret_path(&t.hosts[from])).unwrap();
    let mut sealer = GossipSealer::new(&ring, SealerConfig::default());
    let payload = wire::encode_payload(&Records {
        records: vec![blob],
    });
    let mut plain = Vec::new();
    wire::encode_envelope(Kind::Records, &payload, &mut plain);
    let mut sealed = vec![0u8; plain.len() + 256];
    let n = sealer.seal(&plain, &mut sealed, SystemTime::now()).unwrap();
    sealed.truncate(n);
    let targets: Vec<SocketAddr> = t
        .hosts
        .iter()
        .map(|h| SocketAddr::new(h.underlay.into(), GOSSIP_PORT))
        .collect();
    in_netns(&t.hosts[from].ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for dst in targets {
            s.send_to(&sealed, dst).unwrap();
        }
    })
    .unwrap();
}

fn refused(s: &Status) -> meshd::status::RefusedRecords {
    s.gossip.clone().unwrap_or_default().refused
}

/// What host `at` routes to `name` with: the WireGuard key of its peer.
fn peer_key(s: &Status, name: &str) -> Option<String> {
    let p = s.peers.iter().find(|p| p.name == name)?;
    Some(p.wireguard.as_ref()?.public_key.clone())
}

fn victim_traffic_flows(t: &Topology, victim: usize) {
    for i in (0..t.hosts.len()).filter(|&i| i != victim) {
        ping(&t.hosts[i].pods[0].ns, t.hosts[victim].pods[0].addr, 5).unwrap();
        ping(&t.hosts[victim].pods[0].ns, t.hosts[i].pods[0].addr, 5).unwrap();
    }
}

#[test]
fn a_member_forging_another_members_record_is_refused_everywhere() {
    require_root();
    let t = Topology::up(gossip_spec("tforge", 3, Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    let (victim, thief) = (1, 2);
    let name = t.hosts[victim].name.clone();
    let real_key = status(&t, victim).public_key.unwrap();
    // Its own key (a build before signatures has none: any key of its own then).
    let own_key = match t.hosts[thief].dir.join("state/signing.key").exists() {
        true => signing_key(&t, thief),
        false => SigningKey::from_seed(&[0x33; 32]),
    };
    let marks: Vec<usize> = (0..3).map(|i| log_mark(&t, i)).collect();

    // h3 claims h2's name with its own signing key: newer, and leaving.
    let mut forged = forged_record(&t, victim, thief);
    send_sealed(&t, thief, &encode_record(&forged, Some(&own_key)).unwrap());
    forged.leaving = true;
    forged.generation += 1;
    send_sealed(&t, thief, &encode_record(&forged, Some(&own_key)).unwrap());
    // The forgeries arrived, and were refused, on every node (the victim's own included).
    for i in 0..3 {
        wait_for(&t, i, "both forged records refused as impostors", |s| {
            refused(s).impostor >= 2
        });
    }
    for i in [0, 2] {
        let s = status(&t, i);
        assert_eq!(
            peer_key(&s, &name).as_deref(),
            Some(real_key.as_str()),
            "h{}",
            i + 1
        );
        let lines = log_since(&t, i, marks[i], &["refused a gossip record", &name]);
        assert!(!lines.is_empty(), "h{}: the refusal is logged", i + 1);
    }
    victim_traffic_flows(&t, victim);

    // The same with the last generation: no node believes it, the victim's counter never wraps.
    forged.leaving = false;
    forged.generation = u64::MAX;
    send_sealed(&t, thief, &encode_record(&forged, Some(&own_key)).unwrap());
    for i in 0..3 {
        wait_for(&t, i, "the u64::MAX record refused", |s| {
            refused(s).generation >= 1
        });
    }
    for i in [0, 2] {
        let s = status(&t, i);
        assert_eq!(peer_key(&s, &name).as_deref(), Some(real_key.as_str()));
        let m = s
            .members
            .unwrap()
            .into_iter()
            .find(|m| m.name == name)
            .unwrap();
        assert_eq!(m.state, "alive");
    }
    victim_traffic_flows(&t, victim);
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
}

#[test]
fn a_reinstalled_node_takes_its_name_back_after_forget() {
    require_root();
    let t = Topology::up(gossip_spec("tforget", 3, Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    let name = t.hosts[2].name.clone();
    // h3 loses its signing key (a reinstall that kept its WireGuard key and lease).
    t.stop_meshd(2).unwrap();
    std::fs::remove_file(t.hosts[2].dir.join("state").join("signing.key")).unwrap();
    t.start_meshd(2).unwrap();
    let new_key = meshd_gossip::short_key(&signing_key(&t, 2).public());
    for i in 0..2 {
        wait_for(&t, i, "the reinstalled node's records refused", |s| {
            refused(s).impostor >= 1
        });
    }
    let answer = meshd::control::forget(&t.hosts[0].dir.join("run"), &name).unwrap();
    assert!(answer.contains("forgotten"), "{answer}");
    for i in 0..2 {
        wait_for(&t, i, "h3 bound to its new key", |s| {
            s.members
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|m| m.name == name && m.signing_key.as_deref() == Some(new_key.as_str()))
        });
    }
    wait_for_mesh(&t, &[0, 1, 2]);
    victim_traffic_flows(&t, 2);
    // A name this node does not know is refused with the reason.
    let err = meshd::control::forget(&t.hosts[0].dir.join("run"), "nobody").unwrap_err();
    assert!(
        format!("{err:#}").contains("no signing key is bound"),
        "{err:#}"
    );
}

/// The meshd of the build before record signatures: `$MESHD_PREV_BIN`, else built once by
/// `tests/compat/prev-meshd` (a checkout of that commit, built under `target/compat`).
fn prev_meshd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHD_PREV_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("tests/compat/prev-meshd"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "tests/compat/prev-meshd failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn signer_of(s: &Status, name: &str) -> Option<Option<String>> {
    let m = s.members.as_deref()?.iter().find(|m| m.name == name)?;
    Some(m.signing_key.clone())
}

/// A rolling upgrade: h3 runs the previous build (no signatures), h1 and h2 this one; the
/// cluster forms and carries traffic; h3 upgraded signs and is bound; h3 downgraded again is
/// refused (a name seen signed never goes back).
#[test]
fn a_cluster_of_this_build_and_the_previous_one_forms_and_upgrades() {
    require_root();
    let prev = prev_meshd_bin();
    assert!(prev.is_file(), "no previous meshd at {}", prev.display());
    let mut t = Topology::up(gossip_spec("tmixed", 3, Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    // Start over with no binding anywhere: every node forgets its key and what it learnt.
    for i in 0..3 {
        t.stop_meshd(i).unwrap();
        let state = t.hosts[i].dir.join("state");
        for f in ["signing.key", "bindings.json"] {
            let _ = std::fs::remove_file(state.join(f));
        }
    }
    let name = t.hosts[2].name.clone();
    t.spec.meshd_bin = prev.clone();
    t.start_meshd(0).unwrap();
    t.start_meshd(2).unwrap();
    t.spec.meshd_bin = meshd_bin();
    t.start_meshd(1).unwrap();
    for (i, bin) in [(0, &prev), (1, &meshd_bin()), (2, &prev)] {
        let exe = std::fs::read_link(format!("/proc/{}/exe", meshd_pid(&t, i))).unwrap();
        assert_eq!(
            &exe,
            &bin.canonicalize().unwrap(),
            "h{} runs {}",
            i + 1,
            bin.display()
        );
    }
    // h1 now runs the previous build too (the seed); upgrade it while the others run.
    wait_for_mesh(&t, &[0, 1, 2]);
    t.restart_meshd(0, &t.meshd_config(&t.hosts[0])).unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    for i in 0..2 {
        wait_for(&t, i, "h3 a member, unsigned", |s| {
            signer_of(s, &name) == Some(None)
        });
    }
    let h2 = t.hosts[1].name.clone();
    wait_for(&t, 0, "h2 signed", |s| {
        matches!(signer_of(s, &h2), Some(Some(_)))
    });
    let bad = unreachable_pairs(&t);
    assert!(
        bad.is_empty(),
        "mixed cluster, unreachable pod pairs: {bad:#?}"
    );

    // Upgrade h3: its name binds to its key.
    t.restart_meshd(2, &t.meshd_config(&t.hosts[2])).unwrap();
    let key = meshd_gossip::short_key(&signing_key(&t, 2).public());
    for i in 0..2 {
        wait_for(&t, i, "h3 signed", |s| {
            signer_of(s, &name) == Some(Some(key.clone()))
        });
    }
    wait_for_mesh(&t, &[0, 1, 2]);
    let bad = unreachable_pairs(&t);
    assert!(
        bad.is_empty(),
        "upgraded cluster, unreachable pod pairs: {bad:#?}"
    );

    // Downgrade h3: refused, its last signed record stays.
    t.spec.meshd_bin = prev;
    t.restart_meshd(2, &t.meshd_config(&t.hosts[2])).unwrap();
    t.spec.meshd_bin = meshd_bin();
    for i in 0..2 {
        wait_for(&t, i, "h3's unsigned records refused", |s| {
            refused(s).unsigned >= 1
        });
        assert_eq!(signer_of(&status(&t, i), &name), Some(Some(key.clone())));
    }
}
