//! The path manager's state for one peer, kept on the peer's link
//! ([`crate::link::PeerLink`]) so that the status reads it where it lives: the path decision
//! ([`PeerPath`]), the kernel entries made for the peer and the route as the kernel has it.
//! Only the path manager writes it.

use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use super::mtud::MtuSearch;
use super::{PathKind, PeerPath};
use crate::status::{PathStatus, ProbeStatus};

/// One peer's path, and the kernel objects made for it.
#[derive(Debug, Clone)]
pub(crate) struct PathCell {
    pub(crate) path: PeerPath,
    /// The underlay address its kernel entries point at (FDB, host-gw gateway).
    pub(crate) address: Option<IpAddr>,
    /// The subnet its route is for.
    pub(crate) subnet: Ipv4Net,
    /// Its VTEP address on the VXLAN device (its subnet's first address).
    pub(crate) vtep: Ipv4Addr,
    pub(crate) next_probe: Instant,
    /// The path the kernel has its route for, as last set or verified (`None`: no per-peer
    /// route, the cluster route carries it to the TUN device).
    pub(crate) routed: Option<PathKind>,
    /// The kernel's last refusal of its route, retried from `retry_at`.
    pub(crate) route_error: Option<String>,
    /// Its FDB and neighbour entries on the VXLAN device are in place (or not needed).
    pub(crate) entries: bool,
    /// When a failed route or entry is tried again.
    pub(crate) retry_at: Instant,
    /// The round trip of the last probe answered on the path in use (the picture, the path
    /// summary).
    pub(crate) rtt: Option<Duration>,
    /// Its path-MTU search (`None` with `path-mtu-discovery = false`).
    pub(crate) mtu: Option<MtuSearch>,
    /// The path the search measures: a move starts it over.
    pub(crate) mtu_path: Option<PathKind>,
    /// The peer's pod bytes sent as last seen, so the search knows whether it is busy.
    pub(crate) mtu_tx: u64,
    /// The MTU its kernel route carries, as last set (`None`: the device's).
    pub(crate) routed_mtu: Option<u16>,
}

impl PathCell {
    pub(crate) fn new(
        path: PeerPath,
        address: Option<IpAddr>,
        subnet: Ipv4Net,
        now: Instant,
    ) -> Self {
        PathCell {
            path,
            address,
            subnet,
            vtep: subnet.network(),
            next_probe: now,
            routed: None,
            route_error: None,
            entries: false,
            retry_at: now,
            rtt: None,
            mtu: None,
            mtu_path: None,
            mtu_tx: 0,
            routed_mtu: None,
        }
    }

    /// What `meshd status` shows of it.
    pub(crate) fn status(&self, now: Instant) -> PathStatus {
        PathStatus {
            path: self.path.current().to_string(),
            reason: self.path.reason(now),
            since_secs: SystemTime::now()
                .duration_since(self.path.since_wall())
                .map(|d| d.as_secs())
                .unwrap_or(0),
            moves: self.path.moves(),
            probes: self
                .path
                .probe_counts()
                .into_iter()
                .map(|(k, sent, lost, failing)| ProbeStatus {
                    path: k.to_string(),
                    sent,
                    lost,
                    failing,
                })
                .collect(),
            route_error: self.route_error.clone(),
            receives: self.path.receiver().map(|r| r.text()),
        }
    }
}
