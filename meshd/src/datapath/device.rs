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
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::config::Config;

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

/// One UDP socket per queue, all bound to the data port (VXLAN or WireGuard) with SO_REUSEPORT so the kernel spreads
/// flows across them.
pub(crate) struct UdpQueues {
    pub sockets: Vec<(UdpSocket, UdpSocketState)>,
    pub gso_segments: usize,
    pub gro: bool,
    pub udp_gso: Tier,
    pub udp_gro: Tier,
}

pub(crate) fn open_udp(cfg: &Config, bind: IpAddr, count: usize) -> Result<UdpQueues> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let port = cfg.data_port();
        let s = bind_socket(SocketAddr::new(bind, port), cfg.socket_buffer)
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
    if !gro {
        for (s, _) in &sockets {
            // quinn-udp turns GRO on when it can; turn it back off when config says so.
            set_udp_gro(s, false);
        }
    }
    Ok(UdpQueues {
        sockets,
        gso_segments,
        gro,
        udp_gso,
        udp_gro,
    })
}

fn bind_socket(addr: SocketAddr, buffer: usize) -> Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
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
