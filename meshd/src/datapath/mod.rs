//! The userspace data path: TUN queues and UDP sockets, and a pair of worker threads per queue,
//! written once and generic over the encapsulation.
//!
//! ```text
//!  TUN queue ─▶ tx_loop: read batch ─▶ route ─▶ Encap::Tx::encode into Runs ─▶ GSO sendmsg ─▶ UDP
//!  UDP       ─▶ rx_loop: recvmmsg/GRO ─▶ Encap::receive (check, decrypt) ─▶ gro::Coalescer ─▶ TUN queue
//!                  └─ TX worker asleep: send the answer now in the TUN queue, as tx_loop would
//! ```
//!
//! An [`Encap`] is sans-IO: it turns one packet into one datagram in a buffer it is given, and
//! one datagram into one packet. [`vxlan::Vxlan`] frames in cleartext; [`wireguard::Wireguard`]
//! encrypts. Dispatch is static (the loops are monomorphised per encapsulation), so the
//! per-packet path has no virtual call.

pub(crate) mod device;
pub(crate) mod flows;
pub mod gro;
pub mod io;
pub mod runs;
mod rx_worker;
pub mod socket;
pub mod too_big;
pub mod vxlan;
mod waiter;
pub mod wireguard;
pub mod worker;

use anyhow::{Context, Result};
use quinn_udp::UdpSocketState;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::config::Config;
use crate::routes::{PeerEntry, PeerId, RouteTable, Routes};
use crate::stats::{DropReason, DropTally, Stamp};
use crate::tiers::TierReport;
pub use io::PeerAcc;
pub(crate) use socket::DataPort;
use socket::QueueSocket;

/// One way of carrying pod packets between nodes inside UDP.
pub trait Encap: Send + Sync + Sized + 'static {
    /// Short name, for thread names.
    const NAME: &'static str;
    /// Inner packets coalesced and written to the TUN device in one flush ([`gro::Coalescer`]).
    const RX_WRITE_BATCH: usize;
    /// Per-batch TX state; it may borrow from the route table (a session lock held across
    /// consecutive packets to one peer).
    type Tx<'t>: EncodeBatch<'t>
    where
        Self: 't;
    /// Per-RX-worker scratch, allocated once.
    type RxScratch: Send;

    /// Bytes one packet of `len` bytes needs in the TX buffer.
    fn datagram_len(len: usize) -> usize;
    /// Whether the encapsulation frames a packet where it lies, with
    /// `datagram_len(len) - len` bytes of room in front ([`EncodeBatch::frame`]): the TX path
    /// then reads the TUN device straight into its send buffer, one copy fewer per byte.
    /// Encryption writes its output elsewhere ([`EncodeBatch::encode`]).
    const FRAMES_IN_PLACE: bool = false;
    /// Largest datagram to expect (without GRO) for a TUN MTU of `mtu`.
    fn max_datagram(mtu: usize) -> usize;
    /// Bytes of output buffer [`Encap::receive`] needs for a datagram of `len` bytes (0 where
    /// it delivers packets where they lie, [`Received::Inside`]).
    fn packet_room(len: usize) -> usize;
    /// Whether every packet [`Encap::receive`] delivers was authenticated on the way
    /// (encryption): a segment's own TCP checksum then need not be checked before it is
    /// coalesced with others under one checksum the kernel computes.
    const AUTHENTICATED: bool = false;

    /// The TX state of one batch of queue `sender`.
    fn tx<'t>(&'t self, table: &'t RouteTable, sender: usize) -> Self::Tx<'t>;
    /// Queue `sender` has sent `runs` (sent or failed: they are out of its hands).
    fn sent(&self, _table: &RouteTable, _sender: usize, _runs: &runs::Runs) {}
    fn rx_scratch(&self) -> Self::RxScratch;

    /// Check (and decrypt) one datagram from `from` into `out`, which holds at least
    /// [`Encap::packet_room`] bytes. Replies (handshakes) go to `rx.reply`; drops are counted
    /// against the peer, or in `rx.drops` when no peer owns them.
    fn receive(
        &self,
        rx: &mut Rx<'_, Self::RxScratch>,
        table: &RouteTable,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Received;

    /// Whether [`Encap::control`] has work: the data path then runs it on a thread of its own.
    const HAS_CONTROL: bool = false;
    /// The encapsulation's own control loop (WireGuard's timers), sending from `socket`, until
    /// `stop` is set.
    fn control(&self, _routes: &Routes, _socket: &UdpSocket, _stop: &AtomicBool) {}
}

/// Encoding one packet for the peer that owns its destination, in a batch routed against one
/// table snapshot (`'t`).
pub trait EncodeBatch<'t> {
    fn encode(&mut self, id: PeerId, peer: &'t PeerEntry, packet: &[u8], out: &mut [u8])
        -> Encoded;

    /// Frame the packet that follows the encapsulation's room in `datagram`, in place (only
    /// called where [`Encap::FRAMES_IN_PLACE`]).
    fn frame(&mut self, _id: PeerId, _peer: &'t PeerEntry, _datagram: &mut [u8]) -> Encoded {
        Encoded::Drop(DropReason::Malformed)
    }
}

/// What [`EncodeBatch::encode`] made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// `out[..len]` is a datagram for the peer.
    Datagram(usize),
    /// Held (behind a handshake already in flight); it goes out later.
    Queued,
    /// Dropped; counted against the peer.
    PeerDrop(DropReason),
    /// Dropped; counted against no peer.
    Drop(DropReason),
    /// Not encoded: the peer has as many datagrams in flight as its receiver can take out of
    /// order (WireGuard's replay window, see `meshd_crypto::InFlight`). Send what the batch
    /// holds, or wait for the other queues to send theirs, then offer the packet again.
    Blocked,
}

/// What an RX worker hands [`Encap::receive`] with every datagram: the encapsulation's scratch,
/// the drops that belong to no peer, and where replies (handshake messages) go.
pub struct Rx<'a, S> {
    pub scratch: S,
    pub drops: DropTally,
    pub reply: &'a mut dyn FnMut(&[u8], SocketAddr),
    /// When the current batch was read: the time every datagram of it is judged at.
    pub now: Stamp,
}

/// What one datagram came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// `out[..len]` is an IP packet from `peer`, inside its subnet: deliver it.
    Deliver { peer: PeerId, len: usize },
    /// `datagram[at..at + len]` is such a packet, where it lies (cleartext): deliver it from
    /// there, `out` is left alone.
    Inside { peer: PeerId, at: usize, len: usize },
    /// Handled (a handshake answered, a keepalive, a cookie taken) or dropped and counted.
    Nothing,
}

/// What every worker of a data path shares.
pub(crate) struct Shared<E> {
    pub(crate) routes: Arc<Routes>,
    pub(crate) encap: Arc<E>,
    pub(crate) stop: Arc<io::Stop>,
    /// MTU of the TUN device: the largest packet a worker reads or writes.
    pub(crate) mtu: usize,
}

/// One TUN queue and its UDP sockets, shared by the queue's TX and RX workers.
pub(crate) struct Queue {
    pub(crate) tun: Arc<tun_rs::SyncDevice>,
    /// The queue's socket on the data port: it receives (and sends when `sender` is none).
    pub(crate) socket: Arc<(UdpSocket, UdpSocketState)>,
    /// The socket on the queue's own source port, when several UDP flows per peer are on: the
    /// queue sends from it.
    pub(crate) sender: Option<Arc<(UdpSocket, UdpSocketState)>>,
    /// The sockets on source ports the RX worker reads too, since a peer may answer the source
    /// (see [`device::UdpQueues`]): its own sender, or its member of every port's group.
    pub(crate) flows: Vec<Arc<(UdpSocket, UdpSocketState)>>,
    pub(crate) gro: bool,
    pub(crate) gso_segments: usize,
    /// The queue's TUN → UDP state. Whoever holds it reads the TUN queue and sends what it
    /// read before letting go, so one flow's packets leave in the order they came: the TX
    /// worker, or the RX worker when the TX worker sleeps (see [`worker`]'s hand-off).
    pub(crate) tx: Mutex<worker::TxState>,
    /// Set while the TX worker waits for the TUN queue: the RX worker may then take
    /// [`Queue::tx`] and send the reply its own TUN write just produced.
    pub(crate) tx_idle: AtomicBool,
    /// The TX worker's sleep (`None` where the kernel refused an epoll instance: it polls).
    /// The RX worker stops its wake-up for the TUN queue while it sends an answer in its stead
    /// ([`rx_worker`]'s claim).
    pub(crate) tx_waiter: Option<waiter::Waiter>,
    pub(crate) counters: Arc<QueueCounters>,
}

impl Queue {
    /// Where this queue's TX sends from.
    pub(crate) fn send_socket(&self) -> &(UdpSocket, UdpSocketState) {
        self.sender.as_deref().unwrap_or(&self.socket)
    }
}

/// Datagrams one queue received and sent: how a node's traffic spreads over its queues (and so
/// over cores). Each counter has one writer at a time, once per batch.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    /// The port the queue sends from.
    pub(crate) source_port: u16,
    pub(crate) rx_datagrams: AtomicU64,
    pub(crate) tx_datagrams: AtomicU64,
    /// Of `tx_datagrams`, those the RX workers sent as answers (the hand-off in [`worker`]).
    pub(crate) answered: AtomicU64,
}

pub(crate) struct DataPath {
    stop: Arc<io::Stop>,
    threads: Vec<JoinHandle<()>>,
    pub(crate) tiers: TierReport,
    /// One per queue, in queue order.
    pub(crate) queues: Vec<Arc<QueueCounters>>,
}

impl DataPath {
    /// Open the devices and start the workers of `encap`, binding the data port or only
    /// sending (`data_port`). Routes may be empty and filled later.
    pub(crate) fn start<E: Encap>(
        cfg: &Config,
        data_port: DataPort,
        routes: Arc<Routes>,
        encap: E,
    ) -> Result<DataPath> {
        let (tun, udp, tiers) = device::open(cfg, cfg.bind_address(), data_port)?;
        let stop = Arc::new(io::Stop::new());
        let shared = Arc::new(Shared {
            routes,
            encap: Arc::new(encap),
            stop: stop.clone(),
            mtu: usize::from(cfg.overlay_mtu()),
        });
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .context("spawning a data-path worker")
        };
        if E::HAS_CONTROL {
            let socket = udp.sockets[0]
                .0
                .try_clone()
                .context("cloning the UDP socket for the control thread")?;
            let s = shared.clone();
            threads.push(spawn(
                format!("meshd-{}-timers", E::NAME),
                Box::new(move || s.encap.control(&s.routes, &socket, s.stop.flag())),
            )?);
        }
        let mut queues = Vec::new();
        let mut all = Vec::new();
        // One socket for every queue where the kernel would not steer by peer address (see
        // `device::UdpQueues`): only the first queue's worker reads it.
        let receivers = udp.sockets.len();
        let mut data: Vec<Arc<QueueSocket>> = udp.sockets.into_iter().map(Arc::new).collect();
        if let Some(first) = data.first().cloned() {
            data.resize(tun.queues.len().max(receivers), first);
        }
        let sockets = data.into_iter().zip(udp.senders).zip(udp.flows);
        for (index, (dev, ((sock, sender), flows))) in
            tun.queues.into_iter().zip(sockets).enumerate()
        {
            let from = sender.as_deref().unwrap_or(&sock);
            let counters = Arc::new(QueueCounters {
                source_port: from.0.local_addr().map(|a| a.port()).unwrap_or(0),
                ..QueueCounters::default()
            });
            queues.push(counters.clone());
            let tx_waiter = waiter::Waiter::new(dev.as_raw_fd(), &[], libc::POLLIN, &stop).ok();
            all.push(Arc::new(Queue {
                tun: Arc::new(dev),
                socket: sock,
                sender,
                flows,
                gro: udp.gro,
                gso_segments: udp.gso_segments,
                tx: Mutex::new(worker::TxState::new::<E>(
                    index,
                    shared.mtu,
                    udp.gso_segments,
                )),
                tx_idle: AtomicBool::new(false),
                tx_waiter,
                counters,
            }));
        }
        // Every RX worker sees every queue: an answer may land in another queue than the
        // request came in on (see the hand-off in `worker`).
        let all: Arc<[Arc<Queue>]> = all.into();
        for (i, q) in all.iter().enumerate() {
            let (s, q2) = (shared.clone(), q.clone());
            threads.push(spawn(
                format!("meshd-{}-tx-{i}", E::NAME),
                Box::new(move || worker::tx_loop(&s, &q2)),
            )?);
            if i >= receivers {
                continue;
            }
            let (s, q, all) = (shared.clone(), q.clone(), all.clone());
            threads.push(spawn(
                format!("meshd-{}-rx-{i}", E::NAME),
                Box::new(move || rx_worker::rx_loop(&s, &q, &all)),
            )?);
        }
        Ok(DataPath {
            stop,
            threads,
            tiers,
            queues,
        })
    }

    /// Stop the workers and close the devices (the TUN device disappears with its last queue).
    pub(crate) fn stop(self) {
        self.stop.set();
        for t in self.threads {
            let _ = t.join();
        }
    }
}
