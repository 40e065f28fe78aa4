//! Where this node's pod subnet comes from (explicit in the config, the lease a previous run
//! persisted, or a new gossip lease), the lease file, and what a subnet means on the host: the
//! bridge holds its gateway address and `network.json` tells the CNI plugin about it.

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use meshd_gossip::{Lease, Subnet, SubnetRequest};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::host::{self, Host};
use crate::runfiles::{self, NetworkFile, LEASE_FILE, NETWORK_FILE};

/// Bridge address and `network.json` for `subnet`.
pub async fn apply(host: &Host, cfg: &Config, subnet: Ipv4Net) -> Result<()> {
    host.ensure_bridge(
        &cfg.bridge,
        &cfg.node_name,
        subnet,
        cfg.cluster_cidr,
        cfg.overlay_mtu(),
    )
    .await?;
    let network = NetworkFile {
        node: cfg.node_name.clone(),
        subnet: subnet.to_string(),
        gateway: host::gateway(subnet).to_string(),
        bridge: cfg.bridge.clone(),
        mtu: cfg.overlay_mtu(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        pid: std::process::id(),
    };
    runfiles::write_atomic(&cfg.run_dir.join(NETWORK_FILE), &network)
}

/// An explicit subnet, else the persisted lease (if it still fits the cluster), else auto.
pub fn request(cfg: &Config) -> Result<SubnetRequest> {
    if let Some(s) = cfg.subnet {
        return Ok(SubnetRequest::Explicit(to_subnet(s).context("subnet")?));
    }
    let Some(lease) = read_lease(&cfg.state_dir) else {
        return Ok(SubnetRequest::Auto);
    };
    match to_net(lease.subnet) {
        Some(net) if cfg.cluster_cidr.contains(&net) => Ok(SubnetRequest::Persisted(lease)),
        Some(net) => {
            tracing::warn!(subnet = %net, cluster_cidr = %cfg.cluster_cidr, "the persisted lease is outside cluster-cidr: ignored");
            Ok(SubnetRequest::Auto)
        }
        None => {
            tracing::error!(
                lease = %lease.subnet, path = %lease_path(&cfg.state_dir).display(),
                "the persisted lease is not an IPv4 subnet: ignored, the node takes a new one"
            );
            Ok(SubnetRequest::Auto)
        }
    }
}

fn lease_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LEASE_FILE)
}

/// The lease a previous run persisted; `None` when absent or unreadable.
pub fn read_lease(state_dir: &Path) -> Option<Lease> {
    let text = std::fs::read_to_string(lease_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_lease(state_dir: &Path, lease: &Lease) -> Result<()> {
    runfiles::write_atomic(&lease_path(state_dir), lease)
}

/// `s` as an [`Ipv4Net`]; `None` for what no network is (a prefix over 32, which a
/// hand-edited or corrupt lease file can hold: serde does not check it).
pub fn to_net(s: Subnet) -> Option<Ipv4Net> {
    Ipv4Net::new(s.addr(), s.prefix()).ok()
}

pub fn to_subnet(n: Ipv4Net) -> Option<Subnet> {
    Subnet::new(n.network(), n.prefix_len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_impossible_lease_is_reported_as_it_is() {
        let dir = std::env::temp_dir().join(format!("meshd-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(LEASE_FILE),
            r#"{"subnet":{"addr":"10.244.1.0","prefix":33},"stamp":5}"#,
        )
        .unwrap();
        let cfg = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        let (request, logs) = crate::testlog::capture(tracing::Level::WARN, || request(&cfg));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(request.unwrap(), SubnetRequest::Auto));
        assert!(logs.contains("10.244.1.0/33"), "{logs}");
        assert!(!logs.contains("0.0.0.0/0"), "{logs}");
        assert!(logs.contains("not an IPv4 subnet"), "{logs}");
    }
}
