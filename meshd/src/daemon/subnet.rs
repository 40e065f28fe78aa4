//! Where this node's pod subnet comes from (explicit in the config, the lease a previous run
//! persisted, or a new gossip lease), the lease file, and what a subnet means on the host: the
//! bridge holds its gateway address, the cluster route prefers it as the source, and
//! `network.json` tells the CNI plugin about it. Also what other nodes' subnets are checked
//! against ([`guard`]), and what a conflict over this node's subnet is logged as
//! ([`log_conflict`]).

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use meshd_gossip::{Lease, Pool, Subnet, SubnetConflict, SubnetRequest};
use netlink_packet_route::address::AddressAttribute;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::host::{self, Host};
use crate::peers::claims::Guard;
pub(crate) use crate::peers::claims::{to_net, to_subnet};
use crate::runfiles::{self, NetworkFile, LEASE_FILE};

/// Bridge address, cluster route and `network.json` for `subnet`. The TUN device must exist.
pub(crate) async fn apply(host: &Host, cfg: &Config, subnet: Ipv4Net) -> Result<()> {
    host.ensure_bridge(
        &cfg.bridge,
        &cfg.node_name,
        subnet,
        cfg.cluster_cidr,
        cfg.overlay_mtu(),
    )
    .await?;
    // After the bridge: the kernel takes only a local address as a preferred source (and drops
    // the route when a stale bridge address it preferred goes, which this replaces).
    host.route_cluster(&cfg.tun, cfg.cluster_cidr, Some(host::gateway(subnet)))
        .await?;
    network_file(cfg, subnet).write(&cfg.run_dir)
}

/// What `network.json` says of this node once `subnet` is on its bridge. Public so that the
/// test of the plugin's side of the file (`tests/e2e/contract.rs`) reads what meshd writes.
pub fn network_file(cfg: &Config, subnet: Ipv4Net) -> NetworkFile {
    NetworkFile {
        node: cfg.node_name.clone(),
        subnet: subnet.to_string(),
        gateway: host::gateway(subnet).to_string(),
        bridge: cfg.bridge.clone(),
        mtu: cfg.overlay_mtu(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        pid: std::process::id(),
    }
}

/// An explicit subnet, else the persisted lease (if it still fits the cluster), else auto.
/// A lease file that exists but cannot be read falls back on the bridge's subnet.
pub(crate) async fn request(cfg: &Config, host: &Host) -> Result<SubnetRequest> {
    if let Some(s) = cfg.subnet {
        return Ok(SubnetRequest::Explicit(to_subnet(s).context("subnet")?));
    }
    let path = lease_path(&cfg.state_dir);
    match read_lease(&path) {
        Ok(Some(l)) => match to_net(l.subnet) {
            Some(net) if cfg.cluster_cidr.contains(&net) => Ok(SubnetRequest::Persisted(l)),
            Some(net) => {
                tracing::warn!(subnet = %net, cluster_cidr = %cfg.cluster_cidr, "the persisted lease is outside cluster-cidr: ignored");
                Ok(SubnetRequest::Auto)
            }
            None => {
                tracing::error!(
                    lease = %l.subnet, path = %path.display(),
                    "the persisted lease is not an IPv4 subnet: ignored, the node takes a new one"
                );
                Ok(SubnetRequest::Auto)
            }
        },
        Ok(None) => Ok(SubnetRequest::Auto),
        Err(e) => Ok(bridge_claim(cfg, host, &path, &e).await),
    }
}

/// The claim when the lease file is unusable (empty, truncated, corrupt, unreadable): not the
/// same as no lease. The bridge a previous run left may carry pods of the subnet it held, and a
/// new pick would re-address it under them; so its subnet is claimed again when it is a node
/// subnet of this cluster. The file's stamp is lost with it: 0 ranks the claim as the oldest
/// picked one, as the subnet that pods already use most likely is. The next lease rewrites
/// the file.
async fn bridge_claim(
    cfg: &Config,
    host: &Host,
    path: &Path,
    error: &anyhow::Error,
) -> SubnetRequest {
    let on_bridge = match host.cluster_subnet_on(&cfg.bridge, cfg.cluster_cidr).await {
        Ok(s) => s.filter(|s| s.prefix_len() == cfg.node_prefix()),
        Err(e) => {
            tracing::warn!(bridge = %cfg.bridge, error = %format!("{e:#}"), "cannot read the bridge's address");
            None
        }
    };
    match on_bridge.and_then(to_subnet) {
        Some(subnet) => {
            tracing::error!(
                path = %path.display(), error = %format!("{error:#}"), subnet = %subnet,
                "the subnet lease file is unusable: keeping the subnet of the bridge, which pods may use; the file is rewritten with the lease"
            );
            SubnetRequest::Persisted(Lease { subnet, stamp: 0 })
        }
        None => {
            tracing::error!(
                path = %path.display(), error = %format!("{error:#}"), bridge = %cfg.bridge,
                "the subnet lease file is unusable and the bridge holds no node subnet of the cluster: taking a new subnet"
            );
            SubnetRequest::Auto
        }
    }
}

fn lease_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LEASE_FILE)
}

/// The lease a previous run persisted: `None` when there is no file, an error when there is
/// one that does not read as a lease.
pub(crate) fn read_lease(path: &Path) -> Result<Option<Lease>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading it"),
    };
    let lease: Lease =
        serde_json::from_str(&text).context("it is not a lease (empty, truncated or corrupt)")?;
    // serde builds the subnet field by field: check it is a network at all.
    let (addr, prefix) = (lease.subnet.addr(), lease.subnet.prefix());
    if Subnet::new(addr, prefix).is_none() {
        anyhow::bail!(
            "its subnet {addr}/{prefix} is not a network (prefix over 32 or host bits set)"
        );
    }
    Ok(Some(lease))
}

pub(crate) fn write_lease(state_dir: &Path, lease: &Lease) -> Result<()> {
    runfiles::write_atomic(&lease_path(state_dir), lease)
}

/// What every other node's subnet (a member's claim, a static peer's) is checked against on
/// this node: the cluster's pool, and the networks of the addresses on this node's interfaces
/// other than the pod bridge (whose network is this node's own subnet), with its underlay
/// address. Read at start: a network added later is not known (the kernel's own routes are
/// still never replaced, see [`crate::kernel::routes::set`]).
pub(crate) async fn guard(host: &Host, cfg: &Config) -> Guard {
    let pool = to_subnet(cfg.cluster_cidr).and_then(|c| Pool::new(c, cfg.node_prefix()).ok());
    let mut local: Vec<Ipv4Net> = cfg
        .address
        .and_then(|a| match a {
            IpAddr::V4(v4) => Ipv4Net::new(v4, 32).ok(),
            IpAddr::V6(_) => None,
        })
        .into_iter()
        .collect();
    match local_networks(host, &cfg.bridge).await {
        Ok(nets) => local.extend(nets),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list this node's addresses: subnets are checked against the cluster and the endpoints only")
        }
    }
    local.sort();
    local.dedup();
    let by_address = cfg.encryption == crate::config::Encryption::None;
    Guard {
        pool,
        local,
        by_address,
    }
}

/// The networks of the IPv4 addresses on every interface but `bridge`.
async fn local_networks(host: &Host, bridge: &str) -> Result<Vec<Ipv4Net>> {
    let skip = host.link(bridge).await?.map(|l| l.header.index);
    let mut addrs = host.handle().address().get().execute();
    let mut nets = Vec::new();
    while let Some(a) = addrs
        .try_next()
        .await
        .context("listing the host's addresses")?
    {
        if Some(a.header.index) == skip {
            continue;
        }
        let v4 = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Local(IpAddr::V4(v4)) | AddressAttribute::Address(IpAddr::V4(v4)) => {
                Some(*v4)
            }
            _ => None,
        });
        if let Some(net) = v4.and_then(|v4| Ipv4Net::new(v4, a.header.prefix_len).ok()) {
            nets.push(net.trunc());
        }
    }
    Ok(nets)
}

/// Logs a conflict over this node's subnet, as gossip settled it ([`meshd_gossip::Precedence`]).
pub(crate) fn log_conflict(c: &SubnetConflict) {
    let (ours, theirs, other, why) = (&c.subnet, &c.theirs, &c.other, &c.settled);
    match (c.reserved, c.won, c.explicit) {
        (true, false, true) => tracing::error!(
            subnet = %ours, static_subnet = %theirs, reserved_by = %other, reason = %why,
            "this node's configured subnet overlaps a static peer's subnet (a [[peers]] entry of node `reserved_by`): kept, but that node routes it to its static peer, not here; change one of the two"
        ),
        (true, false, false) => tracing::warn!(
            subnet = %ours, static_subnet = %theirs, reserved_by = %other, reason = %why,
            "this node's subnet overlaps a static peer's subnet (a [[peers]] entry of node `reserved_by`): taking another; pods on the old one need restarting"
        ),
        (true, true, _) => tracing::warn!(
            subnet = %ours, static_subnet = %theirs, reserved_by = %other, reason = %why,
            "a static peer's wider subnet (a [[peers]] entry of node `reserved_by`) covers this node's subnet: this node keeps it, and that node does not route its static peer until the two no longer overlap"
        ),
        (false, false, true) if c.kept => tracing::error!(
            subnet = %ours, theirs = %theirs, other = %other, reason = %why,
            "this node's configured subnet overlaps another node's claim, which wins: kept here, but the other nodes do not route it; change `subnet`"
        ),
        (false, won, true) => tracing::error!(
            subnet = %ours, theirs = %theirs, other = %other, kept = c.kept, won, reason = %why,
            "another node's claim overlaps this node's subnet, one of them configured"
        ),
        (false, won, false) => tracing::warn!(
            subnet = %ours, theirs = %theirs, other = %other, kept = c.kept, won, reason = %why,
            "subnet conflict"
        ),
    }
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (request, logs) = crate::testlog::capture(tracing::Level::WARN, || {
            rt.block_on(async {
                let host = Host::connect().unwrap();
                request(&cfg, &host).await
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(request.unwrap(), SubnetRequest::Auto));
        assert!(logs.contains("10.244.1.0/33"), "{logs}");
        assert!(!logs.contains("0.0.0.0/0"), "{logs}");
        assert!(logs.contains("is not a network"), "{logs}");
    }
}
