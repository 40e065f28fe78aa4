//! One scrape's numbers as the Prometheus text format (0.0.4), through `prometheus-client`: a
//! [`Collector`] that writes the families of a [`Scrape`] and is registered for that scrape
//! alone. Families are written whether or not anything was counted yet, each with every label
//! value it can have (every path kind, drop reason, member state), so the set of series depends
//! on the node's configuration only, never on the cluster's size or on what happened; the
//! per-peer families (`metrics-per-peer`) are the one exception, one set per peer.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::sample::{Sample, Traffic, PATH_KINDS};
use super::{HistogramSnapshot, HttpSnapshot};
use crate::paths::manager::COUNTED_PATHS;
use crate::paths::{PathKind, REASON_KINDS};
use crate::stats::DROP_REASONS;

/// Everything one scrape writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    pub(crate) sample: Sample,
    /// Traffic the kernel carried, per path kind ([`PATH_KINDS`] order); `None` where no
    /// kernel device of that kind is in use.
    pub(crate) kernel: [Option<Traffic>; 4],
    pub(crate) probe_rtt: HistogramSnapshot,
    pub(crate) http: HttpSnapshot,
}

/// Upper bounds of the handshake age buckets, seconds: WireGuard re-keys every 2 minutes
/// (REKEY_AFTER_TIME) and gives a session up after 3 (REJECT_AFTER_TIME), so a healthy peer is
/// under 180 s and an idle one past it.
pub(crate) const HANDSHAKE_AGE_BUCKETS: [f64; 7] = [5.0, 30.0, 60.0, 120.0, 180.0, 300.0, 900.0];

/// The text of `scrape`.
pub(crate) fn text(scrape: Scrape) -> String {
    let mut registry = Registry::with_prefix("meshd");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail; the encoder's errors are formatting errors only.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

type R = Result<(), std::fmt::Error>;

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> R {
        let s = &self.sample;
        let version = env!("CARGO_PKG_VERSION");
        let labels = [("version", version), ("encryption", s.encryption)];
        gauges(
            &mut e,
            "build_info",
            "meshd's version and encryption mode (always 1)",
            None,
            [(labels, 1)],
        )?;
        let tiers = s
            .tiers
            .iter()
            .map(|(t, on)| ([("tier", *t)], u64::from(*on)));
        gauges(
            &mut e,
            "tier_in_use",
            "Data-path speed-ups in use (1) or not (0)",
            None,
            tiers,
        )?;
        gauges(
            &mut e,
            "queues",
            "Data-path queues (TUN queue and UDP socket each)",
            None,
            [(NO, s.queues)],
        )?;
        if let Some(m) = s.members {
            let states = ["alive", "suspect", "down", "left"].into_iter().zip(m);
            let states = states.map(|(st, n)| ([("state", st)], n));
            gauges(
                &mut e,
                "members",
                "Gossip members other than this node, by state",
                None,
                states,
            )?;
        }
        if let Some((dir, fail)) = s.gossip {
            let d = [("in", dir[0]), ("out", dir[1])].map(|(k, n)| ([("direction", k)], n));
            counters(
                &mut e,
                "gossip_datagrams",
                "Gossip datagrams received and sent",
                None,
                d,
            )?;
            let f = [("open", fail[0]), ("decode", fail[1]), ("send", fail[2])];
            let f = f.map(|(k, n)| ([("reason", k)], n));
            counters(&mut e, "gossip_failures", "Gossip datagrams that did not open (wrong secret, tampered, replayed), did not decode, or could not be sent", None, f)?;
        }
        if let Some(n) = s.cookie_replies {
            counters(
                &mut e,
                "wireguard_cookie_replies",
                "WireGuard cookie replies sent (handshakes under load)",
                None,
                [(NO, n)],
            )?;
        }
        let drops = DROP_REASONS.iter().zip(s.tally.drops);
        let drops = drops.map(|(r, n)| ([("reason", r.as_str())], n));
        counters(
            &mut e,
            "drops",
            "Packets and datagrams the data path discarded, by reason",
            None,
            drops,
        )?;
        self.traffic(&mut e)?;
        let by_path = PATH_KINDS.iter().zip(s.by_path);
        let by_path = by_path.map(|(k, n)| ([("path", k.as_str())], n));
        gauges(
            &mut e,
            "peers",
            "Peers by the path their packets take from this node",
            None,
            by_path,
        )?;
        let by_reason = REASON_KINDS.iter().zip(s.by_reason);
        let by_reason = by_reason.map(|(r, n)| ([("reason", *r)], n));
        gauges(
            &mut e,
            "peers_by_reason",
            "Peers by why they are on their path (best: the best there is for them)",
            None,
            by_reason,
        )?;
        counters(
            &mut e,
            "path_moves",
            "Moves of peers between paths",
            None,
            [(NO, s.moves)],
        )?;
        if let Some(ages) = &s.handshake_ages {
            let h = HistogramSnapshot::of(&HANDSHAKE_AGE_BUCKETS, ages);
            histogram(&mut e, "wireguard_handshake_age", "Seconds since each peer's last WireGuard handshake, over the current peers (a distribution now, not cumulative: read it without rate())", &h)?;
        }
        histogram(
            &mut e,
            "probe_rtt",
            "Round-trip times of path probes that came back",
            &self.probe_rtt,
        )?;
        let h = &self.http;
        let outcomes = [
            ("served", h.served),
            ("not-found", h.not_found),
            ("bad-request", h.bad),
            ("too-large", h.too_large),
            ("timed-out", h.timed_out),
            ("busy", h.busy),
        ];
        let outcomes = outcomes.map(|(o, n)| ([("outcome", o)], n));
        counters(
            &mut e,
            "http_requests",
            "Connections to this listener, by outcome",
            None,
            outcomes,
        )?;
        if !s.peers.is_empty() {
            self.per_peer(&mut e)?;
        }
        Ok(())
    }
}

/// The family without labels.
const NO: [(&str, &str); 0] = [];

impl Scrape {
    /// Bytes and packets each way, by path kind: meshd's own counters for the userspace path,
    /// nftables' per peer for kernel VXLAN and host-gw, the device's for kernel WireGuard.
    fn traffic(&self, e: &mut DescriptorEncoder) -> R {
        let mut all = [Traffic::default(); 4];
        all[0] = self.sample.tally.traffic;
        for (k, t) in COUNTED_PATHS.iter().zip(&self.sample.tally.kernel) {
            if let Some(i) = PATH_KINDS.iter().position(|p| p == k) {
                all[i] = *t;
            }
        }
        for (i, k) in self.kernel.iter().enumerate() {
            if let Some(t) = k {
                all[i] = *t;
            }
        }
        let each = |f: fn(&Traffic) -> (u64, u64)| {
            let mut out = Vec::new();
            for (k, t) in PATH_KINDS.iter().zip(&all) {
                let (tx, rx) = f(t);
                out.push(([("path", k.as_str()), ("direction", "tx")], tx));
                out.push(([("path", k.as_str()), ("direction", "rx")], rx));
            }
            out
        };
        let bytes = each(|t| (t.tx_bytes, t.rx_bytes));
        counters(
            e,
            "path",
            "Bytes of pod packets sent (tx) and received (rx), by the path that carried them",
            Some(Unit::Bytes),
            bytes,
        )?;
        let packets = each(|t| (t.tx_packets, t.rx_packets));
        counters(
            e,
            "path_packets",
            "Pod packets sent (tx) and received (rx), by the path that carried them",
            None,
            packets,
        )
    }

    /// `metrics-per-peer`: one set of series per peer, labelled `peer`.
    fn per_peer(&self, e: &mut DescriptorEncoder) -> R {
        let peers = &self.sample.peers;
        // Userspace always; a kernel path once it carried something for the peer.
        let each = |f: fn(&Traffic) -> (u64, u64)| {
            let mut out = Vec::new();
            for p in peers {
                let kernel = COUNTED_PATHS.iter().zip(&p.tally.kernel);
                let used = kernel.filter(|(_, t)| **t != Traffic::default());
                let paths = std::iter::once((&PathKind::Userspace, &p.tally.traffic)).chain(used);
                for (k, t) in paths {
                    let (tx, rx) = f(t);
                    let name = p.name.as_str();
                    out.push((
                        [("peer", name), ("path", k.as_str()), ("direction", "tx")],
                        tx,
                    ));
                    out.push((
                        [("peer", name), ("path", k.as_str()), ("direction", "rx")],
                        rx,
                    ));
                }
            }
            out
        };
        let bytes = each(|t| (t.tx_bytes, t.rx_bytes));
        let help = "Bytes of pod packets sent to (tx) and received from (rx) each peer, by the path that carried them";
        counters(e, "peer", help, Some(Unit::Bytes), bytes)?;
        let packets = each(|t| (t.tx_packets, t.rx_packets));
        let help = "Pod packets sent to (tx) and received from (rx) each peer, by the path that carried them";
        counters(e, "peer_packets", help, None, packets)?;
        let drops = peers.iter().flat_map(|p| {
            let nonzero = DROP_REASONS
                .iter()
                .zip(p.tally.drops)
                .filter(|(_, n)| *n > 0);
            nonzero.map(|(r, n)| ([("peer", p.name.as_str()), ("reason", r.as_str())], n))
        });
        counters(
            e,
            "peer_drops",
            "Each peer's discarded packets, by reason (reasons with none are left out)",
            None,
            drops,
        )?;
        let paths = peers.iter().filter_map(|p| {
            p.path
                .map(|k| ([("peer", p.name.as_str()), ("path", k.as_str())], 1))
        });
        gauges(
            e,
            "peer_path",
            "The path each peer's packets take from this node (always 1)",
            None,
            paths,
        )?;
        let ages = peers
            .iter()
            .filter_map(|p| p.handshake_age.map(|a| ([("peer", p.name.as_str())], a)));
        let mut m = e.encode_descriptor(
            "peer_handshake_age",
            "Seconds since each peer's last WireGuard handshake",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (l, v) in ages {
            m.encode_family(&l)?.encode_gauge(&v)?;
        }
        Ok(())
    }
}

fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: impl IntoIterator<Item = (L, u64)>,
) -> R {
    family(e, name, help, unit, MetricType::Gauge, series, |m, v| {
        m.encode_gauge(&(v as i64))
    })
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: impl IntoIterator<Item = (L, u64)>,
) -> R {
    family(e, name, help, unit, MetricType::Counter, series, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    })
}

fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
    write: impl Fn(&mut MetricEncoder, u64) -> R,
) -> R {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, v) in series {
        write(&mut m.encode_family(&labels)?, v)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &HistogramSnapshot) -> R {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)
}
