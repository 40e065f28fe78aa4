//! What the kernel gives this node and what it refuses: the data path's speed-ups ([`Tier`],
//! gathered in a [`TierReport`]) and the kernel's refusals ([`OsError`]).
//!
//! These are plain values on the lowest floor, because three places share them: the data path
//! fills the report when it opens its devices, the kernel fast path keeps its own refusals in
//! the same type, and the status document carries both to `meshd status`. Neither the kernel
//! code nor the status code needs to reach into the data path for them.
//!
//! Every tier is tried, and a refusal is a fallback, not an error: an old kernel gets a slower
//! meshd, not a broken one.

use serde::{Deserialize, Serialize};

/// Whether a speed-up is in use, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Tier {
    InUse(InUse),
    DisabledByConfig,
    Unavailable(Unavailable),
}

/// What a speed-up in use gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InUse {
    Yes,
    /// Multi-queue TUN with this many queues.
    Queues(usize),
    /// TUN offload with TCP segmentation only.
    Tso,
    /// TUN offload with TCP and UDP segmentation.
    TsoUso,
    /// UDP GSO with up to this many segments per send.
    Segments(usize),
    /// Each queue sends from a source port of its own: `ports` ports from `first` on;
    /// `steered` says how the receiving sockets share out datagrams ([`Steer`]), or is
    /// none where the kernel's hash does.
    Flows {
        ports: usize,
        first: u16,
        steered: Option<Steer>,
    },
}

/// How the data port's sockets (a queue each) share out the datagrams they receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Steer {
    /// By source port: a peer's flows, sent from consecutive ports, land on different queues.
    /// Cleartext, where nothing depends on the order across flows.
    SourcePort,
    /// By the peer's address: all of one peer's datagrams on one queue, read and decrypted in
    /// the order they came. WireGuard: its replay window (1,024 counters in boringtun) drops
    /// what two receiving threads racing on one peer's session would put further apart.
    PeerAddress,
}

/// Why a speed-up the configuration asked for is not in use. A later fallback compares these,
/// so they are values, not text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unavailable {
    /// The kernel refused to create the TUN device with the feature.
    DeviceRefused(OsError),
    /// The kernel refused to open another queue of the TUN device.
    ExtraQueueRefused(OsError),
    /// Only one queue is wanted (one CPU, or `queues = 1`).
    OneQueue,
    /// The kernel refused the socket option (`UDP_SEGMENT`, `UDP_GRO`).
    SocketOptionRefused(SocketOption),
    /// No source port of its own could be bound for every queue.
    BindRefused(OsError),
    /// The kernel refused the program that steers received WireGuard datagrams by peer
    /// address (`SO_ATTACH_REUSEPORT_CBPF`): one socket receives for every queue.
    SteeringRefused(OsError),
}

/// An error from the kernel: its errno, when there is one, and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsError {
    pub(crate) errno: Option<i32>,
    pub(crate) message: String,
}

impl From<&std::io::Error> for OsError {
    fn from(e: &std::io::Error) -> Self {
        OsError {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

impl OsError {
    /// A refusal with no errno, in words.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        OsError {
            errno: None,
            message: message.into(),
        }
    }

    /// `errno` with the C library's text, without Rust's ` (os error N)` suffix: what `ip`
    /// prints ("Operation not supported").
    pub(crate) fn from_errno(errno: i32) -> Self {
        let text = std::io::Error::from_raw_os_error(errno).to_string();
        let message = match text.strip_suffix(&format!(" (os error {errno})")) {
            Some(t) => t.to_string(),
            None => text,
        };
        OsError {
            errno: Some(errno),
            message,
        }
    }

    /// From an rtnetlink error: a netlink error code becomes the errno and its text.
    pub(crate) fn from_netlink(e: &rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(m) if m.raw_code() < 0 => {
                OsError::from_errno(-m.raw_code())
            }
            other => OsError::new(other.to_string()),
        }
    }
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A UDP socket option a speed-up needs, named as the kernel's headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketOption {
    #[serde(rename = "UDP_SEGMENT")]
    UdpSegment,
    #[serde(rename = "UDP_GRO")]
    UdpGro,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tier::InUse(InUse::Yes) => write!(f, "yes"),
            Tier::InUse(d) => write!(f, "yes ({d})"),
            Tier::DisabledByConfig => write!(f, "no (disabled by config)"),
            Tier::Unavailable(why) => write!(f, "no (unavailable: {why})"),
        }
    }
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Yes => write!(f, "yes"),
            InUse::Queues(n) => write!(f, "{n} queues"),
            InUse::Tso => write!(f, "TSO"),
            InUse::TsoUso => write!(f, "TSO + USO"),
            InUse::Segments(n) => write!(f, "up to {n} segments"),
            InUse::Flows {
                ports,
                first,
                steered,
            } => {
                write!(f, "{ports} source ports from {first}")?;
                match steered {
                    Some(Steer::SourcePort) => write!(f, ", received by source port"),
                    Some(Steer::PeerAddress) => write!(f, ", received by peer address"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::DeviceRefused(e) => write!(f, "{}", e.message),
            Unavailable::ExtraQueueRefused(e) => write!(f, "extra queue: {}", e.message),
            Unavailable::OneQueue => write!(f, "one CPU or `queues = 1`"),
            Unavailable::SocketOptionRefused(SocketOption::UdpSegment) => {
                write!(f, "UDP_SEGMENT refused")
            }
            Unavailable::SocketOptionRefused(SocketOption::UdpGro) => {
                write!(f, "UDP_GRO refused")
            }
            Unavailable::BindRefused(e) => write!(f, "binding a source port: {}", e.message),
            Unavailable::SteeringRefused(e) => write!(
                f,
                "steering by peer address refused: {}; one socket receives for all queues",
                e.message
            ),
        }
    }
}

/// Every speed-up of the userspace data path, as its devices were opened: what `meshd status`
/// prints under "tiers".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TierReport {
    pub multi_queue: Tier,
    pub tun_offload: Tier,
    pub udp_gso: Tier,
    pub udp_gro: Tier,
    /// Several UDP flows per peer: a source port per queue.
    pub udp_flows: Tier,
    pub queues: usize,
}
