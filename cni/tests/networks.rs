//! More than one attachment per node subnet: two network names on one bridge, and a second
//! interface in a pod that already has a default route.
//!
//! ```text
//!  host ns: meshbr0 10.244.1.1/24 ─┬─ vmesh… ═ pod 0  eth0 10.244.1.a   (network neta)
//!                                  ├─ vmesh… ═ pod 1  eth0 10.244.1.b   (network netb)
//!                                  └─ vmesh… ═ pod 2  eth0 10.244.1.c   (network neta)
//!
//!  secondary interfaces:           pod: eth0 (first ADD, or another plugin's) default route
//!                                       net1 10.244.1.x/24, no route of its own
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pod_end, Node, Out, PLUGIN};
use serde_json::{json, Value};

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn with_valid(conf: &Value, valid: &[&str]) -> Value {
    let mut c = conf.clone();
    c["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|cid| json!({"containerID": cid, "ifname": "eth0"}))
        .collect();
    c
}

fn default_routes(r: &Value) -> Vec<&Value> {
    r["routes"]
        .as_array()
        .map(|rs| rs.iter().filter(|r| r["dst"] == "0.0.0.0/0").collect())
        .unwrap_or_default()
}

#[test]
fn two_network_names_share_one_pool_and_gc_only_their_own() {
    let node = Node::new("twonets");
    let (neta, netb) = (
        node.conf_named("1.1.0", "neta"),
        node.conf_named("1.1.0", "netb"),
    );
    let pods: Vec<_> = (0..3).map(|i| node.pod(i)).collect();
    let add = |i: usize, conf: &Value| -> Value {
        node.run("ADD", &format!("c{i}"), &pods[i].path(), conf)
            .expect_ok()
            .json()
    };
    let results = [add(0, &neta), add(1, &netb), add(2, &neta)];
    let ends: Vec<(String, String)> = results
        .iter()
        .zip(&pods)
        .map(|(r, p)| pod_end(r, "eth0", &p.path()))
        .collect();
    assert_ne!(
        ends[0].0, ends[1].0,
        "two network names got the same address"
    );
    assert_ne!(ends[1].0, ends[2].0);
    assert_ne!(ends[0].0, ends[2].0);
    let owners: Vec<Value> = node
        .records()
        .into_iter()
        .map(|(_, r)| r["network"].clone())
        .collect();
    assert_eq!(
        owners.iter().filter(|n| **n == "neta").count(),
        2,
        "{owners:?}"
    );
    assert_eq!(
        owners.iter().filter(|n| **n == "netb").count(),
        1,
        "{owners:?}"
    );

    // A third pod reaches both, and its ARP resolves each address to the right pod.
    for (ip, mac) in &ends[..2] {
        assert!(
            pods[2].exec_ok(&["ping", "-c1", "-W2", ip]),
            "{ip} unreachable"
        );
        let neigh = pods[2].ip(&["neigh", "show", ip]);
        assert!(
            neigh.contains(mac.as_str()),
            "{ip} resolved to {neigh}, want {mac}"
        );
    }

    // GC of neta, keeping both of its pods, must not touch netb's pod.
    node.run("GC", "", "", &with_valid(&neta, &["c0", "c2"]))
        .expect_ok();
    assert_eq!(node.allocations().len(), 3);
    assert_eq!(node.host_veths().len(), 3);
    node.exec(
        PLUGIN,
        "CHECK",
        "c1",
        &pods[1].path(),
        "eth0",
        &with_prev(&netb, &results[1]),
    )
    .expect_ok();

    // GC of netb with nothing valid takes netb's pod only.
    node.run("GC", "", "", &with_valid(&netb, &[])).expect_ok();
    assert_eq!(node.allocations().len(), 2);
    assert!(!pods[1].ip(&["-o", "link"]).contains("eth0"));
    for i in [0, 2] {
        node.run(
            "CHECK",
            &format!("c{i}"),
            &pods[i].path(),
            &with_prev(&neta, &results[i]),
        )
        .expect_ok();
    }
    for i in [0, 2] {
        node.run("DEL", &format!("c{i}"), &pods[i].path(), &neta)
            .expect_ok();
    }
    node.run("DEL", "c1", &pods[1].path(), &netb).expect_ok();
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

#[test]
fn a_second_interface_reports_and_checks_only_what_was_installed() {
    let node = Node::new("net1");
    let conf = node.conf("1.1.0");
    let pod = node.pod(0);
    let exec = |cmd: &str, ifname: &str, conf: &Value| -> Out {
        node.exec(PLUGIN, cmd, "c", &pod.path(), ifname, conf)
    };

    let first = exec("ADD", "eth0", &conf).expect_ok().json();
    assert_eq!(default_routes(&first).len(), 1, "{first}");
    let second = exec("ADD", "net1", &conf).expect_ok().json();
    assert!(
        default_routes(&second).is_empty(),
        "net1 claims a default route: {second}"
    );
    let (ip1, _) = pod_end(&second, "net1", &pod.path());
    assert!(pod.ip(&["-4", "addr", "show", "net1"]).contains(&ip1));
    let routes = pod.ip(&["route", "show", "default"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(routes.contains("dev eth0"), "{routes}");
    exec("CHECK", "eth0", &with_prev(&conf, &first)).expect_ok();
    exec("CHECK", "net1", &with_prev(&conf, &second)).expect_ok();
    assert!(pod.exec_ok(&["ping", "-c1", "-W2", "-I", "net1", "10.244.1.1"]));

    // CHECK still holds eth0 to the default route it reported.
    pod.ip(&["route", "del", "default"]);
    let e = exec("CHECK", "eth0", &with_prev(&conf, &first)).expect_code(101);
    assert!(
        e["details"].as_str().unwrap().contains("no default route"),
        "{e}"
    );
    exec("CHECK", "net1", &with_prev(&conf, &second)).expect_ok();
    exec("DEL", "net1", &conf).expect_ok();
    exec("DEL", "eth0", &conf).expect_ok();
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn a_secondary_network_behind_another_plugin_keeps_its_default_route() {
    let node = Node::new("multus");
    let conf = node.conf("1.0.0");
    let pod = node.pod(0);
    // What another plugin made first: eth0 with the pod's default route.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    pod.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    let theirs = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": pod.path()}],
        "ips": [{"address": "192.0.2.2/24", "gateway": "192.0.2.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}],
    });
    let r = node
        .exec(
            PLUGIN,
            "ADD",
            "c",
            &pod.path(),
            "net1",
            &with_prev(&conf, &theirs),
        )
        .expect_ok()
        .json();
    let defaults = default_routes(&r);
    assert_eq!(defaults.len(), 1, "{r}");
    assert_eq!(defaults[0]["gw"], "192.0.2.1", "{r}");
    let (ip1, _) = pod_end(&r, "net1", &pod.path());
    assert!(ip1.starts_with("10.244.1."), "{r}");
    assert!(pod
        .ip(&["route", "show", "default"])
        .contains("via 192.0.2.1 dev eth0"));
    node.exec(
        PLUGIN,
        "CHECK",
        "c",
        &pod.path(),
        "net1",
        &with_prev(&conf, &r),
    )
    .expect_ok();
    assert!(pod.exec_ok(&["ping", "-c1", "-W2", "-I", "net1", "10.244.1.1"]));
    node.exec(
        PLUGIN,
        "DEL",
        "c",
        &pod.path(),
        "net1",
        &with_prev(&conf, &r),
    )
    .expect_ok();
    assert!(pod
        .ip(&["route", "show", "default"])
        .contains("via 192.0.2.1 dev eth0"));
    assert!(node.allocations().is_empty());
}
