//! `/metrics`: the node in the Prometheus text format, gathered fresh on every scrape from the
//! sources `meshd status` reads ([`crate::daemon::report::Report`]: every peer's link, gossip,
//! the path manager) plus the kernel devices' counters, so a node whose traffic the kernel
//! carries does not look idle.
//!
//! By default the series describe the node, not its peers: totals by path kind, drop reason,
//! member state and so on, each family with every label value it can take, so a node of a
//! 100-node cluster has exactly the series of a node of a 3-node one (per-pair series would be
//! O(N²) across the cluster). `metrics-per-peer = true` adds series labelled `peer`, one set per
//! peer this node routes: bounded by the member count, and a peer's series go with it.
//!
//! Nothing is counted for the metrics' sake on the packet path: the data path's counters are the
//! per-peer relaxed atomics it already keeps, and a scrape reads them as a status request does.
//! The one thing counted here is the probes' round-trip time ([`Histogram`]), observed by the
//! path manager once per probe reply.
//!
//! The names: `meshd_` prefix, base units (`_bytes`, `_seconds`), `_total` on counters. README's
//! "Observing meshd" lists them.

mod encode;
mod kernel;
pub(crate) mod sample;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::daemon::report::Report;
use crate::http::{self, Counters, Response};
use encode::Scrape;
use sample::Retired;

pub(crate) use kernel::KernelDevices;

/// The content type of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the probe round-trip buckets, seconds: from a LAN's fraction of a
/// millisecond to the probe timeout (1 s), past which a probe counts as lost.
pub(crate) const PROBE_RTT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What `/metrics` reads, shared by the listener's handler.
pub(crate) struct Metrics {
    report: Arc<Report>,
    kernel: KernelDevices,
    per_peer: AtomicBool,
    retired: Mutex<Retired>,
    http: Arc<Counters>,
    probe_rtt: Arc<Histogram>,
}

impl Metrics {
    pub(crate) fn new(
        report: Arc<Report>,
        kernel: KernelDevices,
        per_peer: bool,
        http: Arc<Counters>,
        probe_rtt: Arc<Histogram>,
    ) -> Arc<Metrics> {
        Arc::new(Metrics {
            report,
            kernel,
            per_peer: AtomicBool::new(per_peer),
            retired: Mutex::new(Retired::default()),
            http,
            probe_rtt,
        })
    }

    /// `metrics-per-peer`, changed by a reload.
    pub(crate) fn set_per_peer(&self, on: bool) {
        self.per_peer.store(on, Relaxed);
    }

    /// The page, now.
    pub(crate) async fn render(&self) -> String {
        let sample = {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            sample::gather(&self.report, &mut retired, self.per_peer.load(Relaxed))
        };
        let kernel = self.kernel.traffic().await;
        encode::text(Scrape {
            sample,
            kernel,
            probe_rtt: self.probe_rtt.snapshot(),
            http: HttpSnapshot::of(&self.http),
        })
    }

    /// The `/metrics` route of a [`http::Router`].
    pub(crate) fn route(self: &Arc<Self>, router: http::Router) -> http::Router {
        let me = self.clone();
        router.route("/metrics", move |_| {
            let me = me.clone();
            async move { Response::ok(CONTENT_TYPE, me.render().await) }
        })
    }
}

/// A histogram with fixed buckets, observed with relaxed atomics (no lock, no allocation).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, and one past the last.
    counts: Vec<AtomicU64>,
    /// The sum of observations, in nanoseconds (an atomic integer; seconds when read).
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        self.counts[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .zip(counts.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, counts.last().copied().unwrap_or(0)));
        HistogramSnapshot {
            sum: self.sum_nanos.load(Relaxed) as f64 / 1e9,
            count: counts.iter().sum(),
            buckets,
        }
    }
}

/// A histogram's values: per bucket (upper bound, count in it, not cumulative), sum, count.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub(crate) sum: f64,
    pub(crate) count: u64,
    pub(crate) buckets: Vec<(f64, u64)>,
}

impl HistogramSnapshot {
    /// The distribution of `values` over `bounds` (and +Inf).
    pub(crate) fn of(bounds: &[f64], values: &[f64]) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::INFINITY, 0));
        for v in values {
            let i = bounds.partition_point(|b| b < v);
            buckets[i].1 += 1;
        }
        HistogramSnapshot {
            // A fold from +0: an empty sum of floats is -0, which reads oddly on a page.
            sum: values.iter().fold(0.0, |a, v| a + v),
            count: values.len() as u64,
            buckets,
        }
    }
}

/// The listener's counters, read once.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpSnapshot {
    pub(crate) served: u64,
    pub(crate) not_found: u64,
    pub(crate) bad: u64,
    pub(crate) too_large: u64,
    pub(crate) timed_out: u64,
    pub(crate) busy: u64,
}

impl HttpSnapshot {
    fn of(c: &Counters) -> HttpSnapshot {
        HttpSnapshot {
            served: http::load(&c.served),
            not_found: http::load(&c.not_found),
            bad: http::load(&c.bad),
            too_large: http::load(&c.too_large),
            timed_out: http::load(&c.timed_out),
            busy: http::load(&c.busy),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
