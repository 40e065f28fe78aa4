//! meshd under the shipped systemd unit's limits (issue 21): the capabilities and address
//! families are read from `meshd/systemd/meshd.service`, so the test and the unit cannot drift,
//! and applied as systemd would: `setpriv` for the capability sets and `NoNewPrivileges`, and
//! a seccomp filter for `RestrictAddressFamilies` (see `meshd_lab::sandbox`). The unit's other
//! settings (`ProtectSystem`, `DevicePolicy`, the system-call filter, …) are not reproduced:
//! they limit files and calls, not what the kernel paths need, and `deploy.rs` verifies the
//! unit with `systemd-analyze verify`.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd under the unit's limits, auto) ── p1
//!            ├─ h2 (likewise) ── p1
//!            └─ h3 (likewise) ── p1
//! ```

use crate::cluster::unreachable_pairs;
use crate::kernel_paths::{auto, spec, wait_path};
use crate::support::{meshd_pid, require_root, status, try_status, wait_until};
use meshd::config::Encryption;
use meshd_lab::sandbox::Sandbox;
use meshd_lab::Topology;

#[test]
fn meshd_under_the_shipped_systemd_units_limits_promotes_peers_to_the_kernel_path() {
    require_root();
    let unit = Unit::shipped();
    let mut s = spec("ktunit", 3, Encryption::None, auto(0, false, 0));
    s.sandbox = unit.sandbox(&unit.capabilities);
    let mut t = Topology::up(s).unwrap();
    // The limits hold: the bounding set is the unit's, the address-family filter is on.
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", meshd_pid(&t, 0))).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    assert_eq!(
        u64::from_str_radix(&field("CapBnd:"), 16).unwrap(),
        unit.capability_mask(&unit.capabilities),
        "{proc_status}"
    );
    assert_eq!(field("Seccomp:"), "2", "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{proc_status}");
    for (from, to) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        let (p, _) = wait_path(&t, from, to, |p| p.path == "kernel-vxlan");
        assert!(p.moves >= 1, "promoted, not adopted: {p:?}");
        assert!(p.probes.iter().any(|x| x.sent > 0), "{p:?}");
    }
    let k = status(&t, 0).kernel.unwrap();
    assert!(k.vxlan.contains("inner sources checked"), "{k:?}");
    let bad = unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");

    // Without CAP_NET_RAW (the unit before issue 21) probing cannot work, and each peer's
    // path line says so, instead of "probes 0/0 lost".
    let without_raw: Vec<String> = unit
        .capabilities
        .iter()
        .filter(|c| *c != "CAP_NET_RAW")
        .cloned()
        .collect();
    t.spec.sandbox = unit.sandbox(&without_raw);
    let cfg = t.meshd_config(&t.hosts[0]);
    t.restart_meshd(0, &cfg).unwrap();
    let name = t.hosts[1].name.clone();
    let s = wait_until("h1: its path line says the paths are not probed", || {
        let p = try_status(&t, 0)
            .and_then(|s| s.peers.into_iter().find(|p| p.name == name))
            .and_then(|p| p.path);
        p.clone()
            .filter(|p| {
                p.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("paths not probed"))
            })
            .ok_or(p.map(Box::new))
    });
    assert!(s.probes.is_empty(), "{s:?}");
    assert!(
        s.reason.as_deref().unwrap().contains("CAP_NET_RAW"),
        "{s:?}"
    );
}

/// The shipped unit's limits, read from the file, so the test and the unit cannot drift.
struct Unit {
    capabilities: Vec<String>,
    ambient: bool,
    address_families: Vec<String>,
    no_new_privileges: bool,
}

impl Unit {
    fn shipped() -> Unit {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../meshd/systemd/meshd.service");
        let text = std::fs::read_to_string(&path).unwrap();
        let words = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .flat_map(|v| v.split_whitespace().map(str::to_string))
                .collect()
        };
        let capabilities = words("CapabilityBoundingSet");
        assert!(
            !capabilities.is_empty(),
            "no CapabilityBoundingSet in the unit"
        );
        let ambient = words("AmbientCapabilities");
        assert!(
            ambient.is_empty() || ambient == capabilities,
            "the test runs meshd with its ambient set equal to its bounding set"
        );
        Unit {
            ambient: !ambient.is_empty(),
            address_families: words("RestrictAddressFamilies"),
            no_new_privileges: words("NoNewPrivileges") == ["yes"],
            capabilities,
        }
    }

    /// `setpriv` with `caps` as the bounding, inheritable and (as the unit says) ambient sets,
    /// and the unit's address families.
    fn sandbox(&self, caps: &[String]) -> Sandbox {
        let list: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let set = format!("-all,{}", list.join(","));
        let mut wrapper = vec![
            "setpriv".to_string(),
            format!("--bounding-set={set}"),
            format!("--inh-caps={set}"),
        ];
        if self.ambient {
            wrapper.push(format!("--ambient-caps={set}"));
        }
        if self.no_new_privileges {
            wrapper.push("--no-new-privs".into());
        }
        let families = self
            .address_families
            .iter()
            .map(|f| match f.as_str() {
                "AF_UNIX" => libc::AF_UNIX,
                "AF_INET" => libc::AF_INET,
                "AF_INET6" => libc::AF_INET6,
                "AF_NETLINK" => libc::AF_NETLINK,
                "AF_PACKET" => libc::AF_PACKET,
                other => panic!("the test does not know address family {other}"),
            })
            .collect();
        Sandbox {
            wrapper,
            address_families: Some(families),
        }
    }

    fn capability_mask(&self, caps: &[String]) -> u64 {
        caps.iter()
            .map(|c| match c.as_str() {
                "CAP_NET_ADMIN" => 1u64 << 12,
                "CAP_NET_RAW" => 1 << 13,
                other => panic!("the test does not know capability {other}"),
            })
            .fold(0, |a, b| a | b)
    }
}
