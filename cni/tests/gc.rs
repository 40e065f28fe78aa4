//! GC without `cni.dev/valid-attachments`, exactly as libcni v1.2.0's `cnitool gc` sends it,
//! beside a runtime that tracks its attachments: `cnitool gc` must succeed, and must take
//! neither that runtime's live pods nor anything but the dead.
//!
//! ```text
//!  host ns: meshbr0 10.244.1.1/24 ─┬─ vmesh… ═ pod "live"   (runtime A, still running)
//!                                  ├─ (gone)   pod "dead"   (runtime A, namespace deleted, no DEL)
//!                                  └─ vmesh… ═ pod "tool"   (cnitool add, then cnitool gc)
//! ```
//! `cnitool` itself is not packaged for Debian 12 (its `golang-github-appc-cni-dev` is libcni
//! 1.1.2, before GC), so the test reproduces its request: `GCNetworkList(ctx, list, nil)` first
//! DELs every attachment in libcni's own cache, then runs each plugin with the plugin's config
//! plus `name` and `cniVersion` (re-marshalled from a Go map, so keys sorted) and the
//! environment `CNI_COMMAND=GC`, `CNI_CONTAINERID=`, `CNI_NETNS=`, `CNI_ARGS=`, `CNI_IFNAME=`,
//! `CNI_PATH=…` (libcni/api.go `gcNetwork`, pkg/invoke/args.go `AsEnv`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{wait_until, Node, Out, PLUGIN};
use serde_json::{json, Map, Value};

/// The example conflist's meshd-cni entry, as `cnitool gc` passes it to the plugin.
fn cnitool_gc_stdin(node: &Node) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-meshd.conflist");
    let list: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut plugin: Map<String, Value> = list["plugins"][0].as_object().unwrap().clone();
    plugin.insert("runtimeDir".into(), json!(node.runtime_dir()));
    plugin.insert("dataDir".into(), json!(node.data_dir()));
    // libcni issues GC only for lists of 1.1.0 and later.
    plugin.insert("cniVersion".into(), json!("1.1.0"));
    plugin.insert("name".into(), list["name"].clone());
    // serde_json's Map is ordered by key, as Go marshals a map.
    serde_json::to_vec(&Value::Object(plugin)).unwrap()
}

fn cnitool_gc(node: &Node) -> Out {
    let env = [
        ("CNI_COMMAND", "GC"),
        ("CNI_CONTAINERID", ""),
        ("CNI_NETNS", ""),
        ("CNI_ARGS", ""),
        ("CNI_IFNAME", ""),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    node.exec_with(PLUGIN, &env, &cnitool_gc_stdin(node))
}

#[test]
fn cnitool_gc_without_valid_attachments_keeps_every_live_pod() {
    let node = Node::new("cnitoolgc");
    let conf = {
        let mut c = node.conf("1.1.0");
        c["name"] = json!("meshd"); // the example conflist's network name
        c
    };
    let (live, dead, tool) = (node.pod(0), node.pod(1), node.pod(2));
    let live_result = node
        .run("ADD", "live", &live.path(), &conf)
        .expect_ok()
        .json();
    node.run("ADD", "dead", &dead.path(), &conf).expect_ok();
    node.run("ADD", "tool", &tool.path(), &conf).expect_ok();
    assert_eq!(node.allocations().len(), 3);
    // Runtime A's "dead" pod: its namespace goes away without a DEL (a crash), veth pair too.
    let dead_ip = node
        .records()
        .into_iter()
        .find(|(_, r)| r["containerID"] == "dead")
        .unwrap()
        .0;
    drop(dead);
    wait_until("the dead pod's veth is gone", || {
        node.host_veths().len() == 2
    });

    // cnitool gc: DEL of what libcni cached ("tool"), then GC with no list.
    node.run("DEL", "tool", &tool.path(), &conf).expect_ok();
    let out = cnitool_gc(&node);
    out.expect_ok();
    assert!(
        out.stdout.trim().is_empty(),
        "GC prints nothing: {}",
        out.stdout
    );

    let left: Vec<String> = node
        .records()
        .into_iter()
        .map(|(_, r)| r["containerID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        left,
        vec!["live".to_owned()],
        "GC took a live pod or left the dead one"
    );
    assert!(!node.allocations().contains(&dead_ip));
    assert_eq!(node.host_veths().len(), 1);
    let mut checked = conf.clone();
    checked["prevResult"] = live_result;
    node.run("CHECK", "live", &live.path(), &checked)
        .expect_ok();
    let ip = node.allocations()[0].clone();
    assert!(node.host.exec_ok(&["ping", "-c1", "-W2", &ip]));

    // A runtime whose Go nil list marshals as null is treated the same way.
    let mut null_list = conf.clone();
    null_list["cni.dev/valid-attachments"] = Value::Null;
    node.run("GC", "", "", &null_list).expect_ok();
    assert_eq!(node.allocations(), vec![ip]);

    node.run("DEL", "live", &live.path(), &conf).expect_ok();
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}
