//! The two loops every queue runs: TUN → UDP ([`tx_loop`]) and UDP → TUN ([`rx_loop`]).
//!
//! Each loop allocates its buffers once, reads a batch, routes it against one route-table
//! snapshot, and writes it out in as few system calls as the kernel allows. When the far side is
//! full (a UDP send buffer, say), the loop waits for it instead of dropping: backpressure reaches
//! the sender through the TUN queue.

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::encode::{decode, Encoder};
use crate::routes::{PeerId, Routes};
use crate::stats::{DropReason, DropTally};
use crate::wire::vxlan::HEADER_LEN;

/// Packets per TX batch. A TSO super-packet of 64 KiB split at the smallest MSS we allow
/// (576-byte MTU → 536) is 123 segments, so a batch must hold that many after a first read.
const TX_BATCH: usize = 256;
/// Read again from the TUN device only while this many buffers are free (see above).
const TX_READ_ROOM: usize = 128;
/// Datagrams per `recvmmsg`: quinn-udp's own batch size on Linux.
const RX_BATCH: usize = 32;
/// Inner packets handed to one `send_multiple` (and so to one GRO coalescing pass).
const RX_WRITE_BATCH: usize = 128;
/// A GRO-coalesced UDP read is at most one 64 KiB datagram.
const GRO_BUF: usize = 65535;
/// How long an idle worker sleeps before it looks at the stop flag again.
const IDLE_POLL_MS: i32 = 200;

/// What both loops share.
pub struct Shared {
    pub routes: Arc<Routes>,
    pub stop: Arc<AtomicBool>,
    pub vni: u32,
    pub mtu: usize,
}

pub struct Queue {
    pub tun: Arc<SyncDevice>,
    pub socket: Arc<(UdpSocket, UdpSocketState)>,
    pub gro: bool,
    pub gso_segments: usize,
}

pub fn tx_loop(shared: &Shared, q: &Queue) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    let mut bufs: Vec<Vec<u8>> = (0..TX_BATCH).map(|_| vec![0u8; shared.mtu]).collect();
    let mut sizes = vec![0usize; TX_BATCH];
    let mut enc = Encoder::new(
        TX_BATCH * (HEADER_LEN + shared.mtu),
        TX_BATCH,
        q.gso_segments,
    );
    let mut drops = DropTally::default();
    let (sock, state) = &*q.socket;
    while !shared.stop.load(Ordering::Relaxed) {
        let mut n = 0;
        while TX_BATCH - n >= TX_READ_ROOM || n == 0 {
            match q
                .tun
                .recv_multiple(&mut original, &mut bufs[n..], &mut sizes[n..], 0)
            {
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::trace!(error = %e, "TUN read");
                    drops.add(DropReason::Malformed);
                    break;
                }
            }
        }
        if n == 0 {
            drops.flush_into(&shared.routes.unattributed);
            wait(q.tun.as_raw_fd(), libc::POLLIN);
            continue;
        }
        let table = shared.routes.load();
        enc.clear();
        let gso = state.max_gso_segments().min(q.gso_segments);
        enc.set_max_frames_per_run(gso);
        for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
            enc.push(&table, &buf[..len], &mut drops);
        }
        for run in enc.runs() {
            let peer = table.peer(run.peer);
            let t = Transmit {
                destination: peer.endpoint,
                ecn: None,
                contents: enc.bytes(run),
                segment_size: (run.frames > 1).then_some(run.segment),
                src_ip: None,
            };
            match send(sock, state, &t, &shared.stop) {
                Ok(()) => peer.stats.tx(run.frames as u64, run.inner_bytes as u64),
                Err(e) => {
                    tracing::trace!(error = %e, peer = %peer.name, "UDP send");
                    peer.stats
                        .count_drop(DropReason::SendError, run.frames as u64);
                }
            }
        }
        drops.flush_into(&shared.routes.unattributed);
    }
}

/// Send one transmit, waiting while the socket buffer is full.
fn send(
    sock: &UdpSocket,
    state: &UdpSocketState,
    t: &Transmit<'_>,
    stop: &AtomicBool,
) -> io::Result<()> {
    loop {
        match state.try_send(UdpSockRef::from(sock), t) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Err(e);
                }
                wait(sock.as_raw_fd(), libc::POLLOUT);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

pub fn rx_loop(shared: &Shared, q: &Queue) {
    let slot = if q.gro {
        GRO_BUF
    } else {
        shared.mtu + HEADER_LEN + 64
    };
    let mut big = vec![0u8; RX_BATCH * slot];
    let mut meta = [RecvMeta::default(); RX_BATCH];
    let mut out = TunWriter::new();
    let mut drops = DropTally::default();
    let (sock, state) = &*q.socket;
    while !shared.stop.load(Ordering::Relaxed) {
        let received = {
            let mut chunks = big.chunks_mut(slot);
            let mut iovs: [IoSliceMut<'_>; RX_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            state.recv(UdpSockRef::from(sock), &mut iovs, &mut meta)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drops.flush_into(&shared.routes.unattributed);
                wait(sock.as_raw_fd(), libc::POLLIN);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::trace!(error = %e, "UDP receive");
                continue;
            }
        };
        let table = shared.routes.load();
        let mut acc = PeerAcc::default();
        for (i, m) in meta.iter().take(n).enumerate() {
            let data = &big[i * slot..i * slot + m.len.min(slot)];
            let stride = m.stride.max(1);
            // An empty datagram is still a datagram to judge (and count); chunks() yields none.
            let empty: &[&[u8]] = if data.is_empty() { &[&[]] } else { &[] };
            for datagram in data.chunks(stride).chain(empty.iter().copied()) {
                match decode(&table, m.addr.ip(), shared.vni, datagram) {
                    Ok((peer, packet)) => {
                        acc.add(&table, peer, packet.len());
                        if out.push(packet) {
                            out.flush(&q.tun, &mut drops);
                        }
                    }
                    Err((Some(peer), reason)) => table.peer(peer).stats.count_drop(reason, 1),
                    Err((None, reason)) => drops.add(reason),
                }
            }
        }
        acc.flush(&table);
        out.flush(&q.tun, &mut drops);
        drops.flush_into(&shared.routes.unattributed);
    }
}

/// Packets waiting to be written to the TUN device in one `send_multiple` (GRO-coalesced there
/// when the device has offload).
struct TunWriter {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

/// Headroom in front of each packet: the virtio-net header when offload is on.
const WRITE_OFFSET: usize = VIRTIO_NET_HDR_LEN;

impl TunWriter {
    fn new() -> Self {
        TunWriter {
            // tun-rs coalesces a flow's packets into the first buffer of the flow only when that
            // buffer can hold the result: give each room for a 64 KiB super-packet. Pages are
            // touched only as coalescing reaches them.
            bufs: (0..RX_WRITE_BATCH)
                .map(|_| Vec::with_capacity(2 * WRITE_OFFSET + GRO_BUF))
                .collect(),
            used: 0,
            gro: GROTable::default(),
        }
    }

    /// Queue a packet; true when the batch is full and must be flushed.
    #[inline]
    fn push(&mut self, packet: &[u8]) -> bool {
        let b = &mut self.bufs[self.used];
        b.clear();
        b.resize(WRITE_OFFSET, 0);
        b.extend_from_slice(packet);
        self.used += 1;
        self.used == self.bufs.len()
    }

    fn flush(&mut self, tun: &SyncDevice, drops: &mut DropTally) {
        if self.used == 0 {
            return;
        }
        if let Err(e) = tun.send_multiple(&mut self.gro, &mut self.bufs[..self.used], WRITE_OFFSET)
        {
            tracing::trace!(error = %e, "TUN write");
            drops.add(DropReason::TunWriteError);
        }
        self.used = 0;
    }
}

/// Received counters for the peer of the current stretch of datagrams, added once per stretch.
#[derive(Default)]
struct PeerAcc {
    peer: Option<PeerId>,
    packets: u64,
    bytes: u64,
}

impl PeerAcc {
    #[inline]
    fn add(&mut self, table: &crate::routes::RouteTable, peer: PeerId, bytes: usize) {
        if self.peer != Some(peer) {
            self.flush(table);
            self.peer = Some(peer);
        }
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    fn flush(&mut self, table: &crate::routes::RouteTable) {
        if let Some(p) = self.peer.take() {
            table.peer(p).stats.rx(self.packets, self.bytes);
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// Sleep until `fd` is ready for `events` or the idle period ends.
fn wait(fd: i32, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, IDLE_POLL_MS);
    }
}
