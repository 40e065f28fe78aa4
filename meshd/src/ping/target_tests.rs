#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::status::mesh::tests::{named, status};
use crate::status::WireguardStatus;

fn node_a() -> Status {
    status(
        vec![named("b", "kernel-vxlan")],
        &[("b", "alive"), ("c", "down")],
    )
}

#[test]
fn names_and_addresses_resolve_to_bridges_and_pods() {
    let s = node_a();
    let b = resolve(&s, "b").unwrap();
    assert_eq!(
        (b.dst, b.owner.as_deref()),
        ("10.244.2.1".parse().unwrap(), Some("b"))
    );
    let pod = resolve(&s, "10.244.2.7").unwrap();
    assert_eq!(
        (pod.owner.as_deref(), pod.what.as_str()),
        (Some("b"), "an address of b")
    );
    assert_eq!(resolve(&s, "10.244.2.1").unwrap().what, "b's bridge");
    // A down member's bridge: pinged, and the silence explained.
    assert_eq!(
        resolve(&s, "c").unwrap().dst,
        "10.244.3.1".parse::<Ipv4Addr>().unwrap()
    );
    let nobody = resolve(&s, "10.244.9.3").unwrap();
    assert_eq!(nobody.owner, None);
}

#[test]
fn what_is_not_meshds_to_reach_is_refused_before_sending() {
    let s = node_a();
    let e = resolve(&s, "192.0.2.1").unwrap_err();
    assert!(e.contains("outside the cluster CIDR 10.244.0.0/16"), "{e}");
    let e = resolve(&s, "10.244.1.5").unwrap_err();
    assert!(e.contains("own subnet"), "{e}");
    assert!(resolve(&s, "a").unwrap_err().contains("is this node"));
    assert!(resolve(&s, "zz").unwrap_err().contains("no node named zz"));
    let e = resolve(&s, "b\u{1b}[2J").unwrap_err();
    assert!(!e.contains('\u{1b}'), "{e}");
}

#[test]
fn silence_is_explained_by_what_the_status_says() {
    let s = node_a();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(12 * 3600 + 3 * 60 + 4);
    let why = why_silent(&s, &resolve(&s, "10.244.9.3").unwrap(), 84, t0);
    assert_eq!(why, "no route: no member owns 10.244.9.0/24");
    let why = why_silent(&s, &resolve(&s, "c").unwrap(), 84, t0);
    assert!(why.starts_with("peer c down since "), "{why}");
    let why = why_silent(&s, &resolve(&s, "b").unwrap(), 84, t0);
    assert_eq!(
        why,
        "probes at 84 B lost since 12:03:04 (path kernel-vxlan; b's node does not answer)"
    );
    let why = why_silent(&s, &resolve(&s, "b").unwrap(), 1500, t0);
    assert!(
        why.contains("larger than the MTU of 1450 B towards b"),
        "{why}"
    );
    let mut s = node_a();
    s.encryption = "wireguard (UDP 51820)".into();
    s.peers[0].path.as_mut().unwrap().path = "userspace".into();
    s.peers[0].wireguard = Some(WireguardStatus {
        psk_agreed: true,
        ..Default::default()
    });
    let t = resolve(&s, "b").unwrap();
    assert_eq!(why_silent(&s, &t, 84, t0), "handshake not completed");
    assert_eq!(label(&s, &s.peers[0]), "userspace wireguard");
    assert!(is_direct(&s.peers[0]));
}
