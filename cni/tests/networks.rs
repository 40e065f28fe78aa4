//! More than one attachment per node subnet: two network names on one bridge.
//!
//! ```text
//!  host ns: meshbr0 10.244.1.1/24 ─┬─ vmesh… ═ pod 0  eth0 10.244.1.a   (network neta)
//!                                  ├─ vmesh… ═ pod 1  eth0 10.244.1.b   (network netb)
//!                                  └─ vmesh… ═ pod 2  eth0 10.244.1.c   (network neta)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{pod_end, Node, PLUGIN};
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
