//! Several UDP flows per peer: with more than one queue, each queue sends from a source port
//! of its own, chosen so that a receiver spreading datagrams by source port gives consecutive
//! flows consecutive queues, and the sockets on those ports are steered (see
//! [`super::socket::reuseport_program`]) so that replies to them reach the right RX worker.

use anyhow::{Context, Result};
use quinn_udp::{UdpSockRef, UdpSocketState};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use super::socket::{bind_group, steer, DataPort, QueueSocket};
use crate::config::{Config, Encryption};
use crate::tiers::{InUse, OsError, Steer, Tier, Unavailable};

/// Ports of consecutive flows are chosen from multiples of this (the least common multiple of
/// 1..=8, and meshd runs at most 8 queues): a receiver with N queues that takes datagrams by
/// source port modulo N gives consecutive flows consecutive queues, whatever its N.
const FLOW_PORT_STEP: u16 = 840;

/// Source ports a WireGuard node sends from at most, whatever its queue count: each is a group
/// with a member per queue, and each RX worker reads one member of every group.
pub(crate) const MAX_FLOW_PORTS: usize = 8;

/// What each queue sends from, what its RX worker reads besides the data port, and the tier.
pub(crate) type Senders = (
    Vec<Option<Arc<QueueSocket>>>,
    Vec<Vec<Arc<QueueSocket>>>,
    Tier,
);

/// Where each of `count` queues sends from, the source-port sockets each RX worker reads, and
/// the tier that says so. `refused`: the kernel refused to steer the WireGuard data port by
/// peer address (see [`super::device::UdpQueues`]), so one socket receives for all.
pub(crate) fn open_senders(
    cfg: &Config,
    bind: IpAddr,
    sockets: &[QueueSocket],
    count: usize,
    data_port: DataPort,
    refused: Option<OsError>,
) -> Result<Senders> {
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
    if let Some(e) = refused {
        // A peer answering our source ports would reach several RX workers.
        return none(Tier::Unavailable(Unavailable::SteeringRefused(e)));
    }
    if data_port == DataPort::SendOnly {
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
    let steered = match by {
        // Steered already, with the data port (`device::steer_sessions`).
        Steer::PeerAddress => Some(by),
        Steer::SourcePort => match steer(&sockets[0].0, ipv4, count, by) {
            Ok(()) => Some(by),
            Err(e) => {
                tracing::warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused: received flows spread by the kernel's hash");
                None
            }
        },
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
                // Its datagrams would spread by the kernel's hash, over several RX workers.
                tracing::warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused on a source port: every queue sends from the data port");
                return none(Tier::Unavailable(Unavailable::SteeringRefused(
                    OsError::from(&e),
                )));
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
