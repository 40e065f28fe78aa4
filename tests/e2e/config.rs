//! A bad configuration fails with a message that names the key, a non-zero exit, and nothing
//! configured on the host.

use crate::support::{meshd_bin, prefix, require_root};
use meshd_lab::netns::{self, ip};
use std::process::Command;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        netns::destroy(&self.0);
    }
}

fn links(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        })
        .collect()
}

const BASE: &str = "node-name = \"n1\"\naddress = \"198.18.0.1\"\nsubnet = \"10.244.1.0/24\"\n";

#[test]
fn bad_values_name_their_key_and_touch_nothing() {
    require_root();
    let ns = Ns(prefix("cfg"));
    ip(&["netns", "add", &ns.0]).unwrap();
    // The node's address is on this "host": --check-config checks that too.
    ip(&["-n", &ns.0, "addr", "add", "198.18.0.1/32", "dev", "lo"]).unwrap();
    let dir = std::env::temp_dir().join(&ns.0);
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[vxlan]\nvni = 0\n", "vxlan.vni"),
        ("underlay-mtu = 100\n", "underlay-mtu"),
        ("cluster-cidr = \"10.200.0.0/16\"\n", "subnet"),
        ("mtu = 1400\n", "mtu"),
        ("[tiers]\nudp-gso = \"yes\"\n", "udp-gso"),
        (
            "cluster-secret-file = \"/nonexistent/meshd.secret\"\n",
            "cluster-secret-file",
        ),
    ];
    for (extra, key) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, format!("{BASE}{extra}")).unwrap();
        for check in [true, false] {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.0])
                .arg(meshd_bin())
                .args(["run", "--config"])
                .arg(&path);
            if check {
                cmd.arg("--check-config");
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{extra:?} was accepted");
            assert!(
                stderr.contains(&format!("`{key}`")),
                "{extra:?}: message does not name `{key}`: {stderr}"
            );
            assert_eq!(
                links(&ns.0),
                vec!["lo".to_string()],
                "{extra:?} left something behind"
            );
        }
    }
    let secret = dir.join("cluster.secret");
    let _ = std::fs::remove_file(&secret);
    meshd_crypto::ClusterSecret::generate()
        .write_new_file(&secret)
        .unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!("{BASE}cluster-secret-file = \"{}\"\n", secret.display()),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(meshd_bin())
        .args(["run", "--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        links(&ns.0),
        vec!["lo".to_string()],
        "--check-config touched the host"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
