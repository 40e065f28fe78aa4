//! Opening the TUN queues and UDP sockets, and finding out which speed-ups this kernel gives us.
//!
//! Every tier is tried, and a refusal is a fallback, not an error: an old kernel gets a slower
//! meshd, not a broken one. The outcome is a [`TierReport`] that `meshd status` prints.

use anyhow::{Context, Result};
use quinn_udp::{UdpSockRef, UdpSocketState};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::config::{Config, Encryption};

/// Whether a speed-up is in use, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Tier {
    InUse(InUse),
    DisabledByConfig,
    Unavailable(Unavailable),
}

impl Tier {
    pub fn in_use(&self) -> bool {
        matches!(self, Tier::InUse(_))
    }
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
    /// `steered` says how the receiving sockets share out datagrams (see [`steer`]), or is
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
}

/// An error from the kernel: its errno, when there is one, and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsError {
    pub errno: Option<i32>,
    pub message: String,
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
    pub fn new(message: impl Into<String>) -> Self {
        OsError {
            errno: None,
            message: message.into(),
        }
    }

    /// `errno` with the C library's text, without Rust's ` (os error N)` suffix: what `ip`
    /// prints ("Operation not supported").
    pub fn from_errno(errno: i32) -> Self {
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
    pub fn from_netlink(e: &rtnetlink::Error) -> Self {
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
        }
    }
}

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

/// Open the TUN queues and one UDP socket per queue, and report the tiers in use.
pub(crate) fn open(cfg: &Config, address: IpAddr) -> Result<(TunQueues, UdpQueues, TierReport)> {
    let tun = open_tun(cfg)?;
    let udp = open_udp(cfg, address, tun.queues.len())?;
    let tiers = TierReport {
        multi_queue: tun.multi_queue.clone(),
        tun_offload: tun.tun_offload.clone(),
        udp_gso: udp.udp_gso.clone(),
        udp_gro: udp.udp_gro.clone(),
        udp_flows: udp.udp_flows.clone(),
        queues: tun.queues.len(),
    };
    Ok((tun, udp, tiers))
}

/// The TUN queues, one per worker pair.
pub(crate) struct TunQueues {
    pub queues: Vec<SyncDevice>,
    pub multi_queue: Tier,
    pub tun_offload: Tier,
}

/// Open the TUN device `cfg.tun` with as many queues and as much offload as the kernel allows.
pub(crate) fn open_tun(cfg: &Config) -> Result<TunQueues> {
    let wanted = cfg.queue_count();
    let try_mq = cfg.tiers.multi_queue && wanted > 1;
    let try_offload = cfg.tiers.tun_offload;
    let mut last_err: Option<OsError> = None;
    // Most capable first; each step down gives up one feature.
    for (mq, offload) in [(true, true), (true, false), (false, true), (false, false)] {
        if (mq && !try_mq) || (offload && !try_offload) {
            continue;
        }
        match build(cfg, mq, offload) {
            Ok(dev) => {
                let offload_on = dev.tcp_gso();
                let mut queues = vec![dev];
                let mut mq_tier = if mq {
                    Tier::InUse(InUse::Yes)
                } else {
                    Tier::DisabledByConfig
                };
                if mq {
                    for _ in 1..wanted {
                        match queues[0].try_clone() {
                            Ok(q) => queues.push(q),
                            Err(e) => {
                                mq_tier =
                                    Tier::Unavailable(Unavailable::ExtraQueueRefused((&e).into()));
                                break;
                            }
                        }
                    }
                    if queues.len() > 1 {
                        mq_tier = Tier::InUse(InUse::Queues(queues.len()));
                    }
                } else if try_mq {
                    mq_tier = Tier::Unavailable(refused(&last_err));
                } else if cfg.tiers.multi_queue {
                    mq_tier = Tier::Unavailable(Unavailable::OneQueue);
                }
                let off_tier = if offload_on {
                    Tier::InUse(if queues[0].udp_gso() {
                        InUse::TsoUso
                    } else {
                        InUse::Tso
                    })
                } else if try_offload {
                    Tier::Unavailable(refused(&last_err))
                } else {
                    Tier::DisabledByConfig
                };
                for q in &queues {
                    q.set_nonblocking(true)
                        .context("setting the TUN queue non-blocking")?;
                }
                return Ok(TunQueues {
                    queues,
                    multi_queue: mq_tier,
                    tun_offload: off_tier,
                });
            }
            Err(e) => last_err = Some((&e).into()),
        }
    }
    Err(anyhow::anyhow!(
        "cannot create TUN device `{}`: {} (is /dev/net/tun present and are we root?)",
        cfg.tun,
        last_err.map(|e| e.message).unwrap_or_default()
    ))
}

/// The error of the last, more capable attempt that the kernel refused.
fn refused(last: &Option<OsError>) -> Unavailable {
    Unavailable::DeviceRefused(last.clone().unwrap_or_else(|| OsError {
        errno: None,
        message: "refused".into(),
    }))
}

fn build(cfg: &Config, multi_queue: bool, offload: bool) -> std::io::Result<SyncDevice> {
    DeviceBuilder::new()
        .name(cfg.tun.clone())
        .mtu(cfg.overlay_mtu())
        .tx_queue_len(cfg.tun_txqueuelen)
        .multi_queue(multi_queue)
        .offload(offload)
        .build_sync()
}

/// A UDP socket and quinn-udp's state for it (its GSO and GRO settings).
pub(crate) type QueueSocket = (UdpSocket, UdpSocketState);

/// The data path's UDP sockets: one per queue bound to the data port (VXLAN or WireGuard) with
/// SO_REUSEPORT, which receive, and where each queue sends from.
///
/// Several UDP flows per peer: with more than one queue, each queue sends from a port of its
/// own (`senders`), so one peer's inner flows (which the TUN device spreads over its queues by
/// flow hash) reach the receiver as several UDP flows: a NIC's RSS spreads them over cores, and
/// the receiving meshd over its queues. Peers that answer the latest source (wireguard-go, the
/// kernel's WireGuard) may answer on those ports, so RX workers read them too (`flows`).
/// Cleartext: a socket per source port, read by the queue that sends from it. WireGuard: a
/// reuseport group per source port with a member per queue, steered by peer address as the
/// data port is, so that whichever of our ports such a peer answers, all its datagrams reach
/// one RX worker (two would race on its session's replay window).
pub(crate) struct UdpQueues {
    pub sockets: Vec<QueueSocket>,
    /// Per queue, the socket it sends from when that is not its receiving socket.
    pub senders: Vec<Option<Arc<QueueSocket>>>,
    /// Per queue, the sockets on source ports its RX worker reads (at most
    /// [`MAX_FLOW_PORTS`]).
    pub flows: Vec<Vec<Arc<QueueSocket>>>,
    pub gso_segments: usize,
    pub gro: bool,
    pub udp_gso: Tier,
    pub udp_gro: Tier,
    pub udp_flows: Tier,
}

pub(crate) fn open_udp(cfg: &Config, bind: IpAddr, count: usize) -> Result<UdpQueues> {
    let port = cfg.data_port();
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let s = bind_socket(SocketAddr::new(bind, port), cfg.socket_buffer, true)
            .with_context(|| format!("binding UDP {bind}:{port}"))?;
        let state =
            UdpSocketState::new(UdpSockRef::from(&s)).context("configuring the UDP socket")?;
        sockets.push((s, state));
    }
    let kernel_gso = sockets[0].1.max_gso_segments();
    let kernel_gro = sockets[0].1.gro_segments() > 1;
    let (gso_segments, udp_gso) = match (cfg.tiers.udp_gso, kernel_gso > 1) {
        (false, _) => (1, Tier::DisabledByConfig),
        (true, false) => (
            1,
            Tier::Unavailable(Unavailable::SocketOptionRefused(SocketOption::UdpSegment)),
        ),
        (true, true) => (kernel_gso, Tier::InUse(InUse::Segments(kernel_gso))),
    };
    let (gro, udp_gro) = match (cfg.tiers.udp_gro, kernel_gro) {
        (false, _) => (false, Tier::DisabledByConfig),
        (true, false) => (
            false,
            Tier::Unavailable(Unavailable::SocketOptionRefused(SocketOption::UdpGro)),
        ),
        (true, true) => (true, Tier::InUse(InUse::Yes)),
    };
    let (senders, flows, udp_flows) = open_senders(cfg, bind, &sockets)?;
    let flow_sockets = flows.iter().flatten().map(|s| &**s);
    for (s, _) in sockets.iter().chain(flow_sockets) {
        if !gro {
            // quinn-udp turns GRO on when it can; turn it back off when config says so.
            set_udp_gro(s, false);
        }
    }
    Ok(UdpQueues {
        sockets,
        senders,
        flows,
        gso_segments,
        gro,
        udp_gso,
        udp_gro,
        udp_flows,
    })
}

/// Ports of consecutive flows are chosen from multiples of this (the least common multiple of
/// 1..=8, and meshd runs at most 8 queues): a receiver with N queues that takes datagrams by
/// source port modulo N gives consecutive flows consecutive queues, whatever its N.
const FLOW_PORT_STEP: u16 = 840;

/// Source ports a WireGuard node sends from at most, whatever its queue count: each is a group
/// with a member per queue, and each RX worker reads one member of every group.
pub const MAX_FLOW_PORTS: usize = 8;

/// What each queue sends from, what its RX worker reads besides the data port, and the tier.
type Senders = (
    Vec<Option<Arc<QueueSocket>>>,
    Vec<Vec<Arc<QueueSocket>>>,
    Tier,
);

/// Where each queue sends from, the source-port sockets each RX worker reads, and the tier that
/// says so.
fn open_senders(cfg: &Config, bind: IpAddr, sockets: &[QueueSocket]) -> Result<Senders> {
    let count = sockets.len();
    let none = |tier| {
        Ok((
            (0..count).map(|_| None).collect(),
            vec![Vec::new(); count],
            tier,
        ))
    };
    if !cfg.tiers.udp_flows {
        return none(Tier::DisabledByConfig);
    }
    if count < 2 {
        return none(Tier::Unavailable(Unavailable::OneQueue));
    }
    if cfg.data_port() == 0 {
        // A kernel device owns the data port: the queues' sockets have ports of their own
        // already, and receive nothing.
        let first = sockets[0].0.local_addr().map(|a| a.port()).unwrap_or(0);
        return none(Tier::InUse(InUse::Flows {
            ports: count,
            first,
            steered: None,
        }));
    }
    let by = match cfg.encryption {
        Encryption::None => Steer::SourcePort,
        Encryption::Wireguard => Steer::PeerAddress,
    };
    let ipv4 = bind.is_ipv4();
    let steered = match steer(&sockets[0].0, ipv4, count, by) {
        Ok(()) => Some(by),
        Err(e) => {
            tracing::warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused: received flows spread by the kernel's hash");
            None
        }
    };
    // Steered by peer address, a group of `count` per port (queue i sends from member i of
    // port i mod `ports` and its worker reads member i of each); else a socket per queue.
    let by_peer = steered == Some(Steer::PeerAddress);
    let (ports, members) = if by_peer {
        (count.min(MAX_FLOW_PORTS), count)
    } else {
        (count, 1)
    };
    let bound = match bind_flow_ports(bind, ports, members, cfg.socket_buffer) {
        Ok(b) => b,
        Err(e) => {
            let why = OsError::from(&e);
            return none(Tier::Unavailable(Unavailable::BindRefused(why)));
        }
    };
    let first = bound[0][0].local_addr().map(|a| a.port()).unwrap_or(0);
    let mut groups: Vec<Vec<Arc<QueueSocket>>> = Vec::with_capacity(ports);
    for group in bound {
        if by_peer {
            if let Err(e) = steer(&group[0], ipv4, members, by) {
                tracing::warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused on a source port: its datagrams spread by the kernel's hash");
            }
        }
        let mut g = Vec::with_capacity(members);
        for s in group {
            let state =
                UdpSocketState::new(UdpSockRef::from(&s)).context("configuring the UDP socket")?;
            g.push(Arc::new((s, state)));
        }
        groups.push(g);
    }
    let member = |i: usize| if by_peer { i } else { 0 };
    let senders = (0..count)
        .map(|i| Some(groups[i % ports][member(i)].clone()))
        .collect();
    let flows = (0..count)
        .map(|i| {
            if by_peer {
                groups.iter().map(|g| g[i].clone()).collect()
            } else {
                vec![groups[i][0].clone()]
            }
        })
        .collect();
    let tier = Tier::InUse(InUse::Flows {
        ports,
        first,
        steered,
    });
    Ok((senders, flows, tier))
}

/// `ports` consecutive ports from a multiple of [`FLOW_PORT_STEP`] in the kernel's ephemeral
/// range (trying each such start once, from one picked by the process and the clock), with
/// `members` sockets bound to each (a reuseport group when more than one); if none is free, on
/// ports the kernel picks.
fn bind_flow_ports(
    bind: IpAddr,
    ports: usize,
    members: usize,
    buffer: usize,
) -> std::io::Result<Vec<Vec<UdpSocket>>> {
    let (lo, hi) = ephemeral_range();
    let step = u32::from(FLOW_PORT_STEP);
    let starts: Vec<u32> = (lo.div_ceil(step)..)
        .map(|k| k * step)
        .take_while(|p| p + ports as u32 - 1 <= hi)
        .collect();
    if !starts.is_empty() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        let first = seed as usize % starts.len();
        for &start in starts[first..].iter().chain(&starts[..first]) {
            let bound: std::io::Result<Vec<_>> = (0..ports as u32)
                .map(|i| bind_group(SocketAddr::new(bind, (start + i) as u16), members, buffer))
                .collect();
            if let Ok(b) = bound {
                return Ok(b);
            }
        }
    }
    (0..ports)
        .map(|_| bind_group(SocketAddr::new(bind, 0), members, buffer))
        .collect()
}

/// `members` sockets on `addr` (port 0: one the kernel picks), with SO_REUSEPORT when more
/// than one. A group is only made on a port nobody holds: a plain bind tries it first, so
/// that no other process's reuseport socket (of the same user) is joined.
fn bind_group(addr: SocketAddr, members: usize, buffer: usize) -> std::io::Result<Vec<UdpSocket>> {
    let first = bind_socket(addr, buffer, false).map_err(io_error)?;
    if members == 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr()?;
    drop(first);
    (0..members)
        .map(|_| bind_socket(addr, buffer, true).map_err(io_error))
        .collect()
}

fn io_error(e: anyhow::Error) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(e) => e,
        Err(e) => std::io::Error::other(e.to_string()),
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), where flow ports go so
/// that no listening service's port is taken.
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(lo, hi)| lo <= hi && *hi <= 65535)
        .unwrap_or((32768, 60999))
}

/// A classic BPF program for the data port's SO_REUSEPORT group: a datagram goes to socket
/// number (its source port, or the low 32 bits of its source address, mod `count`). Senders
/// send consecutive flows from consecutive ports, so by port they land on different queues
/// (the kernel's default, a hash of the addresses and ports, puts two flows on one queue half
/// the time with two queues). Where the program's answer is not a socket, the kernel falls
/// back to its hash.
pub(crate) fn reuseport_program(ipv4: bool, count: usize, by: Steer) -> Vec<libc::sock_filter> {
    // Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
    const LD: u16 = 0x00;
    const LDX: u16 = 0x01;
    const ALU: u16 = 0x04;
    const RET: u16 = 0x06;
    const W: u16 = 0x00;
    const H: u16 = 0x08;
    const B: u16 = 0x10;
    const ABS: u16 = 0x20;
    const IND: u16 = 0x40;
    const MSH: u16 = 0xa0;
    const MOD: u16 = 0x90;
    const K: u16 = 0x00;
    const A: u16 = 0x10;
    // Offsets from SKF_NET_OFF reach the network header; the UDP header follows it.
    const NET: u32 = (-0x10_0000i32) as u32;
    let op = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut prog = match (by, ipv4) {
        (Steer::SourcePort, true) => vec![
            // X = IPv4 header length; A = the UDP source port after it.
            op(LDX | B | MSH, NET),
            op(LD | H | IND, NET),
        ],
        (Steer::SourcePort, false) => vec![op(LD | H | ABS, NET.wrapping_add(40))],
        // The IPv4 source address; the last word of the IPv6 one.
        (Steer::PeerAddress, true) => vec![op(LD | W | ABS, NET.wrapping_add(12))],
        (Steer::PeerAddress, false) => vec![op(LD | W | ABS, NET.wrapping_add(20))],
    };
    prog.push(op(ALU | MOD | K, count as u32));
    prog.push(op(RET | A, 0));
    prog
}

/// Attach [`reuseport_program`] to the group `socket` belongs to.
fn steer(socket: &UdpSocket, ipv4: bool, count: usize, by: Steer) -> std::io::Result<()> {
    let mut prog = reuseport_program(ipv4, count, by);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: a valid fd, and a sock_fprog pointing at `prog`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bind_socket(addr: SocketAddr, buffer: usize, reuse_port: bool) -> Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    // As root, force buffers past net.core.{r,w}mem_max: a userspace overlay that keeps the
    // 208 KiB default drops a datagram per burst and TCP pays with a retransmit.
    if s.set_recv_buffer_size_force(buffer).is_err() {
        let _ = s.set_recv_buffer_size(buffer);
    }
    if s.set_send_buffer_size_force(buffer).is_err() {
        let _ = s.set_send_buffer_size(buffer);
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_udp_gro(s: &UdpSocket, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: a valid fd and a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

trait ForceBuffers {
    fn set_recv_buffer_size_force(&self, n: usize) -> std::io::Result<()>;
    fn set_send_buffer_size_force(&self, n: usize) -> std::io::Result<()>;
}

impl ForceBuffers for Socket {
    fn set_recv_buffer_size_force(&self, n: usize) -> std::io::Result<()> {
        setsockopt_int(self.as_raw_fd(), libc::SO_RCVBUFFORCE, n)
    }
    fn set_send_buffer_size_force(&self, n: usize) -> std::io::Result<()> {
        setsockopt_int(self.as_raw_fd(), libc::SO_SNDBUFFORCE, n)
    }
}

fn setsockopt_int(fd: i32, opt: libc::c_int, n: usize) -> std::io::Result<()> {
    let v = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd and a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
