//! A real runtime drives the plugin: containerd's `ctr run --cni` with a locally built rootfs.
//!
//! ```text
//!  host ns (node), private mount ns:                         container (runc)
//!   containerd (own root/state/socket under a temp dir)      busybox sh:
//!   ctr run --cni ── meshd-cni ADD ── meshbr0 10.244.1.1 ══    eth0 10.244.1.x
//!   /etc/cni/net.d, /opt/cni/bin, /run: overlays or tmpfs       ping 10.244.1.1
//!   seen only inside this mount namespace
//! ```
//! `ctr` reads its CNI config from the fixed /etc/cni/net.d and /opt/cni/bin, so the test
//! overlays those (and /run, where containerd and its shims keep sockets) inside a private
//! mount namespace (`unshare --mount`): nothing is written to the host's /etc, /opt or /run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, TempDir, PLUGIN};

const SCRIPT: &str = r#"
set -eu
mount -t tmpfs cni-test "$T/ovl"
mkdir -p "$T/ovl/etc/up" "$T/ovl/etc/work" "$T/ovl/run/up" "$T/ovl/run/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/ovl/etc/up,workdir=$T/ovl/etc/work" /etc
mount -t overlay overlay -o "lowerdir=/run,upperdir=$T/ovl/run/up,workdir=$T/ovl/run/work" /run
mount -t tmpfs cni-test /opt
mkdir -p /etc/cni/net.d /opt/cni/bin
cp "$PLUGIN" /opt/cni/bin/meshd-cni
cp "$T/10-meshd.conflist" /etc/cni/net.d/
containerd --config "$T/containerd.toml" >"$T/containerd.log" 2>&1 &
CPID=$!
cleanup() {
  ctr -a "$T/c.sock" -n cnitest task kill -s KILL "$ID" >/dev/null 2>&1 || true
  ctr -a "$T/c.sock" -n cnitest task rm -f "$ID" >/dev/null 2>&1 || true
  ctr -a "$T/c.sock" -n cnitest container rm "$ID" >/dev/null 2>&1 || true
  kill "$CPID" 2>/dev/null || true
  wait "$CPID" 2>/dev/null || true
}
trap cleanup EXIT
i=0
until ctr -a "$T/c.sock" version >/dev/null 2>&1; do
  i=$((i+1)); [ "$i" -lt 300 ] || { echo "containerd did not start"; cat "$T/containerd.log"; exit 1; }
  sleep 0.1
done
ctr -a "$T/c.sock" -n cnitest run --cni --rm --rootfs "$T/rootfs" "$ID" /bin/busybox \
  sh -c 'busybox ip -4 addr show eth0; busybox ip route; busybox ping -c1 -W2 10.244.1.1'
"#;

#[test]
fn ctr_run_with_cni() {
    for tool in ["containerd", "ctr", "runc", "busybox"] {
        assert!(
            which(tool),
            "{tool} is missing: install containerd, runc and busybox"
        );
    }
    let node = Node::new("ctr");
    let t = TempDir::new(&format!("{}-ctr", node.name));
    std::fs::create_dir_all(t.0.join("ovl")).unwrap();
    build_rootfs(&t.0.join("rootfs"));
    let mut list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-meshd.conflist"))
            .unwrap(),
    )
    .unwrap();
    // Only our plugin: ctr offers no portMappings/bandwidth capabilities to drive the others.
    let mut ours = list["plugins"][0].clone();
    ours["runtimeDir"] = node.runtime_dir().to_string_lossy().into();
    ours["dataDir"] = node.data_dir().to_string_lossy().into();
    list["plugins"] = serde_json::json!([ours]);
    std::fs::write(t.0.join("10-meshd.conflist"), list.to_string()).unwrap();
    std::fs::write(
        t.0.join("containerd.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/c.sock\"\n",
            t.0.display()
        ),
    )
    .unwrap();

    // Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts runc needs.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "nsenter"])
        .arg(format!("--net={}", node.host.path()))
        .args(["sh", "-c", SCRIPT])
        .env("T", &t.0)
        .env("PLUGIN", PLUGIN)
        .env("ID", &node.name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctr run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("inet 10.244.1."), "{stdout}");
    assert!(stdout.contains("default via 10.244.1.1"), "{stdout}");
    assert!(stdout.contains("1 packets received"), "{stdout}");
    // --rm made ctr call DEL: nothing left behind.
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A minimal rootfs: busybox and the shared libraries it needs.
fn build_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let busybox = Path::new(busybox.trim());
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let ldd = Command::new("ldd").arg(busybox).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dst = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(lib, dst).unwrap();
    }
}
