//! The userspace data path: TUN queues and UDP sockets, and a pair of worker threads per queue.

pub mod device;
pub mod encode;
mod io;
pub mod wg;
mod worker;

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::{Config, Encryption};
use crate::routes::Routes;
pub use device::{Tier, TierReport};

pub struct DataPath {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub tiers: TierReport,
}

impl DataPath {
    /// Open the devices and start the workers. Routes may be empty and filled later.
    pub fn start(cfg: &Config, routes: Arc<Routes>) -> Result<DataPath> {
        let address = cfg.address.context("no underlay address")?;
        if cfg.encryption == Encryption::Wireguard {
            return Self::start_wireguard(cfg, address, routes);
        }
        let (tun, udp, tiers) = device::open(cfg, address)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(worker::Shared {
            routes,
            stop: stop.clone(),
            vni: cfg.vxlan.vni,
            mtu: usize::from(cfg.overlay_mtu()),
        });
        let mut threads = Vec::new();
        for (i, (dev, sock)) in tun.queues.into_iter().zip(udp.sockets).enumerate() {
            let q = Arc::new(worker::Queue {
                tun: Arc::new(dev),
                socket: Arc::new(sock),
                gro: udp.gro,
                gso_segments: udp.gso_segments,
            });
            for (kind, f) in [
                ("tx", worker::tx_loop as fn(&worker::Shared, &worker::Queue)),
                ("rx", worker::rx_loop),
            ] {
                let (s, q) = (shared.clone(), q.clone());
                let t = std::thread::Builder::new()
                    .name(format!("meshd-{kind}-{i}"))
                    .spawn(move || f(&s, &q))
                    .context("spawning a data-path worker")?;
                threads.push(t);
            }
        }
        Ok(DataPath {
            stop,
            threads,
            tiers,
        })
    }

    /// The encrypted data path: the same devices, WireGuard workers, and a timer thread.
    fn start_wireguard(
        cfg: &Config,
        address: std::net::IpAddr,
        routes: Arc<Routes>,
    ) -> Result<DataPath> {
        let crypto = routes
            .crypto()
            .cloned()
            .context("encryption = \"wireguard\" but the route table has no keys")?;
        let (tun, udp, tiers) = device::open(cfg, address)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(wg::Shared {
            routes: routes.clone(),
            crypto,
            stop: stop.clone(),
            mtu: usize::from(cfg.overlay_mtu()),
        });
        let timer_socket = udp.sockets[0]
            .0
            .try_clone()
            .context("cloning the UDP socket for the timer thread")?;
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .context("spawning a data-path worker")
        };
        let s = shared.clone();
        threads.push(spawn(
            "meshd-wg-timers".into(),
            Box::new(move || wg::timers(&s.routes, &timer_socket, &s.stop)),
        )?);
        for (i, (dev, sock)) in tun.queues.into_iter().zip(udp.sockets).enumerate() {
            let q = Arc::new(wg::Queue {
                tun: Arc::new(dev),
                socket: Arc::new(sock),
                gro: udp.gro,
                gso_segments: udp.gso_segments,
            });
            let (s, q2) = (shared.clone(), q.clone());
            threads.push(spawn(
                format!("meshd-wg-tx-{i}"),
                Box::new(move || wg::tx::tx_loop(&s, &q2)),
            )?);
            let s = shared.clone();
            threads.push(spawn(
                format!("meshd-wg-rx-{i}"),
                Box::new(move || wg::rx::rx_loop(&s, &q)),
            )?);
        }
        Ok(DataPath {
            stop,
            threads,
            tiers,
        })
    }

    /// Stop the workers and close the devices (the TUN device disappears with its last queue).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
