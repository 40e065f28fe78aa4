//! This node's underlay address: the configured one, else the address the kernel would send
//! from towards the first gossip seed, else towards the default route. The seed's name is
//! resolved as it is when joining (a docker-compose service name, a DNS name), retried for a
//! while because a seed that starts at the same moment may not resolve yet.
//!
//! Finding the source address sends nothing: a UDP socket `connect`ed to a destination only
//! asks the routing table which address it would use.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::config::{split_seed, Config};

/// How long the first seed's name may take to resolve before the default route is used.
/// A compose service name resolves once its container exists, normally within a second.
pub(crate) const SEED_RESOLVE_FOR: Duration = Duration::from_secs(10);
/// A destination behind the default route, used only to ask the routing table for a source
/// address: TEST-NET-1 (RFC 5737), never sent to.
const DEFAULT_ROUTE_PROBE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Where the underlay address came from, for the logs and `meshd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddressSource {
    Config,
    /// The source of the route towards this seed (`host:port` as configured).
    RouteToSeed(String),
    DefaultRoute,
}

impl fmt::Display for AddressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressSource::Config => write!(f, "configured"),
            AddressSource::RouteToSeed(seed) => write!(f, "from the route towards seed {seed}"),
            AddressSource::DefaultRoute => write!(f, "from the default route"),
        }
    }
}

/// The underlay address and where it came from.
pub(crate) async fn address(cfg: &Config) -> Result<(IpAddr, AddressSource)> {
    if let Some(a) = cfg.address {
        return Ok((a, AddressSource::Config));
    }
    if let Some(seed) = cfg.seeds.first() {
        if let Some(a) = via_seed(seed).await {
            return Ok((a, AddressSource::RouteToSeed(seed.clone())));
        }
    }
    match source_towards(SocketAddr::from((DEFAULT_ROUTE_PROBE, 9))) {
        Ok(a) => Ok((a, AddressSource::DefaultRoute)),
        Err(e) => bail!(
            "config key `address` is not set and cannot be worked out: no seed to route towards \
             and no default route ({e}); set `address` (--address, MESHD_ADDRESS)"
        ),
    }
}

/// The source address towards `seed`, resolving its name for up to [`SEED_RESOLVE_FOR`].
async fn via_seed(seed: &str) -> Option<IpAddr> {
    let (host, port) = split_seed(seed)?;
    let deadline = Instant::now() + SEED_RESOLVE_FOR;
    loop {
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                for a in addrs {
                    if let Ok(src) = source_towards(a) {
                        return Some(src);
                    }
                }
                tracing::warn!(%seed, "no route towards the first seed; trying the default route");
                return None;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(%seed, error = %e, "the first seed does not resolve; trying the default route");
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The address the kernel would send from towards `to`.
fn source_towards(to: SocketAddr) -> Result<IpAddr> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).context("opening a UDP socket")?;
    s.connect(to)
        .with_context(|| format!("routing towards {to}"))?;
    let ip = s.local_addr().context("reading the source address")?.ip();
    if ip.is_unspecified() {
        bail!("no source address towards {to}");
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn a_configured_address_wins_and_a_seed_on_loopback_gives_loopback() {
        let mut cfg = Config {
            address: Some("198.18.0.9".parse().unwrap()),
            ..Config::default()
        };
        assert_eq!(
            address(&cfg).await.unwrap(),
            ("198.18.0.9".parse().unwrap(), AddressSource::Config)
        );
        cfg.address = None;
        cfg.seeds = vec!["localhost:7946".into()];
        let (a, how) = address(&cfg).await.unwrap();
        assert!(a.is_loopback(), "{a}");
        assert_eq!(how, AddressSource::RouteToSeed("localhost:7946".into()));
        assert_eq!(
            how.to_string(),
            "from the route towards seed localhost:7946"
        );
    }
}
