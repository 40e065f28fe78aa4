//! The example conflist (meshd-cni, then Debian's portmap and bandwidth) driven like a runtime,
//! a port mapped by portmap reached from outside the node, CHECK as libcni runs it, and
//! pod-to-pod across two nodes.
//!
//! ```text
//!  client ns                node A host ns                                     pod A
//!  198.18.0.2/30 ══ veth ══ 198.18.0.1/30   meshbr0 10.244.1.1/24 ── vmesh… ══ eth0 10.244.1.x
//!                           portmap: 198.18.0.1:8080 → pod A :80
//!                           198.18.1.1/30
//!                                ║ veth (stands in for the mesh: plain routes between subnets)
//!                           198.18.1.2/30
//!                           node B host ns  meshbr0 10.244.2.1/24 ── vmesh… ══ pod B eth0 10.244.2.x
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{pod_end, sh, unique, validate_result, Netns, Node, Out, PLUGIN};
use serde_json::{json, Value};

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn example_list(node: &Node) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-meshd.conflist");
    let mut list: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    list["plugins"][0]["runtimeDir"] = json!(node.runtime_dir());
    list["plugins"][0]["dataDir"] = json!(node.data_dir());
    list
}

/// A pod with a host port and bandwidth limits: what the runtime offers the plugins.
fn shaped_pod_with_host_port() -> Value {
    json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 200_000, "egressRate": 8_000_000, "egressBurst": 200_000},
    })
}

/// What a runtime (libcni) does with a conflist: each plugin gets the list's name and version,
/// the runtimeConfig of its capabilities that the pod has, and (after the first, or always for
/// CHECK/DEL) a prevResult. CHECK of a list with `disableCheck` runs no plugin and succeeds.
fn run_chain(
    node: &Node,
    list: &Value,
    cmd: &str,
    (cid, netns): (&str, &str),
    runtime_config: &Value,
    prev: Option<&Value>,
) -> (Vec<Out>, Option<Value>) {
    if cmd == "CHECK" && list["disableCheck"] == true {
        return (Vec::new(), None);
    }
    let mut plugins: Vec<Value> = list["plugins"].as_array().unwrap().clone();
    if cmd == "DEL" {
        plugins.reverse();
    }
    let mut outs = Vec::new();
    let mut result = prev.cloned();
    for p in plugins {
        let mut conf = p.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(caps) = p["capabilities"].as_object() {
            let rc: serde_json::Map<String, Value> = caps
                .keys()
                .filter_map(|k| runtime_config.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        let ty = p["type"].as_str().unwrap();
        let bin = if ty == "meshd-cni" {
            PLUGIN.to_owned()
        } else {
            format!("{REFERENCE_PLUGINS}/{ty}")
        };
        let out = node.exec(&bin, cmd, cid, netns, "eth0", &conf);
        if cmd == "ADD" && out.ok {
            result = Some(out.json());
        }
        let failed = !out.ok;
        outs.push(out);
        if failed && cmd == "ADD" {
            break;
        }
    }
    (outs, result)
}

/// Joins two namespaces with a veth and addresses from `net` (`.1` and `.2` of a /30).
fn wire(a: &Netns, b: &Netns, ifa: &str, ifb: &str, net: &str) {
    a.ip(&["link", "add", ifa, "type", "veth", "peer", "name", ifb]);
    a.ip(&["link", "set", ifb, "netns", &b.name]);
    a.ip(&["addr", "add", &format!("{net}.1/30"), "dev", ifa]);
    b.ip(&["addr", "add", &format!("{net}.2/30"), "dev", ifb]);
    a.ip(&["link", "set", ifa, "up"]);
    b.ip(&["link", "set", ifb, "up"]);
}

fn forward(ns: &Netns) {
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
}

#[test]
fn conflist_with_portmap_and_bandwidth() {
    assert!(
        Path::new(REFERENCE_PLUGINS).join("portmap").exists(),
        "install containernetworking-plugins"
    );
    let node = Node::new("chain");
    let list = example_list(&node);
    let version = list["cniVersion"].as_str().unwrap().to_owned();
    let pod = node.pod(0);
    let client = Netns::new(format!("{}-c", unique("chain")));
    wire(&node.host, &client, "uplink0", "eth0", "198.18.0");
    client.ip(&["route", "add", "default", "via", "198.18.0.1"]);
    forward(&node.host);

    let pod_path = pod.path();
    let att = ("chained", pod_path.as_str());
    let rc = shaped_pod_with_host_port();
    let (outs, result) = run_chain(&node, &list, "ADD", att, &rc, None);
    for o in &outs {
        o.expect_ok();
    }
    let result = result.unwrap();
    // portmap and bandwidth passed our result through.
    let ip = validate_result(&result, &version, "eth0", &pod.path());
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let qdiscs = sh(&[
        "ip",
        "netns",
        "exec",
        &node.host.name,
        "tc",
        "qdisc",
        "show",
        "dev",
        &host_veth,
    ]);
    assert!(
        qdiscs.contains("tbf"),
        "bandwidth did not shape {host_veth}: {qdiscs}"
    );

    // A server on pod port 80, reached through the node's hostPort 8080 from the client.
    let pod_ns = meshd_cni::netns::Netns::open(&pod.path()).unwrap();
    let listener = pod_ns
        .run(|| Ok(TcpListener::bind("0.0.0.0:80").unwrap()))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.write_all(format!("hello {peer}").as_bytes()).unwrap();
    });
    let client_ns =
        meshd_cni::netns::Netns::open(&format!("/var/run/netns/{}", client.name)).unwrap();
    let reply = client_ns
        .run(|| {
            let addr: SocketAddr = "198.18.0.1:8080".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            Ok(buf)
        })
        .unwrap();
    server.join().unwrap();
    assert!(reply.starts_with("hello 198.18.0.2:"), "{reply}");
    assert!(node.host.exec_ok(&["ping", "-c1", "-W2", &ip]));

    check_like_libcni(&node, &list, att, &rc, &result);

    // A plain pod, no host port, no limits: most pods.
    let plain = node.pod(1);
    let plain_path = plain.path();
    let plain_att = ("plain", plain_path.as_str());
    let (outs, plain_result) = run_chain(&node, &list, "ADD", plain_att, &json!({}), None);
    for o in &outs {
        o.expect_ok();
    }
    let plain_result = plain_result.unwrap();
    check_like_libcni(&node, &list, plain_att, &json!({}), &plain_result);
    let (dels, _) = run_chain(
        &node,
        &list,
        "DEL",
        plain_att,
        &json!({}),
        Some(&plain_result),
    );
    for o in &dels {
        o.expect_ok();
    }

    let (dels, _) = run_chain(&node, &list, "DEL", att, &rc, Some(&result));
    for o in &dels {
        o.expect_ok();
    }
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
    let nat = sh(&[
        "ip",
        "netns",
        "exec",
        &node.host.name,
        "iptables",
        "-t",
        "nat",
        "-S",
    ]);
    assert!(
        !nat.contains("--to-destination"),
        "portmap left DNAT rules: {nat}"
    );
}

/// CHECK of the example list as libcni runs it passes (its `disableCheck` is there for Debian's
/// 1.1.1 plugins); each plugin's own CHECK shows why: ours passes, and the upstream bugs the key
/// works around are reported when they show.
fn check_like_libcni(node: &Node, list: &Value, att: (&str, &str), rc: &Value, result: &Value) {
    let (checks, _) = run_chain(node, list, "CHECK", att, rc, Some(result));
    for o in &checks {
        o.expect_ok();
    }
    let mut forced = list.clone();
    forced["disableCheck"] = json!(false);
    let (checks, _) = run_chain(node, &forced, "CHECK", att, rc, Some(result));
    checks[0].expect_ok();
    for (o, p) in checks
        .iter()
        .zip(list["plugins"].as_array().unwrap())
        .skip(1)
    {
        if !o.ok {
            eprintln!(
                "note: {} CHECK of {} failed (upstream bug, see the conflist): {} {}",
                p["type"],
                att.0,
                o.stdout.trim(),
                o.stderr.lines().next().unwrap_or("")
            );
        }
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other() {
    let a = Node::new("xnode");
    let b = Node::with_subnet("xnode", "10.244.2.0/24", "10.244.2.1");
    wire(&a.host, &b.host, "toB0", "toA0", "198.18.1");
    a.host
        .ip(&["route", "add", "10.244.2.0/24", "via", "198.18.1.2"]);
    b.host
        .ip(&["route", "add", "10.244.1.0/24", "via", "198.18.1.1"]);
    forward(&a.host);
    forward(&b.host);
    let (pa, pb) = (a.pod(0), b.pod(0));
    let ra = a
        .run("ADD", "pa", &pa.path(), &a.conf("1.1.0"))
        .expect_ok()
        .json();
    let rb = b
        .run("ADD", "pb", &pb.path(), &b.conf("1.1.0"))
        .expect_ok()
        .json();
    let ipa = validate_result(&ra, "1.1.0", "eth0", &pa.path());
    let (ipb, _) = pod_end(&rb, "eth0", &pb.path());
    assert!(ipb.starts_with("10.244.2."), "{ipb}");
    assert!(
        pa.exec_ok(&["ping", "-c1", "-W2", &ipb]),
        "pod A cannot reach pod B"
    );
    assert!(
        pb.exec_ok(&["ping", "-c1", "-W2", &ipa]),
        "pod B cannot reach pod A"
    );
    a.run("DEL", "pa", &pa.path(), &a.conf("1.1.0")).expect_ok();
    b.run("DEL", "pb", &pb.path(), &b.conf("1.1.0")).expect_ok();
}
