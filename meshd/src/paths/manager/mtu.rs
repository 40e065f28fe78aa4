//! Path-MTU discovery's part of the manager's tick: each peer's [`MtuSearch`] is told whether
//! the peer carried pod traffic since the last tick (probes, ours and the replies to the peer's,
//! are not pod traffic: [`crate::stats::PeerStats::pod_sent_bytes`]) and asks for probes only
//! while it does, which go out on the path the peer's pod packets take now (the TUN device, whose reader is
//! meshd's own data path, for the userspace path; the VXLAN device, the underlay link or the
//! WireGuard device for the kernel's), each beside a small one; what it finds goes to the
//! peer's link ([`PeerLink::set_mtu`]: the data path answers larger packets with DF set with
//! "fragmentation needed"), to its kernel route ([`super::converge`]: `mtu lock`) and to the
//! size of its path probes. A change is logged once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::step::underlay_macs;
use super::{Manager, Outstanding};
use crate::host::gateway;
use crate::kernel::probe::{Probe, Token};
use crate::link::PeerLink;
use crate::paths::cell::PathCell;
use crate::paths::{PathKind, SMALL_PROBE};
use crate::wire::MacAddr;

/// Where a probe leaves: the device, the MACs of its frame, and whether the device takes
/// bare IP packets (no link layer).
struct Target {
    ifindex: u32,
    dst_mac: MacAddr,
    src_mac: MacAddr,
    bare_ip: bool,
}

impl Manager {
    pub(super) async fn mtu_step(&mut self, now: Instant) {
        if self.s.mtu.is_none() || self.prober.is_none() {
            return;
        }
        let Some(own) = self.own else { return };
        let mut due: Vec<(Arc<PeerLink>, PathKind, u16)> = Vec::new();
        for link in self.links.values() {
            let mut cell = link.path();
            let Some(c) = cell.as_mut() else { continue };
            let current = c.path.current();
            let sent = link.stats.pod_sent_bytes();
            let busy = sent > c.mtu_tx;
            c.mtu_tx = sent;
            let Some(m) = c.mtu.as_mut() else { continue };
            if c.mtu_path != Some(current) {
                if c.mtu_path.is_some() {
                    m.restart(now);
                }
                c.mtu_path = Some(current);
            }
            if let Some(size) = m.poll(now, busy) {
                due.push((link.clone(), current, size));
            }
            apply(link, c);
        }
        if due.is_empty() {
            return;
        }
        let macs = match (
            due.iter().any(|(_, k, _)| *k == PathKind::HostGw),
            self.s.underlay_index,
        ) {
            (true, Some(i)) => underlay_macs(&self.s.host, i).await,
            _ => Vec::new(),
        };
        for (link, kind, size) in due {
            for s in [size, SMALL_PROBE] {
                if !self.send_mtu_probe(&link, kind, s, own, &macs) {
                    if let Some(m) = link.path().as_mut().and_then(|c| c.mtu.as_mut()) {
                        m.record(s, false, now);
                    }
                }
            }
        }
    }

    /// Sends one MTU probe of `size` bytes to `link` on path `kind`; false when it could not
    /// leave (no target, no token, the send failed).
    fn send_mtu_probe(
        &mut self,
        link: &Arc<PeerLink>,
        kind: PathKind,
        size: u16,
        own: ipnet::Ipv4Net,
        macs: &[(std::net::Ipv4Addr, MacAddr)],
    ) -> bool {
        let Some((target, subnet)) = link
            .path()
            .as_ref()
            .and_then(|c| Some((self.target(link, c, kind, macs)?, c.subnet)))
        else {
            return false;
        };
        let Ok(token) = Token::random() else {
            return false;
        };
        self.seq = self.seq.wrapping_add(1).max(1);
        let probe = Probe {
            ifindex: target.ifindex,
            dst_mac: target.dst_mac,
            src_mac: target.src_mac,
            src: gateway(own),
            dst: gateway(subnet),
            size,
            seq: self.seq,
            token,
            partial: false,
        };
        let at = Instant::now();
        let sent = match self.prober.as_mut() {
            Some(p) if target.bare_ip => p.send_ip(&probe),
            Some(p) => p.send(&probe),
            None => return false,
        };
        if let Err(e) = sent {
            tracing::debug!(peer = %link.name, path = %kind, size, error = %e, "MTU probe not sent");
            return false;
        }
        self.outstanding.insert(
            self.seq,
            Outstanding {
                link: link.clone(),
                kind,
                check: false,
                sent: at,
                size,
                token,
                mtu: true,
            },
        );
        true
    }

    /// Where probes of `link` on path `kind` leave.
    fn target(
        &self,
        link: &PeerLink,
        c: &PathCell,
        kind: PathKind,
        macs: &[(std::net::Ipv4Addr, MacAddr)],
    ) -> Option<Target> {
        let bare = |ifindex| Target {
            ifindex,
            dst_mac: MacAddr([0; 6]),
            src_mac: MacAddr([0; 6]),
            bare_ip: true,
        };
        match kind {
            PathKind::Userspace => self.tun_index.map(bare),
            PathKind::KernelWireguard => self.s.wireguard.as_ref().ok().map(|d| bare(d.index())),
            PathKind::KernelVxlan => self.s.vxlan.as_ref().ok().map(|d| Target {
                ifindex: d.index,
                dst_mac: link.mac,
                src_mac: d.mac,
                bare_ip: false,
            }),
            PathKind::HostGw => {
                let peer_mac = macs
                    .iter()
                    .find(|(ip, _)| Some(IpAddr::V4(*ip)) == c.address)
                    .map(|(_, m)| *m)?;
                Some(Target {
                    ifindex: self.s.underlay_index?,
                    dst_mac: peer_mac,
                    src_mac: self.s.underlay_mac?,
                    bare_ip: false,
                })
            }
        }
    }
}

/// What the search found reaches the link (the data path, the status), the size of the path
/// probes, and (by `routed_mtu` differing) the kernel route. Logged once per change.
fn apply(link: &PeerLink, c: &mut PathCell) {
    let Some(m) = c.mtu.as_mut() else { return };
    let Some(change) = m.take_change() else {
        return;
    };
    let (mtu, source) = (m.mtu(), m.source());
    link.set_mtu(mtu);
    c.path.set_probe_size(mtu);
    if change.black_hole {
        tracing::warn!(peer = %link.name, from = change.from, to = change.to, how = source.as_str(), "path MTU: packets of the MTU in use are lost while small ones pass (a black hole); lowered, searching");
    } else {
        tracing::info!(peer = %link.name, from = change.from, to = change.to, how = source.as_str(), "path MTU changed");
    }
}
