//! 100 ADDs at once: 100 distinct addresses, all reachable; then 100 DELs: nothing left.
//!
//! ```text
//!  host ns: meshbr0 10.244.1.1/24 ─┬─ vmesh… ═ pod 0   eth0 10.244.1.a
//!                                  ├─ vmesh… ═ pod 1   eth0 10.244.1.b
//!                                  └─ …        pod 99
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::{validate_result, Node};

const PODS: usize = 100;

#[test]
fn hundred_parallel_adds_then_dels() {
    let node = Node::new("par");
    let pods: Vec<_> = (0..PODS).map(|i| node.pod(i)).collect();
    let conf = node.conf("1.1.0");

    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let r = node
                        .run("ADD", &format!("pod-{i}"), &pod.path(), conf)
                        .expect_ok()
                        .json();
                    validate_result(&r, "1.1.0", "eth0", &pod.path())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let distinct: HashSet<&String> = results.iter().collect();
    assert_eq!(distinct.len(), PODS, "addresses not distinct: {results:?}");
    for ip in &results {
        assert!(!["10.244.1.0", "10.244.1.1", "10.244.1.255"].contains(&ip.as_str()));
    }
    assert_eq!(node.allocations().len(), PODS);
    assert_eq!(node.host_veths().len(), PODS);
    for ip in &results {
        assert!(
            node.host.exec_ok(&["ping", "-c1", "-W2", ip]),
            "{ip} unreachable"
        );
    }
    // Pod to pod across the bridge as well.
    assert!(pods[0].exec_ok(&["ping", "-c1", "-W2", &results[PODS - 1]]));

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                node.run("DEL", &format!("pod-{i}"), &pod.path(), conf)
                    .expect_ok();
            });
        }
    });
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    for pod in &pods {
        assert!(!pod.ip(&["-o", "link"]).contains("eth0"));
    }
}
