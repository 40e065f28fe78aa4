//! Gossip configuration and the SWIM timing profiles.
//!
//! The [`Profile::Fast`] numbers come from the simulator (see `BENCHMARKS.md`): a dead node is
//! declared down everywhere in about two seconds at 1,000 nodes, where foca's stock LAN profile
//! ([`Profile::FocaLan`], kept as the baseline) takes 13–15 s.

use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::record::Subnet;
use crate::subnet::{Pool, PoolError};

/// SWIM timing preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Tuned for seconds-level failure detection on a LAN/datacenter underlay.
    Fast,
    /// foca's `Config::new_lan(cluster_size)`, unchanged: the comparison baseline.
    FocaLan,
}

/// Everything the gossip state machine needs to know besides the local node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Cluster CIDR the node subnets are cut from.
    pub cluster_cidr: Subnet,
    /// Prefix length of each node subnet.
    pub node_prefix: u8,
    /// How long a down (or departed) node's subnet stays reserved before others may claim it.
    pub reclaim_grace: Duration,
    /// How long a node without a subnet waits for the joiner's state sync before it picks one
    /// from what it knows (the first node of a cluster waits this long, too).
    pub claim_delay: Duration,
    /// Largest datagram handed to the daemon, before sealing. Leave room for the AEAD overhead
    /// and the IP/UDP headers under the underlay MTU.
    pub max_datagram: usize,
    /// SWIM timing preset.
    pub profile: Profile,
    /// Expected cluster size; sizes dissemination (and the stock profile's timeouts).
    pub expected_nodes: u32,
    /// How often suspicion is scanned for, pulls of missing records are sent and joins retried.
    pub tick: Duration,
    /// How recent data-path evidence ([`crate::Gossip::handle_evidence`]) must be to keep a
    /// member up against SWIM. 2 s: longer than any gap in a flow that is really running (a
    /// lossy path drops packets, not seconds of them), and about the [`Profile::Fast`]
    /// detection time, so a node that dies mid-flow is withdrawn at most that much later than
    /// one that dies idle. Zero turns evidence off.
    pub evidence_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_cidr: Subnet::DEFAULT_CLUSTER_CIDR,
            node_prefix: 24,
            reclaim_grace: Duration::from_secs(15 * 60),
            claim_delay: Duration::from_secs(3),
            max_datagram: 1200,
            profile: Profile::Fast,
            expected_nodes: 256,
            tick: Duration::from_millis(250),
            evidence_window: Duration::from_secs(2),
        }
    }
}

/// Why a configuration is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The node prefix does not fit the cluster CIDR.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The local node's record breaks a bound (name length, endpoint count, record size). The
    /// cause is in the message, so it is not also the `source()` (a chain would repeat it).
    #[error("local node record refused: {0}")]
    LocalNode(crate::record::RecordError),
    /// More reserved (static peer) subnets inside the cluster CIDR than a record carries.
    #[error(
        "{0} static peer subnets inside the cluster CIDR: a gossip record carries at most {max}",
        max = crate::record::MAX_RESERVED
    )]
    TooManyReserved(usize),
    /// `max_datagram` is too small to carry a SWIM packet and a record.
    #[error("max_datagram {0} is below the minimum of {MIN_DATAGRAM}")]
    DatagramTooSmall(usize),
}

/// Smallest `max_datagram` accepted: a full record plus SWIM headers must fit.
pub const MIN_DATAGRAM: usize = 768;

impl Config {
    pub(crate) fn pool(&self) -> Result<Pool, ConfigError> {
        if self.max_datagram < MIN_DATAGRAM {
            return Err(ConfigError::DatagramTooSmall(self.max_datagram));
        }
        Ok(Pool::new(self.cluster_cidr, self.node_prefix)?)
    }

    /// The foca configuration for this profile, with packets sized to `max_packet`.
    pub fn swim(&self, max_packet: usize) -> foca::Config {
        let size = NonZeroU32::new(self.expected_nodes.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut c = foca::Config::new_lan(size);
        c.max_packet_size = NonZeroUsize::new(max_packet).unwrap_or(NonZeroUsize::MIN);
        if self.profile == Profile::FocaLan {
            return c;
        }
        // Detection = wait to be probed (~1 period with every node probing) + the failed probe
        // cycle (1 period) + suspicion + dissemination of Down (a few gossip rounds). 300 ms
        // periods and 1 s of suspicion keep that near 2 s at 1,000 nodes.
        c.probe_period = Duration::from_millis(300);
        // Datacenter RTTs are sub-millisecond; 100 ms leaves room for a loaded host.
        c.probe_rtt = Duration::from_millis(100);
        // Five indirect probers make a false suspicion at 5 % loss ~2e-5 per probe.
        c.num_indirect_probes = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        c.suspect_to_down_after = Duration::from_millis(1200);
        c.max_transmissions =
            NonZeroU8::new(c.max_transmissions.get().saturating_add(2)).unwrap_or(NonZeroU8::MIN);
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(100),
            num_members: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::MIN,
        });
        // Talking to members we hold down is how two halves of a healed partition meet again.
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(2),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c.remove_down_after = Some(Duration::from_secs(3600));
        c.notify_down_members = true;
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn default_is_valid_and_fast_beats_stock() {
        let c = Config::default();
        assert_eq!(c.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(c.pool().unwrap().len(), 256);
        let fast = c.swim(1000);
        let stock = Config {
            profile: Profile::FocaLan,
            ..c.clone()
        }
        .swim(1000);
        assert!(fast.probe_period < stock.probe_period);
        assert!(fast.suspect_to_down_after < stock.suspect_to_down_after);
        assert!(fast.probe_rtt < fast.probe_period);
        let tiny = Config {
            max_datagram: 100,
            ..c
        };
        assert_eq!(tiny.pool(), Err(ConfigError::DatagramTooSmall(100)));
    }
}
