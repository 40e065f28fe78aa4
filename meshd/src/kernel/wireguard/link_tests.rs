#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Against the real kernel, each test in a network namespace of its own: `unshare` on a fresh
//! thread, so the namespace (and anything a failing test left in it) dies with the thread.
//!
//! ```text
//!   test thread ── unshare(CLONE_NEWNET) ──► [ lo  (+ whatever the test makes) ]
//! ```
//!
//! This machine's kernel has no WireGuard: the tests assert the reason it gives. Where
//! iproute2 can make a WireGuard link, they drive a real device instead.

use super::*;
use crate::kernel::fresh_netns::in_fresh_netns;
use crate::kernel::wireguard::{DeviceConfig, KernelWireguard, PeerConfig};
use meshd_crypto::PrivateKey;
use std::process::Command;

/// The names of the links in the current namespace.
async fn links() -> Vec<String> {
    let handle = connect().unwrap();
    let mut stream = handle.link().get().execute();
    let mut names = Vec::new();
    while let Some(link) = stream.try_next().await.unwrap() {
        names.extend(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }));
    }
    names
}

/// Whether iproute2, asked independently, can make a WireGuard link here (in the calling
/// thread's namespace: a child starts in it).
fn iproute2_can() -> bool {
    let ok = Command::new("ip")
        .args(["link", "add", "wgoracle0", "type", "wireguard"])
        .output()
        .unwrap()
        .status
        .success();
    if ok {
        let _ = Command::new("ip")
            .args(["link", "del", "wgoracle0"])
            .output();
    }
    ok
}

#[test]
fn detect_says_why_and_leaves_nothing_behind() {
    in_fresh_netns(|| {
        Box::pin(async {
            let can = iproute2_can();
            let got = detect().await;
            if can {
                assert_eq!(got, Ok(()));
            } else {
                let reason = got.unwrap_err();
                assert_eq!(
                    reason,
                    Unavailable::LinkRefused {
                        errno: libc::EOPNOTSUPP
                    }
                );
                assert_eq!(reason.errno(), Some(libc::EOPNOTSUPP));
                assert_eq!(
                    reason.to_string(),
                    "kernel wireguard unavailable (Operation not supported)"
                );
            }
            assert_eq!(links().await, ["lo"]);
        })
    });
}

#[test]
fn opening_the_device_fails_with_the_reason_and_leaves_nothing_behind() {
    in_fresh_netns(|| {
        Box::pin(async {
            if iproute2_can() {
                return drive_a_real_device().await;
            }
            match KernelWireguard::open("meshwg0", 1420).await {
                Err(Error::Unavailable(Unavailable::LinkRefused { errno })) => {
                    assert_eq!(errno, libc::EOPNOTSUPP)
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(links().await, ["lo"]);
            // Nothing to clean up is no error.
            assert!(!remove_device("meshwg0").await.unwrap());
        })
    });
}

#[test]
fn a_link_that_is_not_ours_is_left_alone() {
    in_fresh_netns(|| {
        Box::pin(async {
            let handle = connect().unwrap();
            let msg = rtnetlink::LinkBridge::new("meshwg0").build();
            handle.link().add(msg).execute().await.unwrap();
            let open = KernelWireguard::open("meshwg0", 1420).await;
            assert!(
                matches!(open, Err(Error::WrongKind(ref n)) if n == "meshwg0"),
                "{open:?}"
            );
            let removed = remove_device("meshwg0").await;
            assert!(matches!(removed, Err(Error::WrongKind(_))), "{removed:?}");
            assert_eq!(links().await, ["lo", "meshwg0"]);
            assert!(matches!(
                KernelWireguard::open("meshwg0-far-too-long", 1420).await,
                Err(Error::BadName(_))
            ));
        })
    });
}

/// Where the kernel has WireGuard: make, configure, read back, adopt and remove a device.
async fn drive_a_real_device() {
    let dev = KernelWireguard::open("meshwg0", 1420).await.unwrap();
    assert!(!dev.adopted());
    let cfg = DeviceConfig {
        ifname: "meshwg0".into(),
        private_key: PrivateKey::generate(),
        listen_port: 51820,
        fwmark: None,
        peers: (1..=3u8)
            .map(|n| PeerConfig {
                public_key: PrivateKey::generate().public_key(),
                preshared_key: zeroize::Zeroizing::new([n; 32]),
                endpoint: ([198, 18, 0, n], 51820).into(),
                allowed_ips: vec![format!("10.244.{n}.0/24").parse().unwrap()],
                persistent_keepalive: None,
            })
            .collect(),
    };
    dev.sync(&cfg).unwrap();
    let mut back = dev.device().unwrap();
    back.peers.sort_by_key(|p| p.endpoint);
    assert_eq!(back, cfg);
    // A reconcile that drops one peer and adds another.
    let mut next = cfg.clone();
    next.peers.remove(0);
    next.peers.push(PeerConfig {
        endpoint: ([198, 18, 0, 9], 51820).into(),
        ..cfg.peers[0].clone()
    });
    next.peers[2].public_key = PrivateKey::generate().public_key();
    dev.sync(&next).unwrap();
    let mut back = dev.device().unwrap();
    back.peers.sort_by_key(|p| p.endpoint);
    assert_eq!(back, next);
    dev.remove_peers(&[next.peers[0].public_key]).unwrap();
    assert_eq!(dev.device().unwrap().peers.len(), 2);
    dev.replace(&cfg).unwrap();
    assert_eq!(dev.device().unwrap().peers.len(), 3);
    drop(dev);
    let again = KernelWireguard::open("meshwg0", 1400).await.unwrap();
    assert!(again.adopted());
    assert!(remove_device("meshwg0").await.unwrap());
    assert_eq!(links().await, ["lo"]);
}
