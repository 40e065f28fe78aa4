//! Opening the data path's devices: the TUN queues, with as many queues and as much offload as
//! the kernel gives, and a UDP socket per queue on the data port, with GSO and GRO where the
//! kernel has them and the source ports of [`super::flows`]. Each refusal is recorded as a
//! fallback ([`Tier`]) in the [`TierReport`] that `meshd status` prints, not raised as an error.

use anyhow::{Context, Result};
use quinn_udp::{UdpSockRef, UdpSocketState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tun_rs::{DeviceBuilder, SyncDevice};

use super::flows::open_senders;
use super::socket::{bind_socket, set_udp_gro, steer, DataPort, QueueSocket};
use crate::config::{Config, Encryption};
use crate::tiers::{InUse, OsError, SocketOption, Steer, Tier, TierReport, Unavailable};

/// Open the TUN queues and one UDP socket per queue, and report the tiers in use.
pub(crate) fn open(
    cfg: &Config,
    address: IpAddr,
    data_port: DataPort,
) -> Result<(TunQueues, UdpQueues, TierReport)> {
    let tun = open_tun(cfg)?;
    let udp = open_udp(cfg, address, tun.queues.len(), data_port)?;
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
    pub(crate) queues: Vec<SyncDevice>,
    pub(crate) multi_queue: Tier,
    pub(crate) tun_offload: Tier,
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

/// One attempt at the device, with or without multiple queues and offload.
fn build(cfg: &Config, multi_queue: bool, offload: bool) -> std::io::Result<SyncDevice> {
    DeviceBuilder::new()
        .name(cfg.tun.clone())
        .mtu(cfg.overlay_mtu())
        .tx_queue_len(cfg.tun_txqueuelen)
        .multi_queue(multi_queue)
        .offload(offload)
        .build_sync()
}

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
///
/// WireGuard holds that by construction: the data port's group is always steered by peer
/// address, whatever the flows tier, and where the kernel refuses the program, one socket
/// receives for every queue (`sockets` has one, which every queue shares; only the first queue
/// has an RX worker) and no source port of its own is opened. One thread then decrypts
/// everything, never two the same session.
pub(crate) struct UdpQueues {
    /// One per queue, or one for all (see above).
    pub(crate) sockets: Vec<QueueSocket>,
    /// Per queue, the socket it sends from when that is not its receiving socket.
    pub(crate) senders: Vec<Option<Arc<QueueSocket>>>,
    /// Per queue, the sockets on source ports its RX worker reads (at most
    /// [`super::flows::MAX_FLOW_PORTS`]).
    pub(crate) flows: Vec<Vec<Arc<QueueSocket>>>,
    pub(crate) gso_segments: usize,
    pub(crate) gro: bool,
    pub(crate) udp_gso: Tier,
    pub(crate) udp_gro: Tier,
    pub(crate) udp_flows: Tier,
}

/// WireGuard: steer the data port's group by peer address, so that one RX worker decrypts
/// each peer's session. Where the kernel refuses, keep one socket of the group for every
/// queue (the others close, and the kernel gives that one every datagram) and say why.
fn steer_sessions(
    cfg: &Config,
    bind: IpAddr,
    sockets: &mut Vec<QueueSocket>,
    data_port: DataPort,
) -> Option<OsError> {
    if cfg.encryption != Encryption::Wireguard || data_port != DataPort::Bind || sockets.len() < 2 {
        return None;
    }
    let e = steer(
        &sockets[0].0,
        bind.is_ipv4(),
        sockets.len(),
        Steer::PeerAddress,
    )
    .err()?;
    tracing::warn!(
        error = %e,
        "SO_ATTACH_REUSEPORT_CBPF refused: one socket receives for every queue, so that one thread decrypts each peer's session"
    );
    sockets.truncate(1);
    Some(OsError::from(&e))
}

/// Bind the data port once per queue (`count`) and each queue's source ports, and find out
/// which of GSO and GRO the kernel gives.
pub(crate) fn open_udp(
    cfg: &Config,
    bind: IpAddr,
    count: usize,
    data_port: DataPort,
) -> Result<UdpQueues> {
    let port = match data_port {
        DataPort::Bind => cfg.data_port(),
        // Port 0: each socket gets a port of its own from the kernel.
        DataPort::SendOnly => 0,
    };
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let s = bind_socket(SocketAddr::new(bind, port), cfg.socket_buffer, true)
            .with_context(|| format!("binding UDP {bind}:{port}"))?;
        let state =
            UdpSocketState::new(UdpSockRef::from(&s)).context("configuring the UDP socket")?;
        sockets.push((s, state));
    }
    let refused = steer_sessions(cfg, bind, &mut sockets, data_port);
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
    let (senders, flows, udp_flows) = open_senders(cfg, bind, &sockets, count, data_port, refused)?;
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
