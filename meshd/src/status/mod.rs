//! The status API's types: one [`Status`] document, which the daemon gathers
//! (`daemon::report`), serves on a Unix socket under the run directory ([`server`]), and
//! `meshd status` fetches ([`query`]) and prints ([`render`]). The CNI plugin reads the
//! node's subnet from the companion file `network.json` ([`crate::runfiles`]), and connects to
//! the socket only to learn that meshd is alive: only a live meshd answers it.

mod egress;
pub mod graph;
pub mod health;
pub mod mesh;
pub mod reach;
mod render;
pub mod server;

pub use egress::{EgressStatus, MssStatus};
pub use mesh::{Mesh, SummaryStatus};
pub use render::render;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::stats::PeerStatsSnapshot;
use crate::tiers::TierReport;

pub(crate) use crate::runfiles::SOCKET_NAME;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub address: String,
    /// Where the address came from: configured, the route towards a seed, the default route.
    #[serde(default)]
    pub address_source: Option<String>,
    /// Where other members see this node from outside, when that is not `address` (behind a
    /// NAT): the endpoints its record advertises besides, and how its NAT maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<reach::PublicStatus>,
    /// The pairs this node relays (`relay`), with bytes each way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaying: Vec<reach::RelayPairStatus>,
    pub subnet: String,
    /// The cluster CIDR node subnets are cut from (`None` from a meshd before it was shown).
    #[serde(default)]
    pub cluster: Option<String>,
    pub vtep_mac: String,
    pub encryption: String,
    /// This node's WireGuard public key, in encrypted mode.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Cookie replies the shared handshake rate limiter sent (before a peer was identified).
    #[serde(default)]
    pub cookie_replies_sent: u64,
    /// Initiations refused (no peer's key) that were not remembered for a handshake later:
    /// their source was over its limit.
    #[serde(default)]
    pub refusals_over_source_limit: u64,
    pub mtu: u16,
    pub tiers: TierReport,
    pub peers: Vec<PeerStatus>,
    /// Drops that belong to no peer: datagrams from unknown sources, packets with no route.
    pub unattributed: PeerStatsSnapshot,
    /// Gossip members other than this node, when gossip runs.
    #[serde(default)]
    pub members: Option<Vec<MemberStatus>>,
    /// Gossip traffic and error counters, when gossip runs.
    #[serde(default)]
    pub gossip: Option<GossipCounters>,
    /// The cluster secrets held, primary first, when any is used.
    #[serde(default)]
    pub secrets: Option<Vec<SecretStatus>>,
    /// The kernel fast path: what this node could make, and what it adopted.
    #[serde(default)]
    pub kernel: Option<KernelStatus>,
    /// Egress masquerade and MSS clamping: on or off, why, and what they did.
    #[serde(default)]
    pub egress: Option<EgressStatus>,
    /// The userspace data path's queues: the port each sends from, and its datagrams.
    #[serde(default)]
    pub queues: Vec<QueueStatus>,
    /// Peers whose subnets this node refuses to route (a member's claim outside the cluster,
    /// on the underlay, or overlapping a subnet that wins), and why.
    #[serde(default)]
    pub refused: Vec<RefusedStatus>,
    /// Refusals since start: each new one, and each change of a standing one.
    #[serde(default)]
    pub refusals: u64,
}

/// A peer whose subnet this node does not route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusedStatus {
    /// The member's (or static peer's) name.
    pub name: String,
    /// `member` or `static peer`.
    pub source: String,
    /// The subnet it claims.
    pub subnet: String,
    /// Why it is not routed: the rule it breaks, or the peer whose subnet wins and why.
    pub reason: String,
}

/// One queue of the userspace data path (a TUN queue, its workers and sockets).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueStatus {
    pub source_port: u16,
    pub rx_datagrams: u64,
    pub tx_datagrams: u64,
    /// Of `tx_datagrams`, the answers an RX worker sent right after its TUN write.
    #[serde(default)]
    pub answered: u64,
}

/// What the kernel offers this node, found by trying.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelStatus {
    /// The configured `datapath`.
    pub datapath: String,
    /// The VXLAN device: in use (and how), unavailable (the kernel's words), or not used (why).
    pub vxlan: String,
    /// The WireGuard device, likewise.
    pub wireguard: String,
    /// host-gw: on or off.
    pub(crate) host_gw: String,
    /// Kernel objects a previous meshd left and this one kept.
    pub adopted: Vec<String>,
    /// Path moves of every peer since start.
    pub moves: u64,
}

/// The path a peer's packets take from this node, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathStatus {
    /// host-gw, kernel-vxlan, kernel-wireguard or userspace.
    pub path: String,
    /// Why not a better one; absent when it is the best this peer can have.
    pub reason: Option<String>,
    /// Seconds on this path.
    pub(crate) since_secs: u64,
    /// Moves between paths since this node learnt of the peer.
    pub moves: u64,
    /// Per probed path: probes sent and lost, and whether it is failing now.
    pub probes: Vec<ProbeStatus>,
    /// The kernel refused the route this path needs (its words); meshd retries it every
    /// second. Absent when the kernel has the route (or the path needs none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_error: Option<String>,
    /// Where the peer receives VXLAN (its kernel, userspace) and on what evidence, where that
    /// decides its path (a veth underlay: `paths::receiver`); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receives: Option<String>,
}

impl std::fmt::Display for PathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(why) => write!(f, "{}: {why}", self.path)?,
            None => f.write_str(&self.path)?,
        }
        match &self.route_error {
            Some(e) => write!(f, " (route not installed: {e}; retrying)"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub path: String,
    pub sent: u64,
    pub lost: u64,
    pub failing: bool,
}

/// One cluster secret of the node's keyring, by its public id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretStatus {
    pub id: String,
    /// Seals what this node sends (the primary).
    pub sealing: bool,
    /// Gossip datagrams it opened since it was loaded (`None` without gossip). A retired
    /// secret whose count stops growing is no longer used by any node.
    pub opened: Option<u64>,
}

/// One gossip member as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    /// alive, suspect, down or left.
    pub state: String,
    /// Seconds since this node saw it enter that state.
    pub(crate) since_secs: u64,
    /// Its gossip address.
    pub(crate) address: String,
    /// The subnet it claims, once it holds one.
    pub subnet: Option<String>,
    /// Gossip has it down (or its suspicion ran out), but its authenticated traffic arrived
    /// within the evidence window: it keeps its routes (state says suspect).
    #[serde(default)]
    pub held: bool,
    /// Milliseconds since the data path last heard from it (authenticated traffic, encrypted
    /// mode only), as last handed to gossip.
    #[serde(default)]
    pub(crate) heard_ms_ago: Option<u64>,
    /// The signing key its record was checked against (first 8 bytes, hex); `None` for a
    /// member older than signatures.
    #[serde(default)]
    pub signing_key: Option<String>,
}

/// Gossip datagrams in and out, and what was dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GossipCounters {
    pub datagrams_in: u64,
    pub(crate) datagrams_out: u64,
    /// Datagrams that did not open (wrong cluster secret, tampered, replayed, too old): never parsed.
    pub open_failures: u64,
    /// Opened datagrams the gossip codec refused.
    pub(crate) decode_failures: u64,
    pub(crate) send_failures: u64,
    /// Records refused (the sum of `refused`): decoded and authenticated by the cluster
    /// secret, but not believed.
    #[serde(default)]
    pub refused_records: u64,
    /// Refused records by reason.
    #[serde(default)]
    pub refused: RefusedRecords,
    /// State requests refused over the serve budget.
    #[serde(default)]
    pub state_requests_refused: u64,
    /// Datagrams dropped because gossip's transmit queue was full.
    #[serde(default)]
    pub transmits_dropped: u64,
    /// Path summary chunks taken from members, and refused (not signed by their reporter's
    /// key, from no live member, malformed, or over the bound on what is held).
    #[serde(default)]
    pub summary_chunks_in: u64,
    #[serde(default)]
    pub summary_chunks_refused: u64,
    /// Pulls of this node's summary not answered (not a member, too often, over the budget).
    #[serde(default)]
    pub summary_pulls_refused: u64,
}

/// Gossip records refused, by why (see `meshd_gossip::Refused`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusedRecords {
    /// Signed by another key than the one the name is bound to: a member speaking for another.
    pub impostor: u64,
    /// Unsigned, under a name already seen signed.
    pub unsigned: u64,
    /// The signature does not verify.
    pub bad_signature: u64,
    /// Not a valid node name.
    pub bad_name: u64,
    /// A generation implausibly far ahead.
    pub generation: u64,
    /// A new name while the name table was full.
    pub full: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub endpoint: String,
    pub subnet: String,
    pub vtep_mac: String,
    /// Where it can be reached, best first, each with where it was learnt
    /// (`198.18.0.2:51820 (advertised)`); `endpoint` is the one in use.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// The MTU of pod packets to it.
    #[serde(default)]
    pub mtu: u16,
    /// How that MTU was found: `probed`, `floor` (nothing above it passed), `unconfirmed` (no
    /// probe came back yet: the pod MTU, or what a previous meshd found) or `configured` (the
    /// pod MTU: discovery off).
    #[serde(default)]
    pub mtu_source: String,
    /// Seconds since a probe of that size last came back (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_confirmed_secs: Option<u64>,
    /// A search for it is under way (the MTU in use holds meanwhile).
    #[serde(default)]
    pub mtu_searching: bool,
    /// Why that MTU is not probed now, if it is not: `no traffic yet` or `no traffic lately`
    /// (discovery probes only peers that carry pod traffic; the MTU holds meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_idle: Option<String>,
    #[serde(flatten)]
    pub stats: PeerStatsSnapshot,
    /// The WireGuard session, in encrypted mode.
    #[serde(default)]
    pub wireguard: Option<WireguardStatus>,
    /// The path its packets take, and why.
    #[serde(default)]
    pub path: Option<PathStatus>,
    /// The round trip on that path, smoothed over its answered probes, in microseconds (absent
    /// while the path is not probed: the userspace floor is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// How it is reached: route, endpoint and how it was learned, NAT, flows, keepalives
    /// (encrypted mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reach: Option<reach::ReachStatus>,
}

/// One peer's WireGuard session, from `meshd_crypto::Session::stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WireguardStatus {
    pub public_key: String,
    /// Seconds since the current session's handshake; `None` without a session.
    pub last_handshake_secs: Option<f64>,
    pub handshakes: u64,
    pub(crate) rekeys: u64,
    pub decrypt_failures: u64,
    pub handshake_failures: u64,
    pub(crate) replays: u64,
    /// Cookie replies this session sent (the shared limiter's are counted on the node).
    pub(crate) cookie_replies_sent: u64,
    /// Round trip of the last handshake this node initiated (boringtun's, in ms).
    pub(crate) handshake_rtt_ms: Option<u32>,
    /// Round trip measured as the responder: from our handshake response to the initiator's
    /// first data (`meshd_crypto` `answer`), in µs; kept across rekeys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) responder_rtt_us: Option<u64>,
    /// Id of the cluster secret the pair's preshared key comes from.
    #[serde(default)]
    pub psk_secret: String,
    /// False when the peer holds none of our secrets: handshakes fail until that is fixed.
    #[serde(default)]
    pub psk_agreed: bool,
    /// Preshared key changes (cluster secret rotations) this session went through.
    #[serde(default)]
    pub psk_switches: u64,
    /// Traffic still rides the session under the previous preshared key: the handshake under
    /// the new one has not completed (the peer has not switched yet).
    #[serde(default)]
    pub psk_pending: bool,
    /// A session under the previous preshared key is still kept (for packets in flight).
    #[serde(default)]
    pub retiring: bool,
    /// Handshakes started because the peer sent on a session we no longer have.
    #[serde(default)]
    pub forced_handshakes: u64,
    /// Data on an unknown session from the peer's address that started no handshake: the
    /// session had authenticated the peer lately (a straggler, or forged).
    #[serde(default)]
    pub unknown_index_ignored: u64,
}

/// Ask the daemon whose run directory is `run_dir` for its status.
pub fn query(run_dir: &Path) -> Result<Status> {
    let path = run_dir.join(SOCKET_NAME);
    let mut stream = UnixStream::connect(&path)
        .with_context(|| format!("connecting to {} (is meshd running?)", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .context("reading the status")?;
    serde_json::from_str(&body).context("decoding the status")
}
