//! Real runtimes drive the plugin: containerd's `ctr run --cni`, and podman with its CNI
//! backend, each with a locally built busybox rootfs (no image is pulled).
//!
//! ```text
//!  host ns (node), private mount ns:                         container (runc)
//!   containerd (own root/state/socket under a temp dir)      busybox sh:
//!   ctr run --cni ── meshd-cni ADD ── meshbr0 10.244.1.1 ══    eth0 10.244.1.x
//!   /etc, /run, /var: overlays; /opt: tmpfs                    ping 10.244.1.1
//!   seen only inside this mount namespace
//!
//!   podman --network-backend cni (root, runroot, tmpdir,     container a: sleep
//!   CNI config and plugin dirs under a temp dir)             container b: ping .1, ping a
//!   /etc, /run (its netns), /var: overlays
//! ```
//! `ctr` reads its CNI config from the fixed /etc/cni/net.d and /opt/cni/bin, containerd and
//! its shims keep sockets in /run, and libcni caches results in /var/lib/cni; podman takes its
//! directories as flags and from `CONTAINERS_CONF`, but puts network namespaces in /run/netns
//! and image caches under /var. So each test runs in a private mount namespace
//! (`unshare --mount`) where /etc, /run and /var are overlays and /opt a tmpfs: nothing is
//! written to the host's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Node, TempDir, PLUGIN};

/// The start of every script: /etc, /run and /var become overlays on a tmpfs of the test's, so
/// what a runtime writes there (CNI configs, sockets, network namespaces, libcni's result cache
/// in /var/lib/cni, image caches) stays inside this mount namespace.
const OVERLAYS: &str = r#"
set -eu
mount -t tmpfs cni-test "$T/ovl"
for d in etc run var; do
  mkdir -p "$T/ovl/$d/up" "$T/ovl/$d/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/ovl/$d/up,workdir=$T/ovl/$d/work" "/$d"
done
"#;

/// containerd's run.
const SCRIPT: &str = r#"
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

/// podman's run, in a private mount namespace inside the node's network namespace.
const PODMAN_SCRIPT: &str = r#"
mkdir -p "$T/tmp"
export CONTAINERS_CONF="$T/containers.conf" TMPDIR="$T/tmp"
P="podman --root $T/root --runroot $T/runroot --tmpdir $T/libpod --network-backend cni
   --network-config-dir $T/net.d --cgroup-manager cgroupfs --events-backend file
   --storage-driver vfs"
cleanup() { $P rm -a -f -t 0 >/dev/null 2>&1 || true; }
trap cleanup EXIT
tar -C "$T/rootfs" -cf "$T/rootfs.tar" .
$P import "$T/rootfs.tar" localhost/meshd-cni-test:latest >/dev/null
$P run -d --name "$ID-a" --network meshd localhost/meshd-cni-test:latest /bin/busybox sleep 600 >/dev/null
A=$($P inspect -f '{{.NetworkSettings.Networks.meshd.IPAddress}}' "$ID-a")
echo "a is $A"
echo "netns while a runs: $(ls "$T/ovl/run/up/netns" 2>/dev/null | wc -l)"
$P run --rm --name "$ID-b" --network meshd localhost/meshd-cni-test:latest /bin/busybox   sh -c "busybox ip -4 addr show eth0; busybox ip route; busybox ping -c1 -W2 10.244.1.1 && busybox ping -c1 -W2 $A"
$P rm -f -t 0 "$ID-a" >/dev/null
echo "netns left: $(ls "$T/ovl/run/up/netns" 2>/dev/null | wc -l)"
"#;

#[test]
fn podman_run_with_cni_backend() {
    for tool in ["podman", "runc", "busybox"] {
        assert!(
            which(tool),
            "{tool} is missing: install podman, runc and busybox"
        );
    }
    let node = Node::new("podman");
    let t = TempDir::new(&format!("{}-podman", node.name));
    for d in ["ovl", "net.d", "bin"] {
        std::fs::create_dir_all(t.0.join(d)).unwrap();
    }
    build_rootfs(&t.0.join("rootfs"));
    std::fs::copy(PLUGIN, t.0.join("bin/meshd-cni")).unwrap();
    std::fs::write(
        t.0.join("net.d/10-meshd.conflist"),
        only_our_plugin(&node).to_string(),
    )
    .unwrap();
    // Rootful podman asks for nofile and nproc limits of 1048576 and more; on a test machine that
    // is itself a container, with lower hard limits, runc then cannot start the container.
    std::fs::write(
        t.0.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{0}/bin\"]\n\
             network_config_dir = \"{0}/net.d\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            t.0.display()
        ),
    )
    .unwrap();

    let stdout = in_node(&node, &t.0, PODMAN_SCRIPT);
    let a = stdout
        .lines()
        .find_map(|l| l.strip_prefix("a is "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(a.starts_with("10.244.1."), "{stdout}");
    assert!(stdout.contains("default via 10.244.1.1"), "{stdout}");
    assert_eq!(stdout.matches("1 packets received").count(), 2, "{stdout}");
    // podman's network namespaces lived in the overlay's /run/netns, and are gone.
    assert!(stdout.contains("netns while a runs: 1"), "{stdout}");
    assert!(stdout.contains("netns left: 0"), "{stdout}");
    // --rm and rm -f made podman call DEL: nothing left behind.
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

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
    std::fs::write(
        t.0.join("10-meshd.conflist"),
        only_our_plugin(&node).to_string(),
    )
    .unwrap();
    std::fs::write(
        t.0.join("containerd.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/c.sock\"\n",
            t.0.display()
        ),
    )
    .unwrap();

    let stdout = in_node(&node, &t.0, SCRIPT);
    assert!(stdout.contains("inet 10.244.1."), "{stdout}");
    assert!(stdout.contains("default via 10.244.1.1"), "{stdout}");
    assert!(stdout.contains("1 packets received"), "{stdout}");
    // --rm made ctr call DEL: nothing left behind.
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

/// The example conflist with only our plugin, pointed at the node's directories: neither ctr nor
/// podman here offers the portMappings/bandwidth capabilities that drive the others.
fn only_our_plugin(node: &Node) -> serde_json::Value {
    let mut list: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-meshd.conflist"))
            .unwrap(),
    )
    .unwrap();
    let mut ours = list["plugins"][0].clone();
    ours["runtimeDir"] = node.runtime_dir().to_string_lossy().into();
    ours["dataDir"] = node.data_dir().to_string_lossy().into();
    list["plugins"] = serde_json::json!([ours]);
    list
}

/// Runs `script` in a private mount namespace inside the node's network namespace, with `$T`
/// the test's directory, `$PLUGIN` our binary and `$ID` the test's prefix; returns its stdout,
/// or panics with all it said if it failed.
fn in_node(node: &Node, t: &Path, script: &str) -> String {
    // Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts runc needs.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "nsenter"])
        .arg(format!("--net={}", node.host.path()))
        .args(["sh", "-c", &format!("{OVERLAYS}{script}")])
        .env("T", t)
        .env("PLUGIN", PLUGIN)
        .env("ID", &node.name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the runtime failed:\n{stdout}\n{stderr}"
    );
    stdout
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
