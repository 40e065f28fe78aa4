#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::link::registry::Links;
use crate::peers::{Endpoint, EndpointSource, PeerKey};
use crate::routes::Local;
use meshd_crypto::{ClusterSecret, Keyring, SecretId};
use std::sync::Arc;

fn member(n: u8, public: PublicKey, ids: Option<Vec<SecretId>>) -> Peer {
    Peer {
        name: format!("n{n}"),
        endpoints: vec![Endpoint {
            addr: std::net::SocketAddr::from(([198, 18, 0, n], 51999)),
            source: EndpointSource::Gossiped,
        }],
        // Not truncated on purpose: the kernel stores the network.
        subnet: format!("10.244.{n}.7/24").parse().unwrap(),
        key: Some(PeerKey {
            public,
            secret_ids: ids,
        }),
        kernel_vxlan: false,
    }
}

/// The kernel device gets, for every peer, the preshared key the userspace session with that
/// peer uses: before a rotation, while the peer holds only the new secret, and after ours
/// moves on.
#[test]
fn peers_get_the_preshared_key_the_userspace_sessions_use() {
    let (old, new) = (ClusterSecret::generate(), ClusterSecret::generate());
    let (old_id, new_id) = (SecretId::of(&old), SecretId::of(&new));
    let ring = Keyring::new(vec![old.clone(), new.clone()]).unwrap();
    let crypto = Arc::new(NodeCrypto::new(PrivateKey::generate(), ring, 100));
    let local = Local {
        name: "me".into(),
        vni: 1,
        port: 51820,
    };
    let links = std::cell::RefCell::new(Links::new(local, Some(crypto.clone()), 1420));
    let epoch = std::cell::Cell::new(0);
    let peers = vec![
        member(1, PrivateKey::generate().public_key(), None),
        member(2, PrivateKey::generate().public_key(), Some(vec![new_id])),
        member(
            3,
            PrivateKey::generate().public_key(),
            Some(vec![old_id, new_id]),
        ),
        Peer::clear(
            "clear",
            ([198, 18, 0, 4], 51999).into(),
            "10.244.4.0/24".parse().unwrap(),
        ),
    ];
    let check = |label: &str| {
        let cfg = device_config("meshwg0", &crypto, 51820, None, &peers);
        let pass = links.borrow_mut().reconcile(&peers, epoch.get());
        let wg: Vec<_> = pass
            .links
            .iter()
            .map(|l| l.wg())
            .filter(Option::is_some)
            .collect();
        assert_eq!(
            cfg.peers.len(),
            3,
            "{label}: the peer without a key is left out"
        );
        for (p, w) in cfg.peers.iter().zip(&wg) {
            let w = w.as_ref().unwrap();
            assert_eq!(p.public_key, w.key);
            assert_eq!(
                *p.preshared_key,
                w.pair().psk,
                "{label}: peer {}",
                p.public_key
            );
        }
        cfg
    };
    let before = check("two secrets");
    // Peer 2 holds only the new secret: its key differs from the others'.
    assert_ne!(
        *before.peers[1].preshared_key,
        *before.peers[0].preshared_key
    );
    crypto.set_keyring(Keyring::single(new));
    epoch.set(1);
    let after = check("after the rotation");
    assert_ne!(
        *after.peers[0].preshared_key, *before.peers[0].preshared_key,
        "a static peer follows our primary"
    );
    assert_eq!(
        *after.peers[1].preshared_key,
        *before.peers[1].preshared_key
    );
}

#[test]
fn a_peer_is_reached_at_its_underlay_address_with_its_subnet_allowed() {
    let crypto = NodeCrypto::new(
        PrivateKey::generate(),
        Keyring::single(ClusterSecret::generate()),
        100,
    );
    let p = member(9, PrivateKey::generate().public_key(), None);
    let c = peer_config(&p, &crypto).unwrap();
    assert_eq!(c.endpoint, "198.18.0.9:51999".parse().unwrap());
    assert_eq!(c.allowed_ips, ["10.244.9.0/24".parse().unwrap()]);
    assert_eq!(c.persistent_keepalive, None);
    let cfg = device_config("meshwg0", &crypto, 51999, NonZeroU32::new(3), &[p]);
    assert_eq!(cfg.private_key.as_bytes(), crypto.private.as_bytes());
    assert_eq!(cfg.listen_port, 51999);
    assert_eq!(cfg.fwmark, NonZeroU32::new(3));
    assert!(!format!("{cfg:?}").contains(&format!("{:?}", *c.preshared_key)));
}

#[test]
fn interface_names_are_checked_before_the_kernel_sees_them() {
    for bad in ["", "a-name-too-long!", "a/b", "a b"] {
        assert!(matches!(check_name(bad), Err(Error::BadName(_))), "{bad:?}");
    }
    assert!(check_name("meshwg0").is_ok());
    assert!(check_name("fifteen-bytes-x").is_ok());
}

/// What `meshd status` prints for each reason.
#[test]
fn reasons_read_well() {
    let cases = [
        (
            Unavailable::LinkRefused {
                errno: libc::EOPNOTSUPP,
            },
            "kernel wireguard unavailable (Operation not supported)",
        ),
        (
            Unavailable::LinkRefused { errno: libc::EPERM },
            "kernel wireguard unavailable (Operation not permitted)",
        ),
        (
            Unavailable::NoFamily,
            "kernel wireguard unavailable (generic netlink family wireguard not found)",
        ),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
        assert_eq!(Error::from(reason).to_string(), text, "through Error");
    }
    let refused = Error::Refused {
        what: "configuring `meshwg0`".into(),
        errno: libc::EADDRINUSE,
    };
    assert_eq!(
        refused.to_string(),
        "configuring `meshwg0`: Address already in use"
    );
}
