//! Counters the data path keeps per peer and per drop reason, and when each peer was last
//! heard from.
//!
//! Workers add to them once per batch run, with relaxed atomics: they are statistics, not
//! synchronisation.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Every reason the data path discards a packet. Each one is counted, never silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(usize)]
pub enum DropReason {
    /// A datagram from an underlay address that is not a peer.
    UnknownSource = 0,
    /// VXLAN header with another VNI.
    WrongVni,
    /// Truncated datagram or inner packet, VXLAN I flag clear, inconsistent inner header.
    Malformed,
    /// Inner frame is not IP (ARP, LLDP, ...).
    NotIp,
    /// Inner source address outside the sending peer's subnet.
    SpoofedSource,
    /// A packet from the TUN device to an address no peer owns.
    NoRoute,
    /// The UDP socket refused the datagram (buffer full, unreachable).
    SendError,
    /// The TUN device refused the packet.
    TunWriteError,
    /// A WireGuard data message that failed to authenticate.
    DecryptFailed,
    /// A replayed WireGuard data message or handshake initiation.
    Replayed,
    /// A handshake message refused: bad mac1, unknown initiator key, wrong preshared key
    /// (another cluster secret), or one this session did not expect.
    HandshakeRejected,
    /// A WireGuard message whose receiver index belongs to no session of ours.
    UnknownIndex,
    /// WireGuard data for a session that does not exist (any more), or a peer without a key.
    NoSession,
    /// A packet with DF set larger than its peer's path MTU: answered with an ICMP
    /// "fragmentation needed" carrying that MTU (`datapath::too_big`).
    TooBig,
}

pub(crate) const DROP_REASONS: [DropReason; 14] = [
    DropReason::UnknownSource,
    DropReason::WrongVni,
    DropReason::Malformed,
    DropReason::NotIp,
    DropReason::SpoofedSource,
    DropReason::NoRoute,
    DropReason::SendError,
    DropReason::TunWriteError,
    DropReason::DecryptFailed,
    DropReason::Replayed,
    DropReason::HandshakeRejected,
    DropReason::UnknownIndex,
    DropReason::NoSession,
    DropReason::TooBig,
];

impl DropReason {
    /// Why a WireGuard session refused a datagram, as a drop reason.
    pub(crate) fn from_session(e: meshd_crypto::SessionError) -> Self {
        use meshd_crypto::SessionError as E;
        match e {
            E::DecryptFailed => DropReason::DecryptFailed,
            E::Replayed | E::ReplayedHandshake => DropReason::Replayed,
            E::InvalidMac
            | E::WrongPeerKey
            | E::HandshakeFailed
            | E::UnexpectedMessage
            | E::UnderLoad => DropReason::HandshakeRejected,
            E::WrongIndex => DropReason::UnknownIndex,
            E::NoSession | E::Expired => DropReason::NoSession,
            E::Malformed | E::BufferTooSmall | E::IndexOutOfRange | E::Internal => {
                DropReason::Malformed
            }
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown-source",
            DropReason::WrongVni => "wrong-vni",
            DropReason::Malformed => "malformed",
            DropReason::NotIp => "not-ip",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::NoRoute => "no-route",
            DropReason::SendError => "send-error",
            DropReason::TunWriteError => "tun-write-error",
            DropReason::DecryptFailed => "decrypt-failed",
            DropReason::Replayed => "replayed",
            DropReason::HandshakeRejected => "handshake-rejected",
            DropReason::UnknownIndex => "unknown-index",
            DropReason::NoSession => "no-session",
            DropReason::TooBig => "too-big",
        }
    }
}

/// A coarse monotonic time in milliseconds: `CLOCK_MONOTONIC_COARSE`, which the vDSO answers
/// without a system call at the resolution of one scheduler tick (1 to 10 ms). Cheap enough
/// for an RX worker to read once per receive batch; never zero, so zero can mean "never".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Stamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own; the clock id is a constant.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        let ms = (ts.tv_sec as u64)
            .saturating_mul(1000)
            .saturating_add(ts.tv_nsec as u64 / 1_000_000);
        Stamp(ms.max(1))
    }

    /// How long before `now` this was (zero if it is not before).
    pub(crate) fn age(self, now: Stamp) -> Duration {
        Duration::from_millis(now.0.saturating_sub(self.0))
    }

    pub(crate) fn from_raw(ms: u64) -> Option<Stamp> {
        (ms != 0).then_some(Stamp(ms))
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default)]
pub struct PeerStats {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    /// Of `tx_bytes`, pod traffic: not nodes' probes and their replies
    /// ([`crate::kernel::probe::is_node_echo`]), which the userspace path carries too.
    pod_tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    /// When the last packet from the peer was delivered ([`Stamp`] ms, 0 for never). In
    /// encrypted mode only packets that authenticated are delivered, so this is evidence that
    /// the peer is alive (see `daemon::membership`).
    last_rx: AtomicU64,
    drops: [AtomicU64; DROP_REASONS.len()],
    /// Pod traffic the kernel carried to and from the peer, by kernel path (in the order of
    /// `paths::manager::COUNTED_PATHS`): tx bytes, tx packets, rx bytes, rx packets. meshd never
    /// sees those packets; the path manager adds what nftables counted every few seconds.
    kernel: [[AtomicU64; 4]; KERNEL_COUNTED],
}

/// How many kernel paths are counted per peer ([`PeerStats::kernel`]).
pub(crate) const KERNEL_COUNTED: usize = 2;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, serde::Deserialize)]
pub struct PeerStatsSnapshot {
    pub(crate) tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// (reason, count) for every reason with a non-zero count.
    pub drops: Vec<(String, u64)>,
}

impl PeerStats {
    /// `packets` of `bytes` sent on meshd's path, `pod_bytes` of them pod traffic.
    #[inline]
    pub(crate) fn tx(&self, packets: u64, bytes: u64, pod_bytes: u64) {
        self.tx_packets.fetch_add(packets, Relaxed);
        self.tx_bytes.fetch_add(bytes, Relaxed);
        if pod_bytes > 0 {
            self.pod_tx_bytes.fetch_add(pod_bytes, Relaxed);
        }
    }

    #[inline]
    pub(crate) fn rx(&self, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Relaxed);
        self.rx_bytes.fetch_add(bytes, Relaxed);
    }

    /// Packets from the peer were delivered in the batch read at `at`.
    #[inline]
    pub(crate) fn heard(&self, at: Stamp) {
        self.last_rx.store(at.0, Relaxed);
    }

    /// When a packet from the peer was last delivered.
    pub fn last_heard(&self) -> Option<Stamp> {
        Stamp::from_raw(self.last_rx.load(Relaxed))
    }

    #[inline]
    pub(crate) fn count_drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Relaxed);
    }

    /// `packets` of `bytes` the kernel carried on counted path `path`, received (`rx`) or
    /// sent.
    pub(crate) fn kernel(&self, path: usize, rx: bool, packets: u64, bytes: u64) {
        let Some(i) = (path < KERNEL_COUNTED).then_some(path) else {
            return;
        };
        let at = if rx { 2 } else { 0 };
        self.kernel[i][at].fetch_add(bytes, Relaxed);
        self.kernel[i][at + 1].fetch_add(packets, Relaxed);
    }

    /// What the kernel carried, per counted path: tx bytes, tx packets, rx bytes, rx packets.
    pub(crate) fn kernel_counts(&self) -> [[u64; 4]; KERNEL_COUNTED] {
        self.kernel
            .each_ref()
            .map(|k| k.each_ref().map(|c| c.load(Relaxed)))
    }

    /// Bytes of pod traffic sent to the peer on any path (meshd's and, as last counted, the
    /// kernel's, whose counters see only forwarded packets): nodes' probes and their replies
    /// left out.
    pub(crate) fn pod_sent_bytes(&self) -> u64 {
        let kernel: u64 = self.kernel.iter().map(|k| k[0].load(Relaxed)).sum();
        self.pod_tx_bytes.load(Relaxed) + kernel
    }

    pub(crate) fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    pub(crate) fn snapshot(&self) -> PeerStatsSnapshot {
        PeerStatsSnapshot {
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            drops: DROP_REASONS
                .iter()
                .map(|r| (r.as_str().to_string(), self.dropped(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// Drops counted locally during one batch and flushed once, so a burst of garbage costs one
/// atomic add per reason rather than one per datagram.
#[derive(Debug, Default)]
pub struct DropTally([u64; DROP_REASONS.len()]);

impl DropTally {
    #[inline]
    pub(crate) fn add(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    pub(crate) fn add_n(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
    }

    pub(crate) fn flush_into(&mut self, stats: &PeerStats) {
        for (i, n) in self.0.iter_mut().enumerate() {
            if *n > 0 {
                stats.drops[i].fetch_add(*n, Relaxed);
                *n = 0;
            }
        }
    }
}
