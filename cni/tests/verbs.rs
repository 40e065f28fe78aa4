//! Every verb in every supported version, driven like a runtime (env + stdin, stdout result).
//!
//! ```text
//!  host ns (node)                         pod ns
//!  meshbr0 10.244.1.1/24 ── vmeshXXXX ═══ eth0 10.244.1.x/24 (default via .1)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{validate_result, Node, VERSIONS};
use serde_json::{json, Value};

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

#[test]
fn every_verb_in_every_version() {
    let node = Node::new("verbs");
    for (i, version) in VERSIONS.iter().enumerate() {
        let pod = node.pod(i);
        let cid = format!("ctr-{i}");
        let conf = node.conf(version);

        let v = node
            .run("VERSION", "", "", &json!({"cniVersion": version}))
            .expect_ok()
            .json();
        assert_eq!(v["cniVersion"], *version);
        assert_eq!(v["supportedVersions"], json!(VERSIONS));

        let result = node.run("ADD", &cid, &pod.path(), &conf).expect_ok().json();
        let ip = validate_result(&result, version, "eth0", &pod.path());
        assert!(
            node.host.exec_ok(&["ping", "-c1", "-W2", &ip]),
            "{ip} unreachable ({version})"
        );
        assert!(pod
            .ip(&["route"])
            .contains("default via 10.244.1.1 dev eth0"));
        assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1450"));

        let check = node.run("CHECK", &cid, &pod.path(), &with_prev(&conf, &result));
        if version.starts_with("0.3") {
            check.expect_code(1);
        } else {
            check.expect_ok();
            assert!(
                check.stdout.trim().is_empty(),
                "CHECK prints nothing: {}",
                check.stdout
            );
        }

        let gc_conf = {
            let mut c = conf.clone();
            c["cni.dev/valid-attachments"] = json!([{"containerID": cid, "ifname": "eth0"}]);
            c
        };
        let status = node.run("STATUS", "", "", &conf);
        let gc = node.run("GC", "", "", &gc_conf);
        if *version == "1.1.0" {
            status.expect_ok();
            gc.expect_ok();
            assert_eq!(
                node.allocations(),
                vec![ip.clone()],
                "GC kept the valid attachment"
            );
        } else {
            status.expect_code(1);
            gc.expect_code(1);
        }

        node.run("DEL", &cid, &pod.path(), &with_prev(&conf, &result))
            .expect_ok();
        assert!(node.allocations().is_empty(), "{version}: allocation left");
        assert!(node.host_veths().is_empty(), "{version}: host veth left");
        assert!(
            !pod.ip(&["-o", "link"]).contains("eth0"),
            "{version}: pod end left"
        );
    }
}

#[test]
fn add_twice_is_refused_and_keeps_the_first() {
    let node = Node::new("twice");
    let pod = node.pod(0);
    let conf = node.conf("1.0.0");
    let r = node.run("ADD", "c", &pod.path(), &conf).expect_ok().json();
    let before = node.snapshot();
    let e = node.run("ADD", "c", &pod.path(), &conf).expect_code(100);
    assert!(e["details"].as_str().unwrap().contains("DEL"), "{e}");
    assert_eq!(node.snapshot(), before);
    node.run("CHECK", "c", &pod.path(), &with_prev(&conf, &r))
        .expect_ok();
}

#[test]
fn netns_given_as_proc_pid_path_and_then_vanishing() {
    let node = Node::new("procns");
    // A process in a fresh, anonymous network namespace: the runtime passes /proc/PID/ns/net.
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.host.name,
            "unshare",
            "-n",
            "sleep",
            "600",
        ])
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let path = format!("/proc/{pid}/ns/net");
    // Wait until unshare has made the namespace and exec'd sleep (no timing in assertions).
    for _ in 0..500 {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let guard = Kill(&mut child);
    let conf = node.conf("1.1.0");
    let r = node.run("ADD", "procpod", &path, &conf).expect_ok().json();
    let ip = validate_result(&r, "1.1.0", "eth0", &path);
    assert!(node.host.exec_ok(&["ping", "-c1", "-W2", &ip]));
    drop(guard); // the namespace dies with its only process, taking the veth pair along
    node.run("DEL", "procpod", &path, &conf).expect_ok();
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn del_is_idempotent() {
    let node = Node::new("del");
    let conf = node.conf("1.1.0");
    let pod = node.pod(0);
    // DEL and GC on a node that never attached anything create no state.
    node.run("DEL", "c0", &pod.path(), &conf).expect_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.run("GC", "", "", &gc).expect_ok();
    assert!(
        !node.data_dir().exists(),
        "DEL or GC created the data directory"
    );
    node.run("ADD", "c1", &pod.path(), &conf).expect_ok();
    node.run("DEL", "c1", &pod.path(), &conf).expect_ok();
    node.run("DEL", "c1", &pod.path(), &conf).expect_ok();
    node.run("DEL", "never-added", &pod.path(), &conf)
        .expect_ok();
    node.run(
        "DEL",
        "c1",
        &pod.path(),
        &node.conf_named("1.1.0", "nosuchnet"),
    )
    .expect_ok();
    assert!(
        !node.data_dir().join("nosuchnet").exists(),
        "DEL made a state directory"
    );

    // Empty CNI_NETNS: the runtime no longer knows the namespace.
    node.run("ADD", "c2", &pod.path(), &conf).expect_ok();
    node.run("DEL", "c2", "", &conf).expect_ok();
    assert!(!pod.ip(&["-o", "link"]).contains("eth0"));

    // The namespace was deleted before DEL; meshd is down as well.
    let gone = node.pod(1);
    node.run("ADD", "c3", &gone.path(), &conf).expect_ok();
    let gone_path = gone.path();
    drop(gone);
    std::fs::remove_file(node.runtime_dir().join("network.json")).unwrap();
    node.run("DEL", "c3", &gone_path, &conf).expect_ok();
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn check_reports_what_is_wrong() {
    let node = Node::new("check");
    let conf = node.conf("1.0.0");
    let pod = node.pod(0);
    let r = node.run("ADD", "c", &pod.path(), &conf).expect_ok().json();
    let checked = with_prev(&conf, &r);
    node.run("CHECK", "c", &pod.path(), &checked).expect_ok();

    pod.ip(&["addr", "flush", "dev", "eth0"]);
    let e = node
        .run("CHECK", "c", &pod.path(), &checked)
        .expect_code(101);
    let details = e["details"].as_str().unwrap();
    assert!(details.contains("lacks address 10.244.1.2/24"), "{e}");
    assert!(details.contains("no default route"), "{e}");

    pod.ip(&["link", "set", "eth0", "mtu", "1400"]);
    let e = node
        .run("CHECK", "c", &pod.path(), &checked)
        .expect_code(101);
    assert!(
        e["details"].as_str().unwrap().contains("MTU Some(1400)"),
        "{e}"
    );

    // No prevResult: an invalid configuration for CHECK.
    node.run("CHECK", "c", &pod.path(), &conf).expect_code(7);
    node.run("DEL", "c", &pod.path(), &conf).expect_ok();
    let e = node
        .run("CHECK", "c", &pod.path(), &checked)
        .expect_code(101);
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains("no address is allocated"),
        "{e}"
    );
}

/// meshd restarted with another subnet (network.json and the bridge's address say so): a pod
/// made under the old one keeps its address and its routes, but its gateway is gone and its
/// traffic is not routed here. CHECK must say so, not pass.
#[test]
fn check_fails_for_a_pod_outside_the_nodes_new_subnet() {
    let node = Node::new("check-subnet");
    let conf = node.conf("1.0.0");
    let pod = node.pod(0);
    let r = node.run("ADD", "c", &pod.path(), &conf).expect_ok().json();
    let checked = with_prev(&conf, &r);
    node.run("CHECK", "c", &pod.path(), &checked).expect_ok();

    node.host.ip(&["addr", "flush", "dev", "meshbr0"]);
    node.host
        .ip(&["addr", "add", "10.244.7.1/24", "dev", "meshbr0"]);
    node.write_network(&json!({
        "node": "node-a", "subnet": "10.244.7.0/24", "gateway": "10.244.7.1",
        "bridge": "meshbr0", "mtu": 1450, "cluster_cidr": "10.244.0.0/16",
        "pid": std::process::id(),
    }));
    // The staged fault: the pod still has what ADD gave it, inside the old subnet.
    assert!(pod
        .ip(&["addr", "show", "dev", "eth0"])
        .contains("10.244.1.2/24"));
    let e = node
        .run("CHECK", "c", &pod.path(), &checked)
        .expect_code(101);
    let details = e["details"].as_str().unwrap();
    assert!(
        details.contains("address 10.244.1.2 lies outside this node's pod subnet 10.244.7.0/24"),
        "{e}"
    );
    assert!(
        details
            .contains("ADD reported gateway 10.244.1.1, but this node's gateway is now 10.244.7.1"),
        "{e}"
    );
    node.run("DEL", "c", &pod.path(), &conf).expect_ok();
}

#[test]
fn gc_releases_everything_not_listed() {
    let node = Node::new("gc");
    let conf = node.conf("1.1.0");
    let pods: Vec<_> = (0..3).map(|i| node.pod(i)).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            node.run("ADD", &format!("c{i}"), &p.path(), &conf)
                .expect_ok()
                .json()
        })
        .collect();
    // Strays: a veth of this network whose record was lost, one of another network, and a
    // foreign one; only the first is this network's to take.
    for (name, peer, alias) in [
        ("vmeshdeadbeef00", "stray0", Some("meshd-cni meshnet")),
        ("vmeshdeadbeef01", "stray1", Some("meshd-cni othernet")),
        ("keepme0", "keepme1", None),
    ] {
        node.host
            .ip(&["link", "add", name, "type", "veth", "peer", "name", peer]);
        node.host.ip(&["link", "set", name, "master", "meshbr0"]);
        if let Some(alias) = alias {
            node.host.ip(&["link", "set", name, "alias", alias]);
        }
    }

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    node.run("GC", "", "", &gc).expect_ok();

    assert_eq!(node.allocations(), vec!["10.244.1.3".to_owned()]);
    let links = node.host.ip(&["-o", "link"]);
    assert!(!links.contains("vmeshdeadbeef00"), "{links}");
    assert!(links.contains("vmeshdeadbeef01"), "{links}");
    assert!(links.contains("keepme0"), "{links}");
    assert_eq!(node.host_veths().len(), 2);
    assert!(!pods[0].ip(&["-o", "link"]).contains("eth0"));
    node.run(
        "CHECK",
        "c1",
        &pods[1].path(),
        &with_prev(&conf, &results[1]),
    )
    .expect_ok();
}

#[test]
fn status_and_add_without_a_ready_daemon() {
    let mut node = Node::new("status");
    let conf = node.conf("1.1.0");
    let pod = node.pod(0);
    node.run("STATUS", "", "", &conf).expect_ok();
    let net = |pid: u32, subnet: Option<&str>| {
        let mut v = json!({"node": "a", "bridge": "meshbr0", "mtu": 1450, "pid": pid});
        if let Some(s) = subnet {
            v["subnet"] = json!(s);
        }
        v
    };
    let me = std::process::id();
    node.write_network(&net(me, None));
    let e = node.run("STATUS", "", "", &conf).expect_code(50);
    assert!(e["msg"].as_str().unwrap().contains("no node subnet"), "{e}");
    node.run("ADD", "c", &pod.path(), &conf).expect_code(11);

    // meshd stopped (its socket file left behind) while network.json names a live pid: ours,
    // then 1, as meshd in a PID namespace of its own writes.
    node.write_network(&net(me, Some("10.244.1.0/24")));
    node.run("STATUS", "", "", &conf).expect_ok();
    node.meshd.stop();
    let before = node.snapshot();
    for pid in [me, 1] {
        node.write_network(&net(pid, Some("10.244.1.0/24")));
        let e = node.run("STATUS", "", "", &conf).expect_code(51);
        assert!(
            e["msg"].as_str().unwrap().contains("meshd does not answer"),
            "{e}"
        );
        let e = node.run("ADD", "c", &pod.path(), &conf).expect_code(11);
        assert!(e["msg"].as_str().unwrap().contains("meshd.sock"), "{e}");
        assert_eq!(node.snapshot(), before);
    }
    // A hung meshd: the kernel queues the connection, nothing answers.
    let sock = node.runtime_dir().join("meshd.sock");
    std::fs::remove_file(&sock).unwrap();
    let hung = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let e = node.run("STATUS", "", "", &conf).expect_code(51);
    assert!(
        e["msg"].as_str().unwrap().contains("no answer within"),
        "{e}"
    );
    drop(hung);
    node.meshd = common::FakeMeshd::start(&node.runtime_dir());
    node.run("STATUS", "", "", &conf).expect_ok();

    std::fs::remove_file(node.runtime_dir().join("network.json")).unwrap();
    node.run("STATUS", "", "", &conf).expect_code(50);
    node.run("ADD", "c", &pod.path(), &conf).expect_code(11);
    assert_eq!(node.snapshot(), before);

    node.write_network(&net(me, Some("10.244.1.0/24")));
    node.host.ip(&["link", "del", "meshbr0"]);
    let e = node.run("STATUS", "", "", &conf).expect_code(51);
    assert!(e["msg"].as_str().unwrap().contains("bridge meshbr0"), "{e}");
}

#[test]
fn status_reports_a_full_subnet() {
    // A /30: the gateway and one pod.
    let node = Node::with_subnet("full", "10.244.1.0/30", "10.244.1.1");
    let conf = node.conf("1.1.0");
    let pod = node.pod(0);
    node.run("STATUS", "", "", &conf).expect_ok();
    node.run("ADD", "c", &pod.path(), &conf).expect_ok();
    let e = node.run("STATUS", "", "", &conf).expect_code(50);
    assert!(e["msg"].as_str().unwrap().contains("in use"), "{e}");
    node.run("DEL", "c", &pod.path(), &conf).expect_ok();
    node.run("STATUS", "", "", &conf).expect_ok();
}

#[test]
fn failed_add_rolls_back() {
    let node = Node::new("rollback");
    let conf = node.conf("1.1.0");
    // The pod already has an eth0: veth creation fails; the address must be released.
    let pod = node.pod(0);
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let before = node.snapshot();
    let e = node.run("ADD", "c", &pod.path(), &conf).expect_code(5);
    assert!(e["msg"].as_str().unwrap().contains("creating veth"), "{e}");
    assert!(node.allocations().is_empty());
    assert_eq!(node.snapshot(), before);

    // meshbr0 is not a bridge: the veth exists before enslaving fails, and must be removed.
    node.host.ip(&["link", "del", "meshbr0"]);
    node.host.ip(&[
        "link", "add", "meshbr0", "type", "veth", "peer", "name", "notbr0",
    ]);
    let pod1 = node.pod(1);
    let e = node.run("ADD", "c1", &pod1.path(), &conf).expect_code(5);
    assert!(e["msg"].as_str().unwrap().contains("attaching veth"), "{e}");
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
    assert!(!pod1.ip(&["-o", "link"]).contains("eth0"));
}
