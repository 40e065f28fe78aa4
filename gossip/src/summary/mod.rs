//! Path summaries: each node tells the cluster, in its own signed word, which path it uses to
//! each of its peers (how, how fast, how large, how well), so that any node can draw every pair
//! of the mesh and not only its own.
//!
//! A summary cannot ride in the node record: records are bounded at 512 bytes for older nodes
//! ([`crate::MAX_RECORD_LEN`]) and a summary holds one entry per peer. It travels on its own:
//! - **Signed chunks.** A summary is cut into chunks that each fit one datagram
//!   ([`Kind::Summary`](crate::wire::Kind::Summary)); each chunk carries the reporter's name, the
//!   summary's version, its index and the chunk count, and is signed by the reporter's signing
//!   key (ed25519, under a domain of its own, `codec.rs`). A receiver believes a chunk only
//!   under the key the reporter's name is bound to (`inbox.rs`), so a member can speak for no
//!   one but itself, and what it reports about others is shown as its word ([`Summary`]).
//! - **Only changes, rate-limited.** The daemon hands its current reports in as often as it
//!   likes ([`crate::Gossip::set_paths`]); a new version is made only when something an
//!   operator would see changed ([`PathReport::differs`]: a path, a health, a reason, an MTU,
//!   an RTT by half or more), and at most [`PUBLISH_BURST`] at once, then one per
//!   [`PUBLISH_EVERY`]. A change another member acts on at once (where the reporter observes a
//!   peer, from which the peer learns its NAT's mapping; a new relay port) goes out without
//!   waiting for that token: a few at once, then one a second (`publish.rs`).
//! - **Pushed once to each member, paced.** A new version goes to every live member, at most
//!   [`PUSH_RATE`] datagrams a second (a burst of [`PUSH_BURST`]); pulls answered come out of
//!   the same budget.
//! - **Pulled to repair.** A node pulls the summary of a live member it has none of (a joiner;
//!   a push lost), backing off to [`MAX_PULL_BACKOFF`] for a member that never answers (one
//!   older than summaries), and once a second asks one member, round-robin, whether its
//!   summary is newer than the one held ([`Kind::SummaryPull`](crate::wire::Kind::SummaryPull)
//!   carries the version held; the answer is empty unless it is).
//! - **Held while the reporter lives.** A summary is shown only while its reporter is alive
//!   or suspect here, and dropped at the next sweep once it is not.
//!
//! ## What it costs
//! An entry is the peer's name plus about 11 bytes, so a summary of `N` peers with 10-byte
//! names takes about `21·N` bytes, one datagram per ~45 peers. The whole picture is `N·(N−1)`
//! entries, held by every node (at most [`MAX_HELD_ENTRIES`], about 26 MB, enough for every pair
//! of 500 nodes; beyond it new summaries are refused and counted). One node's change costs
//! `N` pushes of its summary: `21·N²` bytes cluster-wide, 210 kB at 100 nodes. Every node
//! changing all the time costs each node `21·N²` bytes per [`PUBLISH_EVERY`] (21 kB/s at 100
//! nodes), and never more than [`PUSH_RATE`] datagrams a second (about 77 kB/s): past that
//! (some 190 nodes all changing at once) the picture is late, the network is not flooded. A
//! quiet cluster sends one small pull a second per node.

mod codec;
mod held;
mod publish;
mod spread;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub(crate) use spread::Summaries;

/// Most entries one summary carries: the rest of a larger node's peers are counted
/// ([`Summary::omitted`]), the worst first kept.
pub const MAX_ENTRIES: usize = 1024;
/// Most chunks one summary is cut into; a receiver refuses a summary announcing more.
pub const MAX_CHUNKS: u16 = 64;
/// Entries held from all reporters together: every pair of 500 nodes, some 26 MB at most.
pub const MAX_HELD_ENTRIES: usize = 500 * 500;
/// New versions made at once (a node's start: no peers, then peers, then their paths).
pub const PUBLISH_BURST: u32 = 3;
/// Then one new version per this, at most: the picture is for people, who look at it every few
/// seconds; a flapping peer costs one version per period, not one per flap.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// Summary datagrams (pushes and pull answers) sent per second at most: about 77 kB/s.
pub const PUSH_RATE: u64 = 64;
/// Summary datagrams that may leave at once: a 3-chunk summary to 85 members.
pub const PUSH_BURST: u64 = 256;
/// A member that does not answer pulls is asked again after at most this.
pub const MAX_PULL_BACKOFF: Duration = Duration::from_secs(64);

/// How a node sends a peer's packets (the engine; where they go is [`Route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathCode {
    /// Not known (an entry from a newer node with a kind this version lacks).
    Unknown,
    /// A kernel route via the peer's underlay address.
    HostGw,
    /// The kernel VXLAN device.
    KernelVxlan,
    /// The kernel WireGuard device.
    KernelWireguard,
    /// meshd's userspace data path.
    Userspace,
}

/// Where a node's packets to a peer go: straight to it, or through a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Not known (a newer node's kind).
    Unknown,
    /// To the peer's endpoint.
    Direct,
    /// To an endpoint learnt by hole punching.
    Punched,
    /// Through a relaying member.
    Relayed,
}

/// How a pair is doing, as the reporter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    /// Not known yet (no probe, no handshake so far).
    Unknown,
    /// Working on the best path it can have.
    Ok,
    /// Working, but on a fallback, or with a fault named by the reason.
    Degraded,
    /// Not working.
    Down,
}

/// Why a pair is not [`Health::Ok`], or not on a better path; one code per cause, so an entry
/// stays small (the reporter's own status has the sentence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing to say.
    None,
    /// A code this version does not know (a newer node's).
    Unknown,
    /// A better path is being probed.
    Probing,
    /// A better path lost its probes: the pair is on a fallback.
    ProbesLost,
    /// The path in use loses its probes and has no fallback.
    NoFallback,
    /// The WireGuard handshake has not completed.
    Handshake,
    /// The two nodes hold no cluster secret in common.
    NoSecret,
    /// The kernel refused the route the path needs.
    RouteRefused,
    /// A better path is ruled out (configuration, kernel, network segment).
    NotOffered,
    /// Paths cannot be probed on the reporter (no probe sockets).
    Unprobed,
    /// The reporter's gossip holds the peer suspect.
    Suspect,
}

/// One peer's path as its reporter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    /// The peer's node name.
    pub peer: String,
    /// How the reporter sends to it.
    pub path: PathCode,
    /// Where the reporter sends to it.
    pub route: Route,
    /// How the pair is doing.
    pub health: Health,
    /// Why, when that needs saying.
    pub reason: Reason,
    /// The round trip, when measured (microsecond resolution on the wire).
    pub rtt: Option<Duration>,
    /// The MTU of pod packets to it.
    pub mtu: u16,
    /// Where the peer's authenticated WireGuard traffic comes from, as the reporter sees it
    /// (behind a NAT: the peer's public mapping). The peer learns its public endpoints from
    /// these ([`crate::NodeRecord::learned`]); any other node may only add it as a candidate
    /// to try, never switch to it: authenticated traffic decides.
    pub observed: Option<SocketAddr>,
    /// Where the peer's gossip comes from, as the reporter sees it, when that is not the
    /// address its record names.
    pub observed_gossip: Option<SocketAddr>,
    /// The reporter relays between the peer and each of these members, at the port named
    /// (a per-pair relay port on the reporter's own address; at most [`MAX_RELAY_OFFERS`]).
    /// Only the two members of a pair use it, and only as a candidate to try: authenticated
    /// WireGuard traffic decides, and the relay can open none of it.
    pub relays: Vec<RelayOffer>,
}

/// Relay ports one entry carries, at most (more are left out by the encoder and the decoder).
pub const MAX_RELAY_OFFERS: usize = 8;

/// A relay port the reporter keeps for a pair: the entry's peer and `other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayOffer {
    /// The pair's other member.
    pub other: String,
    /// The UDP port on the reporter's address.
    pub port: u16,
}

impl PathReport {
    /// Whether an operator would see a difference between the two: anything but an RTT that
    /// moved by less than half (or less than a millisecond), which is jitter, not news.
    pub fn differs(&self, other: &PathReport) -> bool {
        let rtt = match (self.rtt, other.rtt) {
            (Some(a), Some(b)) => {
                let (lo, hi) = (a.min(b), a.max(b));
                hi - lo > (lo / 2).max(Duration::from_millis(1))
            }
            (a, b) => a.is_some() != b.is_some(),
        };
        rtt || (
            &self.peer,
            self.path,
            self.route,
            self.health,
            self.reason,
            self.mtu,
            self.observed,
            self.observed_gossip,
            &self.relays,
        ) != (
            &other.peer,
            other.path,
            other.route,
            other.health,
            other.reason,
            other.mtu,
            other.observed,
            other.observed_gossip,
            &other.relays,
        )
    }
}

/// A member's summary as this node holds it: its word about its peers.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    /// Who reported it (and signed it).
    pub reporter: &'a str,
    /// The reporter's version of it: grows with each change, and across its restarts.
    pub version: u64,
    /// When its last chunk arrived here.
    pub received: Instant,
    /// Its entries, by peer name.
    pub reports: &'a [PathReport],
    /// Peers the reporter has beyond [`MAX_ENTRIES`], left out.
    pub omitted: u32,
}

/// A summary's chunks as `reporter` sends them, each signed by `key` and at most `room` bytes
/// (the payloads of [`Kind::Summary`](crate::wire::Kind::Summary) datagrams): how a test or a
/// fuzz target speaks as a node.
pub fn encode_chunks(
    reporter: &str,
    version: u64,
    reports: &[PathReport],
    key: &crate::SigningKey,
    room: usize,
) -> Vec<Vec<u8>> {
    codec::encode(reporter, version, reports, 0, key, room).chunks
}

/// What a chunk says, if it decodes within its bounds and `key` signed it: its reporter,
/// version and entries. What a receiver checks before it takes a chunk, minus whose key that is.
pub fn verified_chunk(
    payload: &[u8],
    key: &[u8; crate::PUBLIC_KEY_LEN],
) -> Option<(String, u64, Vec<PathReport>)> {
    let p = codec::decode(payload).ok()?;
    p.verify(key)
        .then(|| (p.reporter().to_owned(), p.version(), p.reports().0))
}

macro_rules! codes {
    ($t:ident, $unknown:ident, $($v:ident = $n:literal, $s:literal;)*) => {
        impl $t {
            /// The wire number.
            pub fn code(self) -> u8 {
                match self { $t::$unknown => 0, $($t::$v => $n,)* }
            }
            /// The value of a wire number; one this version does not know is unknown.
            pub fn from_code(n: u8) -> Self {
                match n { $($n => $t::$v,)* _ => $t::$unknown }
            }
            /// How status, logs and the picture name it.
            pub fn as_str(self) -> &'static str {
                match self { $t::$unknown => "unknown", $($t::$v => $s,)* }
            }
        }
    };
}

codes!(PathCode, Unknown,
    HostGw = 1, "host-gw"; KernelVxlan = 2, "kernel-vxlan";
    KernelWireguard = 3, "kernel-wireguard"; Userspace = 4, "userspace";);
codes!(Route, Unknown, Direct = 1, "direct"; Punched = 2, "punched"; Relayed = 3, "relayed";);
codes!(Health, Unknown, Ok = 1, "ok"; Degraded = 2, "degraded"; Down = 3, "down";);

impl Reason {
    /// The wire number.
    pub fn code(self) -> u8 {
        REASONS.iter().position(|r| *r == self).unwrap_or(1) as u8
    }

    /// The value of a wire number; one this version does not know is [`Reason::Unknown`].
    pub fn from_code(n: u8) -> Self {
        REASONS
            .get(usize::from(n))
            .copied()
            .unwrap_or(Reason::Unknown)
    }

    /// How status, logs and the picture say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::Unknown => "a reason this meshd does not know",
            Reason::Probing => "probing a better path",
            Reason::ProbesLost => "probes lost on a better path",
            Reason::NoFallback => "probes lost, no fallback",
            Reason::Handshake => "handshake not completed",
            Reason::NoSecret => "no cluster secret in common",
            Reason::RouteRefused => "the kernel refused the route",
            Reason::NotOffered => "a better path is ruled out",
            Reason::Unprobed => "paths not probed",
            Reason::Suspect => "suspect in gossip",
        }
    }
}

/// Reasons by wire number: append only.
const REASONS: [Reason; 11] = [
    Reason::None,
    Reason::Unknown,
    Reason::Probing,
    Reason::ProbesLost,
    Reason::NoFallback,
    Reason::Handshake,
    Reason::NoSecret,
    Reason::RouteRefused,
    Reason::NotOffered,
    Reason::Unprobed,
    Reason::Suspect,
];
