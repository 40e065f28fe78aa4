//! The userspace data path: TUN queues and UDP sockets, and a pair of worker threads per queue.

pub mod device;
pub mod encode;
mod worker;

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
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
        let tun = device::open_tun(cfg)?;
        let udp = device::open_udp(cfg, address, tun.queues.len())?;
        let tiers = TierReport {
            multi_queue: tun.multi_queue.clone(),
            tun_offload: tun.tun_offload.clone(),
            udp_gso: udp.udp_gso.clone(),
            udp_gro: udp.udp_gro.clone(),
            queues: tun.queues.len(),
        };
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

    /// Stop the workers and close the devices (the TUN device disappears with its last queue).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
