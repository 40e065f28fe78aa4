//! Stop, restart and cleanup: SIGTERM leaves the bridge (pods keep their addresses) and removes
//! the TUN device; a restart reconciles what it finds; `meshd cleanup` removes what meshd made;
//! a foreign link in meshd's way is reported and left alone.

use super::cluster::spec;
use crate::support::{meshd_bin, meshd_pid, require_root, wait_gone, wait_until};
use meshd_lab::netns::ip;
use meshd_lab::probe::ping;
use meshd_lab::{HostKind, Topology};
use std::process::Command;

fn has_link(ns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn addrs(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show", "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn stop_restart_and_cleanup() {
    require_root();
    let t = Topology::up(spec("life", vec![HostKind::Meshd; 2], &[])).unwrap();
    let h = &t.hosts[0];
    let cfg = h.dir.join("meshd.toml");
    assert!(addrs(&h.ns, "meshbr0").contains("10.244.1.1/24"));
    assert!(has_link(&h.ns, "mesh0"));

    // SAFETY: kill(2) on the pid of the meshd this test started.
    unsafe { libc::kill(meshd_pid(&t, 0), libc::SIGTERM) };
    wait_gone(meshd_pid(&t, 0));
    assert!(!has_link(&h.ns, "mesh0"), "the TUN device outlived meshd");
    assert!(
        addrs(&h.ns, "meshbr0").contains("10.244.1.1/24"),
        "the bridge lost its address on stop"
    );
    let pod_addr = Command::new("ip")
        .args([
            "-n",
            &h.pods[0].ns,
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&pod_addr.stdout).contains(&h.pods[0].addr.to_string()));

    // Restart over the existing bridge: it reconciles, and traffic flows again.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(meshd_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = h.dir.join("run");
    wait_until("meshd should come back", || meshd::status::query(&run));
    ping(&h.pods[0].ns, t.hosts[1].pods[0].addr, 10).unwrap();
    // The pods' gateway MAC is the node's, not borrowed from whichever pod port is lowest.
    let link = Command::new("ip")
        .args(["-n", &h.ns, "link", "show", "meshbr0"])
        .output()
        .unwrap();
    let want = meshd::host::bridge_mac(&h.name).to_string();
    assert!(
        String::from_utf8_lossy(&link.stdout).contains(&want),
        "bridge MAC is not {want}"
    );
    assert_eq!(
        addrs(&h.ns, "meshbr0").matches("inet ").count(),
        1,
        "{}",
        addrs(&h.ns, "meshbr0")
    );

    // cleanup refuses while meshd runs, then removes the bridge once it has stopped.
    let cleanup = || {
        Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(meshd_bin())
            .args(["cleanup", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = cleanup();
    assert!(!out.status.success(), "cleanup ran under a live meshd");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let out = cleanup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!has_link(&h.ns, "meshbr0"), "cleanup left the bridge");
    for f in ["network.json", "meshd.sock", "control.sock", "meshd.lock"] {
        assert!(!run.join(f).exists(), "cleanup left {f}");
    }
}

#[test]
fn a_foreign_link_in_the_way_is_reported_and_left_alone() {
    require_root();
    let t = Topology::up(spec("forn", vec![HostKind::Meshd; 2], &[])).unwrap();
    let h = &t.hosts[1];
    // SAFETY: kill(2) on the pid of the meshd this test started.
    unsafe { libc::kill(meshd_pid(&t, 1), libc::SIGTERM) };
    wait_gone(meshd_pid(&t, 1));
    // Replace our bridge with somebody else's dummy link of the same name.
    ip(&["-n", &h.ns, "link", "del", "meshbr0"]).unwrap();
    ip(&[
        "-n", &h.ns, "link", "add", "meshbr0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(meshd_bin())
        .args(["run", "--config"])
        .arg(h.dir.join("meshd.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("meshbr0") && stderr.contains("not a bridge"),
        "{stderr}"
    );
    assert!(has_link(&h.ns, "meshbr0"), "the foreign link was removed");
    assert!(
        !has_link(&h.ns, "mesh0"),
        "a failed start left the TUN device"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(meshd_bin())
        .args(["cleanup", "--config"])
        .arg(h.dir.join("meshd.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not created by meshd"));
    assert!(
        has_link(&h.ns, "meshbr0"),
        "cleanup removed a link meshd did not make"
    );
}

/// A second `meshd run` with the first one's run directory exits at once with an error that
/// names the holder, and touches nothing of the first: its status socket still answers, its TUN
/// device is still attached, and pods still reach the other node.
#[test]
fn a_second_daemon_on_one_run_directory_is_refused() {
    require_root();
    let t = Topology::up(spec("twice", vec![HostKind::Meshd; 2], &[])).unwrap();
    let h = &t.hosts[0];
    let run = h.dir.join("run");
    let first = meshd_pid(&t, 0);
    let socket = std::fs::metadata(run.join("meshd.sock")).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(meshd_bin())
        .args(["run", "--config"])
        .arg(h.dir.join("meshd.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second meshd ran: {stderr}");
    assert!(
        stderr.contains("another meshd") && stderr.contains(&format!("pid {first}")),
        "{stderr}"
    );
    // The first daemon is untouched: the same socket (not replaced), still answering.
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::metadata(run.join("meshd.sock")).unwrap();
    assert_eq!(now.ino(), socket.ino(), "the status socket was replaced");
    assert_eq!(now.mode() & 0o777, 0o600, "the status socket is not 0600");
    meshd::status::query(&run).unwrap();
    assert_eq!(meshd_pid(&t, 0), first);
    assert!(has_link(&h.ns, "mesh0"));
    ping(&h.pods[0].ns, t.hosts[1].pods[0].addr, 5).unwrap();
}
