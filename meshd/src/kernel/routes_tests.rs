#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Against the real kernel, in a network namespace of the test's own (`unshare` on a fresh
//! thread: the namespace dies with it).
//!
//! ```text
//!   test thread ── unshare(CLONE_NEWNET) ──► [ lo, d0 (veth, 198.18.0.1/24), d1 (veth) ]
//! ```

use super::*;
use crate::kernel::fresh_netns::in_fresh_netns;
use std::process::Command;

/// `ip ARGS` in the calling thread's namespace (a child starts in it); its output.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A replace would have clobbered the connected route of the underlay (and a later removal
/// deleted it, leaving the node with no route to its peers): it is refused, and the route
/// stays. meshd's own routes are still created and replaced.
#[test]
fn a_route_meshd_did_not_make_is_never_replaced() {
    in_fresh_netns(|| {
        Box::pin(async {
            // veth, not dummy: this kernel may lack the dummy module.
            ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
            ip(&["addr", "add", "198.18.0.1/24", "dev", "d0"]);
            ip(&["link", "set", "d0", "up"]);
            ip(&["link", "set", "d1", "up"]);
            let host = Host::connect().unwrap();
            let (d0, d1) = (
                host.index("d0").await.unwrap(),
                host.index("d1").await.unwrap(),
            );
            let src = Ipv4Addr::new(198, 18, 0, 1);
            let underlay: Ipv4Net = "198.18.0.0/24".parse().unwrap();
            let err = set(&host, underlay, Via::Device { index: d1 }, src, None)
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains("proto kernel"), "{err:#}");
            let table = ip(&["route", "show", "198.18.0.0/24"]);
            assert!(table.contains("dev d0 proto kernel"), "{table}");
            assert!(!table.contains("d1"), "{table}");
            remove(&host, underlay).await.unwrap();
            let table = ip(&["route", "show", "198.18.0.0/24"]);
            assert!(table.contains("dev d0 proto kernel"), "{table}");

            let pod: Ipv4Net = "10.244.5.0/24".parse().unwrap();
            set(&host, pod, Via::Device { index: d1 }, src, None)
                .await
                .unwrap();
            set(&host, pod, Via::Device { index: d0 }, src, None)
                .await
                .unwrap();
            let ours = list(&host).await.unwrap();
            assert_eq!(ours.len(), 1, "{ours:?}");
            assert_eq!(ours[0].oif, Some(d0));
            // An operator's static route for a subnet is not meshd's either.
            ip(&["route", "add", "10.244.6.0/24", "dev", "d1"]);
            let six: Ipv4Net = "10.244.6.0/24".parse().unwrap();
            let err = set(&host, six, Via::Device { index: d0 }, src, None)
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains("proto boot"), "{err:#}");
        })
    });
}

/// A peer's path MTU rides on its route, locked, and goes when the path carries the device's.
#[test]
fn a_path_mtu_is_a_locked_route_metric_replaced_in_place() {
    in_fresh_netns(|| {
        Box::pin(async {
            ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
            ip(&["addr", "add", "198.18.0.1/24", "dev", "d0"]);
            ip(&["link", "set", "d0", "up"]);
            let host = Host::connect().unwrap();
            let d0 = host.index("d0").await.unwrap();
            let src = Ipv4Addr::new(198, 18, 0, 1);
            let pod: Ipv4Net = "10.244.5.0/24".parse().unwrap();
            set(&host, pod, Via::Device { index: d0 }, src, Some(1230))
                .await
                .unwrap();
            let table = ip(&["route", "show", "10.244.5.0/24"]);
            assert!(table.contains("mtu lock 1230"), "{table}");
            set(&host, pod, Via::Device { index: d0 }, src, None)
                .await
                .unwrap();
            let table = ip(&["route", "show", "10.244.5.0/24"]);
            assert!(!table.contains("mtu"), "{table}");
            assert_eq!(list(&host).await.unwrap().len(), 1);
        })
    });
}
