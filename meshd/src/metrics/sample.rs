//! One scrape's numbers, read from where the status reads them ([`Report`]): every peer's link
//! (counters, path cell, session), gossip's state and counters, the node's fixed facts. Reading
//! is what a status request does: the links' relaxed atomics, each path cell's lock and each
//! session's lock for a moment, gossip's lock once. Nothing on the packet path changes.
//!
//! Counters summed over peers must not fall when a peer leaves (Prometheus reads a fall as a
//! restart): [`Retired`] keeps what each link last showed, and adds a link's last values to the
//! node's totals when the link goes away.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::daemon::report::Report;
use crate::link::PeerLink;
use crate::paths::{PathKind, REASON_KINDS};
use crate::stats::{PeerStats, DROP_REASONS, KERNEL_COUNTED};
use crate::tiers::Tier;

/// Every path kind, in the order the series are written.
pub(crate) const PATH_KINDS: [PathKind; 4] = [
    PathKind::Userspace,
    PathKind::KernelVxlan,
    PathKind::KernelWireguard,
    PathKind::HostGw,
];

/// Bytes and packets each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Traffic {
    pub(crate) tx_bytes: u64,
    pub(crate) tx_packets: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) rx_packets: u64,
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.tx_bytes += o.tx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_packets += o.rx_packets;
    }
}

/// What one link's counters show: its userspace traffic, what the kernel carried for it (per
/// `paths::manager::COUNTED_PATHS`), and its drops by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) traffic: Traffic,
    pub(crate) kernel: [Traffic; KERNEL_COUNTED],
    pub(crate) drops: [u64; DROP_REASONS.len()],
}

impl Tally {
    pub(crate) fn of(stats: &PeerStats) -> Tally {
        let s = stats.snapshot();
        let mut drops = [0; DROP_REASONS.len()];
        for (i, r) in DROP_REASONS.iter().enumerate() {
            drops[i] = stats.dropped(*r);
        }
        let kernel = stats
            .kernel_counts()
            .map(|[tx_bytes, tx_packets, rx_bytes, rx_packets]| Traffic {
                tx_bytes,
                tx_packets,
                rx_bytes,
                rx_packets,
            });
        Tally {
            traffic: Traffic {
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
            },
            kernel,
            drops,
        }
    }

    fn add(&mut self, o: &Tally) {
        self.traffic.add(&o.traffic);
        for (a, b) in self.kernel.iter_mut().zip(&o.kernel) {
            a.add(b);
        }
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }
}

/// The last values of every link seen, and the sum of those that went away.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    seen: HashMap<String, (Weak<PeerLink>, Tally)>,
    gone: Tally,
}

impl Retired {
    /// Record this scrape's links (by name, and by object: a peer that left and came back has a
    /// new link whose counters start at zero); returns the total of links gone.
    fn update<'a>(&mut self, now: impl Iterator<Item = (&'a Arc<PeerLink>, Tally)>) -> Tally {
        let mut live: HashMap<String, (Weak<PeerLink>, Tally)> = HashMap::new();
        for (link, tally) in now {
            if let Some((old, last)) = self.seen.remove(&link.name) {
                if !old.ptr_eq(&Arc::downgrade(link)) {
                    self.gone.add(&last);
                }
            }
            live.insert(link.name.clone(), (Arc::downgrade(link), tally));
        }
        for (_, (_, last)) in self.seen.drain() {
            self.gone.add(&last);
        }
        self.seen = live;
        self.gone
    }
}

/// One peer's series, with `metrics-per-peer`.
#[derive(Debug, Clone)]
pub(crate) struct PeerSample {
    pub(crate) name: String,
    pub(crate) tally: Tally,
    /// The path traffic to it took (`None` until the path manager admits it).
    pub(crate) path: Option<PathKind>,
    pub(crate) handshake_age: Option<f64>,
}

/// Everything one scrape writes, but the kernel's counters (read apart: they need netlink).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) encryption: &'static str,
    /// (tier name, in use).
    pub(crate) tiers: Vec<(&'static str, bool)>,
    pub(crate) queues: u64,
    /// Members by state (alive, suspect, down, left), when gossip runs.
    pub(crate) members: Option<[u64; 4]>,
    /// Datagrams in and out; open, decode and send failures; when gossip runs.
    pub(crate) gossip: Option<([u64; 2], [u64; 3])>,
    /// Encrypted mode: cookie replies (the shared limiter's and every session's).
    pub(crate) cookie_replies: Option<u64>,
    /// Every link's counters now, plus those of links gone, plus drops no peer owns.
    pub(crate) tally: Tally,
    /// Peers by path kind ([`PATH_KINDS`] order), and by reason kind ([`REASON_KINDS`]).
    pub(crate) by_path: [u64; 4],
    pub(crate) by_reason: [u64; REASON_KINDS.len()],
    pub(crate) moves: u64,
    /// Encrypted mode: seconds since each session's handshake.
    pub(crate) handshake_ages: Option<Vec<f64>>,
    pub(crate) peers: Vec<PeerSample>,
}

/// Read `report`'s sources once.
pub(crate) fn gather(report: &Report, retired: &mut Retired, per_peer: bool) -> Sample {
    let routes = report.backend.routes();
    let table = routes.load();
    let base = &report.base;
    let t = &base.tiers;
    let mut s = Sample {
        encryption: if report.backend.crypto().is_some() {
            "wireguard"
        } else {
            "none"
        },
        tiers: vec![
            ("multi-queue", in_use(&t.multi_queue)),
            ("tun-offload", in_use(&t.tun_offload)),
            ("udp-gso", in_use(&t.udp_gso)),
            ("udp-gro", in_use(&t.udp_gro)),
            ("udp-flows", in_use(&t.udp_flows)),
        ],
        queues: t.queues as u64,
        ..Sample::default()
    };
    let mut ages = Vec::new();
    let mut cookies = 0;
    let mut tallies = Vec::with_capacity(table.peers().len());
    for p in table.peers() {
        let tally = Tally::of(&p.stats);
        tallies.push((&p.link, tally));
        s.tally.add(&tally);
        let (path, reason) = match p.path().as_ref() {
            Some(c) => (Some(c.path.current()), c.path.reason_kind()),
            None => (None, "probing"),
        };
        if let Some(i) = PATH_KINDS.iter().position(|k| Some(*k) == path) {
            s.by_path[i] += 1;
        }
        if let Some(i) = REASON_KINDS.iter().position(|k| *k == reason) {
            s.by_reason[i] += 1;
        }
        let mut age = None;
        if let Some(wg) = p.wg.as_deref() {
            let st = wg.lock().stats();
            cookies += st.cookie_replies_sent;
            age = st.last_handshake.map(|d| d.as_secs_f64());
            ages.extend(age);
        }
        if per_peer {
            s.peers.push(PeerSample {
                name: p.name.clone(),
                tally,
                path,
                handshake_age: age,
            });
        }
    }
    let gone = retired.update(tallies.into_iter());
    s.tally.add(&gone);
    s.tally.add(&Tally::of(&routes.unattributed));
    if let Some(c) = report.backend.crypto() {
        s.cookie_replies = Some(cookies + c.cookie_replies.load(Relaxed));
        s.handshake_ages = Some(ages);
    }
    s.moves = report
        .backend
        .paths()
        .map_or(0, |p| p.kernel_status().moves);
    if let Some(g) = &report.gossip {
        let g = g.lock().unwrap_or_else(|p| p.into_inner());
        let mut members = [0; 4];
        for m in g.gossip.members() {
            use meshd_gossip::MemberState as M;
            let i = match m.state {
                M::Alive => 0,
                M::Suspect => 1,
                M::Down => 2,
                M::Left => 3,
            };
            members[i] += 1;
        }
        let c = g.gossip.counters();
        s.members = Some(members);
        s.gossip = Some((
            [c.datagrams_in, c.datagrams_out],
            [g.open_failures, c.decode_failures, g.send_failures],
        ));
    }
    s
}

fn in_use(t: &Tier) -> bool {
    matches!(t, Tier::InUse(_))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::link::Local;
    use crate::peers::{Endpoint, EndpointSource, Peer};

    fn link(name: &str) -> Arc<PeerLink> {
        let local = Local {
            name: "me".into(),
            vni: 1,
            port: 8472,
        };
        let peer = Peer {
            name: name.into(),
            endpoints: vec![Endpoint {
                addr: "198.18.0.2:8472".parse().unwrap(),
                source: EndpointSource::Configured,
            }],
            subnet: "10.244.2.0/24".parse().unwrap(),
            key: None,
            kernel_vxlan: false,
        };
        Arc::new(PeerLink::new(&local, peer, None, 1450, 0))
    }

    fn tx(bytes: u64) -> Tally {
        let mut t = Tally::default();
        t.traffic.tx_bytes = bytes;
        t
    }

    /// The node's totals never fall: a link that goes, or is replaced under the same name,
    /// leaves its last values behind.
    #[test]
    fn totals_keep_what_departed_links_counted() {
        let mut r = Retired::default();
        let (a, b) = (link("a"), link("b"));
        assert_eq!(
            r.update([(&a, tx(10)), (&b, tx(5))].into_iter()),
            Tally::default()
        );
        assert_eq!(
            r.update([(&a, tx(12)), (&b, tx(7))].into_iter()),
            Tally::default()
        );
        // b leaves.
        assert_eq!(r.update([(&a, tx(20))].into_iter()).traffic.tx_bytes, 7);
        // a is replaced by a new link of the same name, counting from zero.
        let a2 = link("a");
        assert_eq!(r.update([(&a2, tx(1))].into_iter()).traffic.tx_bytes, 27);
        assert_eq!(r.update([(&a2, tx(3))].into_iter()).traffic.tx_bytes, 27);
        assert_eq!(r.seen.len(), 1);
    }

    #[test]
    fn a_tally_reads_the_links_counters() {
        let l = link("a");
        l.stats.tx(2, 300, 300);
        l.stats.rx(1, 100);
        l.stats
            .count_drop(crate::stats::DropReason::SpoofedSource, 4);
        let t = Tally::of(&l.stats);
        assert_eq!(
            t.traffic,
            Traffic {
                tx_bytes: 300,
                tx_packets: 2,
                rx_bytes: 100,
                rx_packets: 1
            }
        );
        let i = DROP_REASONS
            .iter()
            .position(|r| *r == crate::stats::DropReason::SpoofedSource)
            .unwrap();
        assert_eq!(t.drops[i], 4);
        assert_eq!(t.drops.iter().sum::<u64>(), 4);
    }
}
