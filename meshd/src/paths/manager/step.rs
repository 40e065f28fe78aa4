//! One tick of the manager: collect probe replies, expire what went unanswered, send the
//! probes that are due, apply the moves the evidence calls for, bring the kernel in step
//! ([`super::converge`]), and drop what a previous meshd left for peers that never came back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{lock, Manager, Outstanding, PROBE_TIMEOUT};
use crate::host::gateway;
use crate::kernel::probe::{Probe, Token};
use crate::kernel::{routes, vxlan};
use crate::link::PeerLink;
use crate::paths::mtud::MTU_PROBE_TIMEOUT;
use crate::paths::{probe_interval, PathKind, SMALL_PROBE};
use crate::wire::MacAddr;

impl Manager {
    pub(super) async fn step(&mut self) {
        let now = Instant::now();
        self.collect(now);
        self.expire(now);
        self.send_due(now).await;
        self.mtu_step(now).await;
        let mut moved = 0;
        for link in self.links.values() {
            let mut cell = link.path();
            let Some(c) = cell.as_mut() else { continue };
            if let Some(m) = c.path.decide(now) {
                moved += 1;
                // The round trip measured was the old path's.
                c.rtt = None;
                let why = c.path.reason(now).unwrap_or_default();
                if m.demotion || m.to > m.from {
                    tracing::warn!(peer = %link.name, from = %m.from, to = %m.to, reason = %why, "path demoted");
                } else {
                    tracing::warn!(peer = %link.name, from = %m.from, to = %m.to, "path promoted");
                }
            }
        }
        if moved > 0 {
            self.moves += moved;
            lock(&self.paths.kernel).moves = self.moves;
        }
        self.checksums();
        self.verify_routes(now).await;
        self.route_all().await;
        self.retry_failed(now).await;
        if now >= self.grace_until {
            self.drop_leftovers().await;
        }
        self.tend_table(now);
    }

    /// Replies to outstanding probes. One counts only from the probed peer's bridge address and
    /// with the probe's token; anything else (a forgery, a late reply to a probe already given
    /// up) leaves the probe waiting, so a forged reply can neither pass nor fail it.
    fn collect(&mut self, now: Instant) {
        let Some(prober) = &mut self.prober else {
            return;
        };
        let mut replies = Vec::new();
        prober.replies(&mut replies);
        for (r, arrived) in replies {
            let genuine = self.outstanding.get(&r.seq).is_some_and(|o| {
                o.token == r.token
                    && o.link
                        .path()
                        .as_ref()
                        .is_some_and(|c| r.src == gateway(c.subnet))
            });
            if !genuine {
                tracing::debug!(src = %r.src, seq = r.seq, "an echo reply that answers no probe of ours: ignored");
                continue;
            }
            if let Some(o) = self.outstanding.remove(&r.seq) {
                if o.check {
                    Self::record_check(&o.link, true);
                    continue;
                }
                let rtt = arrived.saturating_duration_since(o.sent);
                self.paths.probe_rtt.observe(rtt);
                if let Some(c) = o.link.path().as_mut() {
                    if o.mtu {
                        if let Some(m) = c.mtu.as_mut() {
                            m.record(o.size, true, now);
                        }
                        continue;
                    }
                    c.path.record_probe(o.kind, o.size, true, now);
                    if o.kind == c.path.current() {
                        // Smoothed as TCP's SRTT is (RFC 6298, α = 1/8): one slow reply on a
                        // busy node is not news.
                        c.rtt = Some(c.rtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                    }
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let mut late: Vec<(bool, u16)> = self
            .outstanding
            .iter()
            .filter(|(_, o)| {
                let timeout = if o.mtu {
                    MTU_PROBE_TIMEOUT
                } else {
                    PROBE_TIMEOUT
                };
                now.saturating_duration_since(o.sent) >= timeout
            })
            .map(|(seq, o)| (o.check, *seq))
            .collect();
        // The path's own probes first: a check lost says something only while they pass.
        late.sort_unstable();
        for (_, seq) in late {
            let Some(o) = self.outstanding.remove(&seq) else {
                continue;
            };
            if o.check {
                Self::record_check(&o.link, false);
            } else if let Some(c) = o.link.path().as_mut() {
                match (o.mtu, c.mtu.as_mut()) {
                    (true, Some(m)) => m.record(o.size, false, now),
                    (true, None) => {}
                    (false, _) => c.path.record_probe(o.kind, o.size, false, now),
                }
            }
        }
    }

    async fn send_due(&mut self, now: Instant) {
        let Some(own) = self.own else { return };
        if self.prober.is_none() {
            return;
        }
        let due: Vec<Arc<PeerLink>> = self
            .links
            .values()
            .filter(|l| l.path().as_ref().is_some_and(|c| c.next_probe <= now))
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        let wants_host_gw = due.iter().any(|l| {
            l.path()
                .as_ref()
                .is_some_and(|c| c.path.probed().any(|k| k == PathKind::HostGw))
        });
        let macs = match (wants_host_gw, self.s.underlay_index) {
            (true, Some(i)) => underlay_macs(&self.s.host, i).await,
            _ => Vec::new(),
        };
        let per_round = self
            .links
            .values()
            .map(|l| l.path().as_ref().map_or(0, |c| c.path.probed().count()))
            .sum();
        let checks = self.checks_possible();
        for link in due {
            let mut cell = link.path();
            let Some(c) = cell.as_mut() else { continue };
            c.next_probe = now + probe_interval(per_round);
            // Each path's probe, and beside the kernel VXLAN one a receiver check when due.
            let mut kinds: Vec<(PathKind, bool)> = Vec::new();
            for kind in c.path.probed() {
                kinds.push((kind, false));
            }
            let vxlan = kinds.iter().any(|(k, _)| *k == PathKind::KernelVxlan);
            if vxlan && checks && c.path.receiver_mut().is_some_and(|r| r.due()) {
                kinds.push((PathKind::KernelVxlan, true));
            }
            for (kind, check) in kinds {
                let target = match kind {
                    PathKind::KernelVxlan => match &self.s.vxlan {
                        Ok(dev) => Some((dev.index, link.mac, dev.mac)),
                        Err(_) => None,
                    },
                    PathKind::HostGw => {
                        let peer_mac = macs
                            .iter()
                            .find(|(ip, _)| Some(IpAddr::V4(*ip)) == c.address)
                            .map(|(_, m)| *m);
                        match (peer_mac, self.s.underlay_index, self.s.underlay_mac) {
                            (Some(pm), Some(i), Some(own_mac)) => Some((i, pm, own_mac)),
                            _ => {
                                // Not resolved (yet): make the kernel ask, and count a loss.
                                if let (Some(p), Some(IpAddr::V4(a))) =
                                    (&mut self.prober, c.address)
                                {
                                    let _ = p.nudge(a);
                                }
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let Some((ifindex, dst_mac, src_mac)) = target else {
                    if !check {
                        c.path.record(kind, false, now);
                    }
                    continue;
                };
                let token = match Token::random() {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "no random bytes for a probe's token: probe not sent");
                        continue;
                    }
                };
                self.seq = self.seq.wrapping_add(1).max(1);
                let size = if check {
                    SMALL_PROBE
                } else {
                    c.path.probe_size(kind)
                };
                let probe = Probe {
                    ifindex,
                    dst_mac,
                    src_mac,
                    src: gateway(own),
                    dst: gateway(c.subnet),
                    size,
                    seq: self.seq,
                    token,
                    partial: check,
                };
                // Timed at the send itself, not the tick: the round trip is what probes measure.
                let at = Instant::now();
                let sent = self.prober.as_mut().map(|p| p.send(&probe));
                match sent {
                    Some(Ok(())) => {
                        let o = Outstanding {
                            link: link.clone(),
                            kind,
                            check,
                            sent: at,
                            size,
                            token,
                            mtu: false,
                        };
                        self.outstanding.insert(self.seq, o);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(peer = %link.name, path = %kind, check, error = %e, "probe not sent");
                        if !check {
                            c.path.record_probe(kind, size, false, now);
                        }
                    }
                    None => {}
                }
            }
        }
    }

    /// Routes and entries for peers no longer known, once the grace after start is over.
    async fn drop_leftovers(&mut self) {
        if !self.leftovers_checked {
            // The grace is over: the source checks a previous meshd left for peers that did
            // not come back go too.
            self.sync_table(Instant::now());
        }
        for (subnet, _) in std::mem::take(&mut self.adopted_routes) {
            tracing::info!(%subnet, "removing a route a previous meshd left for a peer that is gone");
            let _ = routes::remove(&self.s.host, subnet).await;
        }
        if self.leftovers_checked {
            return;
        }
        self.leftovers_checked = true;
        let Ok(dev) = &self.s.vxlan else { return };
        let Ok(found) = vxlan::entries(&self.s.host, dev.index).await else {
            return;
        };
        let known: std::collections::HashSet<MacAddr> =
            self.links.values().map(|l| l.mac).collect();
        for (mac, _) in &found.fdb {
            if !known.contains(mac) {
                let vtep = found
                    .neighbours
                    .iter()
                    .find(|(_, m)| m == mac)
                    .map(|(ip, _)| *ip);
                if let Some(vtep) = vtep {
                    vxlan::remove_peer(&self.s.host, dev.index, *mac, vtep).await;
                }
            }
        }
    }
}

/// Resolved neighbours on the underlay link: (address, MAC).
pub(super) async fn underlay_macs(
    host: &crate::host::Host,
    index: u32,
) -> Vec<(std::net::Ipv4Addr, MacAddr)> {
    use futures::TryStreamExt;
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
    let mut out = Vec::new();
    let mut dump = host.handle().neighbours().get().execute();
    while let Ok(Some(n)) = dump.try_next().await {
        if n.header.ifindex != index
            || matches!(
                n.header.state,
                NeighbourState::Failed | NeighbourState::Incomplete
            )
        {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
                NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_slice(l),
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push((ip, mac));
        }
    }
    out
}
