//! meshd's runtime file `network.json`: the node's subnet, gateway, bridge and MTU.
//!
//! meshd writes it atomically (temp file + rename), so a reader sees either the old or the new
//! file, never half of one. We rely on `subnet`, `bridge`, `mtu`, and use `gateway` (default: the
//! subnet's `.1`) and `cluster_cidr` (when present the subnet must lie inside it). `node` and
//! `pid` are informational: the file outlives the daemon, so whether meshd is running is asked of
//! meshd itself ([`crate::liveness`]), never read from here.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::env::validate_ifname;
use crate::error::{Error, Result};
use crate::liveness;

/// The file name inside the runtime directory (meshd's `runfiles::NETWORK_FILE`). meshd's side
/// of this file is not linked in; `tests/e2e/contract.rs` writes it with meshd's writer and
/// reads it with [`read`], and fails when a field one side uses is not the other's.
pub const FILE_NAME: &str = "network.json";

/// The node network, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub mtu: u32,
}

/// What the runtime file says about the node.
#[derive(Debug)]
pub enum NodeState {
    /// No file: meshd never ran here, or is not up yet.
    Missing(PathBuf),
    /// meshd has not been given a subnet yet.
    NoSubnet,
    /// Ready to attach pods.
    Ready(NodeNetwork),
}

#[derive(Deserialize)]
struct Raw {
    subnet: Option<String>,
    gateway: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    cluster_cidr: Option<String>,
}

/// Reads `<runtime_dir>/network.json`. Decode and semantic errors are errors; absence is a
/// state, so each verb decides what it means for it. Says nothing of whether meshd runs.
pub fn read(runtime_dir: &Path) -> Result<NodeState> {
    let path = runtime_dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeState::Missing(path)),
        Err(e) => return Err(Error::io("reading", &path, e)),
    };
    let raw: Raw = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
        what: path.display().to_string(),
        source,
    })?;
    let Some(subnet) = raw.subnet.clone().filter(|s| !s.is_empty()) else {
        return Ok(NodeState::NoSubnet);
    };
    validate(&path, &subnet, raw).map(NodeState::Ready)
}

/// Reads the runtime file and insists meshd is ready and answering: ADD cannot proceed
/// otherwise.
pub fn require_ready(runtime_dir: &Path) -> Result<NodeNetwork> {
    let net = match read(runtime_dir)? {
        NodeState::Ready(n) => n,
        NodeState::Missing(p) => {
            return Err(Error::TryAgainLater(format!(
                "meshd is not running: {} does not exist",
                p.display()
            )))
        }
        NodeState::NoSubnet => {
            return Err(Error::TryAgainLater("meshd has no node subnet yet".into()))
        }
    };
    liveness::probe(runtime_dir).map_err(|e| Error::TryAgainLater(e.to_string()))?;
    Ok(net)
}

fn validate(path: &Path, subnet: &str, raw: Raw) -> Result<NodeNetwork> {
    let bad = |what: String| Error::InvalidConfig(format!("{}: {what}", path.display()));
    let subnet: Ipv4Net = subnet
        .parse()
        .map_err(|_| bad(format!("subnet {subnet:?} is not an IPv4 CIDR")))?;
    if subnet.prefix_len() > 30 {
        return Err(bad(format!(
            "subnet {subnet} leaves no room for pods (need /30 or larger)"
        )));
    }
    let subnet = subnet.trunc();
    if let Some(cluster) = raw.cluster_cidr.as_deref() {
        let cluster: Ipv4Net = cluster
            .parse()
            .map_err(|_| bad(format!("cluster_cidr {cluster:?} is not an IPv4 CIDR")))?;
        if !cluster.contains(&subnet) {
            return Err(bad(format!(
                "subnet {subnet} lies outside cluster_cidr {cluster}"
            )));
        }
    }
    let gateway = match raw.gateway.as_deref() {
        None => first_host(subnet),
        Some(g) => g
            .parse()
            .map_err(|_| bad(format!("gateway {g:?} is not an IPv4 address")))?,
    };
    if !subnet.contains(&gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(bad(format!(
            "gateway {gateway} is not a host address of {subnet}"
        )));
    }
    let bridge = raw.bridge.ok_or_else(|| bad("bridge is missing".into()))?;
    validate_ifname(&bridge).map_err(|why| bad(format!("bridge {why}")))?;
    let mtu = raw.mtu.ok_or_else(|| bad("mtu is missing".into()))?;
    if !(576..=65535).contains(&mtu) {
        return Err(bad(format!("mtu {mtu} is outside 576..=65535")));
    }
    Ok(NodeNetwork {
        subnet,
        gateway,
        bridge,
        mtu,
    })
}

/// The subnet's `.1`: the bridge's address by convention.
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn dir(name: &str, body: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshd-cni-node-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE_NAME), body).unwrap();
        d
    }

    #[test]
    fn ready_file_parses() {
        let d = dir(
            "ok",
            r#"{"node":"a","subnet":"10.244.1.0/24","bridge":"meshbr0","mtu":1450,"cluster_cidr":"10.244.0.0/16","pid":1}"#,
        );
        let NodeState::Ready(n) = read(&d).unwrap() else {
            panic!("not ready")
        };
        assert_eq!(n.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(n.mtu, 1450);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn states_and_errors() {
        let missing = std::env::temp_dir().join("meshd-cni-node-none-xyz");
        assert!(matches!(read(&missing).unwrap(), NodeState::Missing(_)));
        assert_eq!(require_ready(&missing).unwrap_err().code(), 11);
        let d = dir("nosub", r#"{"bridge":"meshbr0","mtu":1450}"#);
        assert!(matches!(read(&d).unwrap(), NodeState::NoSubnet));
        // A live pid (1 always is) in the file, but nothing answers on the socket.
        let d2 = dir(
            "dead",
            r#"{"subnet":"10.0.0.0/24","bridge":"b","mtu":1450,"pid":1}"#,
        );
        assert!(matches!(read(&d2).unwrap(), NodeState::Ready(_)));
        let e = require_ready(&d2).unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("meshd.sock"), "{e}");
        let d3 = dir(
            "outside",
            r#"{"subnet":"10.9.1.0/24","bridge":"b","mtu":1450,"cluster_cidr":"10.244.0.0/16"}"#,
        );
        assert_eq!(read(&d3).unwrap_err().code(), 7);
        let d4 = dir(
            "gw",
            r#"{"subnet":"10.0.0.0/24","gateway":"10.0.1.1","bridge":"b","mtu":1450}"#,
        );
        assert_eq!(read(&d4).unwrap_err().code(), 7);
        let d5 = dir("junk", "{nope");
        assert_eq!(read(&d5).unwrap_err().code(), 6);
        for d in [d, d2, d3, d4, d5] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
