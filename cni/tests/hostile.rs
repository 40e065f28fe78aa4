//! Malformed and hostile input: the right error code, a message that says what to fix, and
//! nothing changed on the host (links, addresses, allocations).
//!
//! ```text
//!  host ns: meshbr0 10.244.1.1/24          pod ns: (empty)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Node, PLUGIN};
use serde_json::{json, Value};

#[test]
fn bad_configs_and_env_change_nothing() {
    let node = Node::new("hostile");
    let pod = node.pod(0);
    let good = node.conf("1.1.0");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let before = node.snapshot();
    let p = pod.path();
    let host_ns = node.host.path();
    let cases: Vec<(&str, Value, &str, &str, &str, u64)> = vec![
        (
            "unknown version",
            edit(&|c| c["cniVersion"] = json!("0.2.0")),
            "c",
            &p,
            "eth0",
            1,
        ),
        (
            "future version",
            edit(&|c| c["cniVersion"] = json!("2.0.0")),
            "c",
            &p,
            "eth0",
            1,
        ),
        (
            "missing name",
            edit(&|c| {
                c.as_object_mut().unwrap().remove("name");
            }),
            "c",
            &p,
            "eth0",
            7,
        ),
        (
            "traversal in name",
            edit(&|c| c["name"] = json!("../../etc")),
            "c",
            &p,
            "eth0",
            7,
        ),
        (
            "name wrong type",
            edit(&|c| c["name"] = json!(["x"])),
            "c",
            &p,
            "eth0",
            6,
        ),
        (
            "relative dataDir",
            edit(&|c| c["dataDir"] = json!("data")),
            "c",
            &p,
            "eth0",
            7,
        ),
        (
            "dotdot runtimeDir",
            edit(&|c| c["runtimeDir"] = json!("/run/../etc")),
            "c",
            &p,
            "eth0",
            7,
        ),
        (
            "ipam plugin",
            edit(&|c| c["ipam"] = json!({"type": "host-local"})),
            "c",
            &p,
            "eth0",
            2,
        ),
        (
            "ipMasq",
            edit(&|c| c["ipMasq"] = json!(true)),
            "c",
            &p,
            "eth0",
            2,
        ),
        (
            "prevResult not object",
            edit(&|c| c["prevResult"] = json!("x")),
            "c",
            &p,
            "eth0",
            7,
        ),
        (
            "container id with slash",
            good.clone(),
            "../c",
            &p,
            "eth0",
            4,
        ),
        ("empty container id", good.clone(), "", &p, "eth0", 4),
        (
            "ifname too long",
            good.clone(),
            "c",
            &p,
            "eth0-much-too-long",
            4,
        ),
        ("ifname with slash", good.clone(), "c", &p, "a/b", 4),
        ("missing ifname", good.clone(), "c", &p, "", 4),
        ("missing netns", good.clone(), "c", "", "eth0", 4),
        ("relative netns", good.clone(), "c", "netns/x", "eth0", 4),
        (
            "netns does not exist",
            good.clone(),
            "c",
            "/var/run/netns/cni-none-x",
            "eth0",
            3,
        ),
        (
            "netns not a namespace",
            good.clone(),
            "c",
            "/etc/hostname",
            "eth0",
            4,
        ),
        (
            "netns a mount namespace",
            good.clone(),
            "c",
            "/proc/self/ns/mnt",
            "eth0",
            4,
        ),
        (
            "netns the node's own, as /proc/self",
            good.clone(),
            "c",
            "/proc/self/ns/net",
            "eth0",
            4,
        ),
        (
            "netns the node's own, by name",
            good.clone(),
            "c",
            &host_ns,
            "eth0",
            4,
        ),
    ];
    for (what, conf, cid, netns, ifname, code) in cases {
        let out = node.exec(PLUGIN, "ADD", cid, netns, ifname, &conf);
        let e = out.expect_code(code);
        assert!(!e["msg"].as_str().unwrap().is_empty(), "{what}: {e}");
        if code == 4 {
            // The spec: the message must name the invalid variable.
            assert!(e["msg"].as_str().unwrap().contains("CNI_"), "{what}: {e}");
        }
        assert_eq!(node.snapshot(), before, "{what} changed the host");
    }
}

#[test]
fn undecodable_stdin_and_unknown_command() {
    let node = Node::new("stdin");
    let pod = node.pod(0);
    let before = node.snapshot();
    for raw in [
        "",
        "{",
        "null",
        "[1,2]",
        "{\"cniVersion\":\"1.1.0\",\"name\":\"m\"",
        "\u{0}\u{1}",
    ] {
        let out = raw_exec(&node, "ADD", &pod.path(), raw.as_bytes());
        let v: Value = serde_json::from_str(&out.0).unwrap();
        assert!(
            matches!(v["code"].as_u64(), Some(6) | Some(7)),
            "{raw:?}: {v}"
        );
        assert!(!out.1);
    }
    let huge = format!(
        "{{\"cniVersion\":\"1.1.0\",\"name\":\"m\",\"args\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let out = raw_exec(&node, "ADD", &pod.path(), huge.as_bytes());
    let v: Value = serde_json::from_str(&out.0).unwrap();
    assert!(matches!(v["code"].as_u64(), Some(6) | Some(7)), "{v}");
    let out = raw_exec(&node, "FROB", &pod.path(), b"{}");
    let v: Value = serde_json::from_str(&out.0).unwrap();
    assert_eq!(v["code"], 4);
    assert_eq!(node.snapshot(), before);
}

#[test]
fn broken_runtime_file_is_reported() {
    let node = Node::new("netjson");
    let pod = node.pod(0);
    let conf = node.conf("1.0.0");
    let me = std::process::id();
    let cases = [
        (
            json!({"subnet": "10.9.1.0/24", "bridge": "meshbr0", "mtu": 1450, "cluster_cidr": "10.244.0.0/16", "pid": me}),
            7,
            "outside cluster_cidr",
        ),
        (
            json!({"subnet": "10.244.1.0/24", "gateway": "10.244.2.1", "bridge": "meshbr0", "mtu": 1450, "pid": me}),
            7,
            "not a host address",
        ),
        (
            json!({"subnet": "10.244.1.0/31", "bridge": "meshbr0", "mtu": 1450, "pid": me}),
            7,
            "no room",
        ),
        (
            json!({"subnet": "10.244.1.0/24", "bridge": "meshbr0", "mtu": 10, "pid": me}),
            7,
            "mtu",
        ),
        (
            json!({"subnet": "10.244.1.0/24", "bridge": "bad/name", "mtu": 1450, "pid": me}),
            7,
            "bridge",
        ),
        (
            json!({"subnet": "not-a-cidr", "bridge": "meshbr0", "mtu": 1450, "pid": me}),
            7,
            "not an IPv4 CIDR",
        ),
        (
            json!({"subnet": "10.244.1.0/24", "bridge": "meshbr0", "mtu": "big", "pid": me}),
            6,
            "decode",
        ),
    ];
    let before = node.snapshot();
    for (file, code, words) in cases {
        node.write_network(&file);
        let e = node.run("ADD", "c", &pod.path(), &conf).expect_code(code);
        assert!(e["msg"].as_str().unwrap().contains(words), "{file}: {e}");
        assert_eq!(node.snapshot(), before, "{file}");
    }
}

fn raw_exec(node: &Node, cmd: &str, netns: &str, stdin: &[u8]) -> (String, bool) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.host.name, PLUGIN])
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "c")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin_pipe = child.stdin.take().unwrap();
    // The plugin may stop reading at its size limit; a broken pipe then is expected.
    let _ = stdin_pipe.write_all(stdin);
    drop(stdin_pipe);
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}
