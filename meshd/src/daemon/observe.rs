//! What the node shows over HTTP on `metrics-address`: the route table ([`routes`]) and the
//! listener that serves it, which a reload moves to a new address or turns off.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;

use super::reload::{self, Live};
use super::report::Report;
use crate::config::Config;
use crate::http::{Counters, Limits, Router, Server};
use crate::metrics::{Histogram, KernelDevices, Metrics, PROBE_RTT_BUCKETS};
use crate::paths::manager::Setup;
use crate::paths::PathKind;

/// Serve `/metrics` on `cfg`'s `metrics-address` and reload on SIGHUP. A listener that cannot
/// be bound is an error in the log, not a reason to stop: the node's pods matter more than its
/// metrics, and a reload can move it.
pub(crate) async fn start(
    cfg: &Config,
    report: Arc<Report>,
    kernel: KernelDevices,
    live: Live,
    seeds: Option<watch::Sender<Vec<String>>>,
) -> Result<()> {
    let counters = Arc::new(Counters::default());
    let probe_rtt = match report.backend.paths() {
        Some(p) => p.probe_rtt.clone(),
        None => Arc::new(Histogram::new(&PROBE_RTT_BUCKETS)),
    };
    let metrics = Metrics::new(
        report.clone(),
        kernel,
        cfg.metrics_per_peer,
        counters.clone(),
        probe_rtt,
    );
    let mut listener = Listener::new(routes(&metrics, report), counters);
    if let Err(e) = listener.set(cfg.metrics_addr()).await {
        tracing::error!(address = %cfg.metrics_address, error = %e, "cannot serve /metrics there; running without (fix metrics-address and send SIGHUP)");
    }
    let targets = reload::Targets {
        listener,
        metrics,
        seeds,
    };
    reload::spawn(live, cfg.clone(), targets)
}

/// The kernel devices this node opened whose counters are a kernel path's traffic: the
/// WireGuard device (kernel VXLAN and host-gw are counted per peer by nftables).
pub(crate) fn kernel_devices(cfg: &Config, fast: &Setup) -> KernelDevices {
    let mut devices = Vec::new();
    if fast.wireguard.is_ok() {
        devices.push((PathKind::KernelWireguard, cfg.wireguard.device.clone()));
    }
    KernelDevices::new(devices)
}

/// Every route the listener serves: `/metrics`, and the picture of the mesh (`/`,
/// `/mesh.json`).
pub(crate) fn routes(metrics: &Arc<Metrics>, report: Arc<Report>) -> Router {
    crate::picture::route(metrics.route(Router::new()), report)
}

/// The listener on `metrics-address`, or none when it is empty.
pub(crate) struct Listener {
    router: Router,
    counters: Arc<Counters>,
    server: Option<Server>,
}

impl Listener {
    pub(crate) fn new(router: Router, counters: Arc<Counters>) -> Listener {
        Listener {
            router,
            counters,
            server: None,
        }
    }

    /// Where it listens now.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(Server::addr)
    }

    /// Listen on `to` (`None`: stop listening). The old address keeps serving until the new
    /// one is bound; if the new one cannot be bound, the old one stays and the error says why.
    /// Moving to the same port on a wider or narrower address (`0.0.0.0` from `127.0.0.1`), which
    /// the kernel refuses while the old one is bound, closes the old first.
    pub(crate) async fn set(&mut self, to: Option<SocketAddr>) -> std::io::Result<()> {
        if to == self.addr() {
            return Ok(());
        }
        let Some(to) = to else {
            if let Some(old) = self.server.take() {
                old.stop().await;
            }
            tracing::info!("the metrics listener is off (metrics-address is empty)");
            return Ok(());
        };
        let started = match self.start(to).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && self.server.is_some() => {
                let old = self.addr();
                if let Some(s) = self.server.take() {
                    s.stop().await;
                }
                match self.start(to).await {
                    Ok(s) => Ok(s),
                    Err(e) => {
                        // Back to where it was, if it still can.
                        if let Some(old) = old {
                            self.server = self.start(old).await.ok();
                        }
                        Err(e)
                    }
                }
            }
            other => other,
        };
        let server = started?;
        tracing::info!(address = %server.addr(), "serving /metrics");
        self.server = Some(server);
        Ok(())
    }

    async fn start(&self, to: SocketAddr) -> std::io::Result<Server> {
        Server::start(
            to,
            self.router.clone(),
            self.counters.clone(),
            Limits::default(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::http::Response;

    fn listener() -> Listener {
        let router = Router::new().route("/metrics", |_| async { Response::ok("text/plain", "x") });
        Listener::new(router, Arc::new(Counters::default()))
    }

    /// A free port on loopback, released for the listener to take.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn the_listener_moves_and_stops() {
        let mut l = listener();
        let port = free_port();
        let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        l.set(Some(a)).await.unwrap();
        assert_eq!(l.addr(), Some(a));
        // The same port on every address: the old binding must go first.
        let wide: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
        l.set(Some(wide)).await.unwrap();
        assert_eq!(l.addr(), Some(wide));
        assert!(tokio::net::TcpStream::connect(a).await.is_ok());
        // An address this host does not have: refused, and the old one kept.
        let foreign: SocketAddr = "192.0.2.1:9472".parse().unwrap();
        assert!(l.set(Some(foreign)).await.is_err());
        assert_eq!(l.addr(), Some(wide));
        l.set(None).await.unwrap();
        assert_eq!(l.addr(), None);
        tokio::task::yield_now().await;
        assert!(tokio::net::TcpStream::connect(a).await.is_err());
    }
}
