//! UDP → TUN, encrypted: each datagram is demultiplexed to its peer, decrypted by that peer's
//! session, checked against the peer's subnet (cryptokey routing) and queued for one
//! `send_multiple` to the TUN device, which GRO-coalesces it when the device has offload.
//!
//! Demultiplexing (before any cryptography): data, responses and cookie replies by receiver
//! index ([`meshd_crypto::wire::local_index_of`]); initiations by the initiator's static key,
//! after the shared rate limiter admitted them ([`meshd_crypto::RateLimiter::check`], which
//! answers a flood with cookie replies) and [`meshd_crypto::identify_initiator`] found the key.
//! [`receive`] does all of that without I/O of its own: replies go through a callback.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use meshd_crypto::session::MIN_OUT_LEN;
use meshd_crypto::{identify_initiator, Action, Admission, MessageType, WgDatagram};
use quinn_udp::{RecvMeta, UdpSockRef};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::{send_one, wait, NodeCrypto, Queue, Shared, SCRATCH_LEN};
use crate::routes::{PeerId, RouteTable};
use crate::stats::{DropReason, DropTally};

/// Datagrams per `recvmmsg`: quinn-udp's own batch size on Linux.
const RX_BATCH: usize = 32;
/// Inner packets handed to one `send_multiple` (and so to one GRO coalescing pass). Each
/// buffer can grow to a coalesced 64 KiB packet, so this many cost 4 MiB per worker.
const RX_WRITE_BATCH: usize = 64;
/// A GRO-coalesced UDP read is at most one 64 KiB datagram.
const GRO_BUF: usize = 65535;
/// Headroom in front of each packet written to TUN: the virtio-net header.
const WRITE_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// What one datagram came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// `out[..len]` is an IP packet from `peer`, inside its subnet: deliver it.
    Deliver { peer: PeerId, len: usize },
    /// Handled (a handshake answered, a keepalive, a cookie taken) or dropped and counted.
    Nothing,
}

/// Demultiplex, decrypt and check one datagram from `src`. Plaintext lands in `out`, which
/// must be at least as long as the datagram; `scratch` ([`SCRATCH_LEN`] bytes) holds replies,
/// which go to `reply(bytes, to)`. Drops that belong to no peer go to `drops`; the others to
/// the peer's counters.
// Each argument is one thing the per-datagram path needs; bundling them would only add a
// struct to build per batch.
#[allow(clippy::too_many_arguments)]
pub fn receive(
    crypto: &NodeCrypto,
    table: &RouteTable,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    scratch: &mut [u8],
    reply: &mut impl FnMut(&[u8], SocketAddr),
    drops: &mut DropTally,
) -> Received {
    let Some(id) = demux(crypto, table, src, datagram, scratch, reply, drops) else {
        return Received::Nothing;
    };
    let entry = table.peer(id);
    let Some(wg) = &entry.wg else {
        return Received::Nothing;
    };
    let mut session = wg.lock();
    match session.decapsulate(Some(src.ip()), datagram, out) {
        Action::WriteToTunnelV4(len, inner_src) => {
            if entry.subnet.contains(&inner_src) {
                return Received::Deliver { peer: id, len };
            }
            entry.stats.count_drop(DropReason::SpoofedSource, 1);
        }
        // No pod has an IPv6 address yet, so no IPv6 source is inside a peer's subnet.
        Action::WriteToTunnelV6(..) => entry.stats.count_drop(DropReason::SpoofedSource, 1),
        Action::WriteToNetwork(n) => {
            reply(&out[..n], src);
            // Packets queued while the handshake was under way go out now.
            while let Action::WriteToNetwork(n) = session.flush_queued(scratch) {
                reply(&scratch[..n], entry.endpoint);
            }
        }
        Action::Done => {}
        Action::Error(e) => entry.stats.count_drop(DropReason::from_session(e), 1),
    }
    Received::Nothing
}

/// The peer a datagram is for, or `None` once it is dropped (counted) or answered.
fn demux(
    crypto: &NodeCrypto,
    table: &RouteTable,
    src: SocketAddr,
    datagram: &[u8],
    scratch: &mut [u8],
    reply: &mut impl FnMut(&[u8], SocketAddr),
    drops: &mut DropTally,
) -> Option<PeerId> {
    let Ok(d) = WgDatagram::new_checked(datagram) else {
        drops.add(DropReason::Malformed);
        return None;
    };
    if d.message_type() != MessageType::Initiation {
        let index = d.receiver_index().map(meshd_crypto::wire::local_index_of);
        let id = index.and_then(|i| table.by_index(i));
        if id.is_none() {
            drops.add(DropReason::UnknownIndex);
        }
        return id;
    }
    match crypto.limiter.check(Some(src.ip()), datagram, scratch) {
        Admission::Accept => {}
        Admission::CookieReply(n) => {
            reply(&scratch[..n], src);
            crypto.cookie_replies.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Admission::Reject(e) => {
            drops.add(DropReason::from_session(e));
            return None;
        }
    }
    let id = identify_initiator(&crypto.private, &crypto.public, datagram)
        .and_then(|key| table.by_key(&key));
    if id.is_none() {
        drops.add(DropReason::HandshakeRejected);
    }
    id
}

pub fn rx_loop(shared: &Shared, q: &Queue) {
    let slot = if q.gro { GRO_BUF } else { shared.mtu + 128 };
    let mut big = vec![0u8; RX_BATCH * slot];
    let mut meta = [RecvMeta::default(); RX_BATCH];
    let mut out = TunWriter::new(shared.mtu);
    let mut scratch = vec![0u8; SCRATCH_LEN];
    let mut drops = DropTally::default();
    let (sock, state) = &*q.socket;
    let mut reply = |bytes: &[u8], to: SocketAddr| {
        if let Err(e) = send_one(sock, bytes, to) {
            tracing::trace!(error = %e, "UDP send of a handshake message");
        }
    };
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
                wait(std::os::fd::AsRawFd::as_raw_fd(sock), libc::POLLIN);
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
                let buf = out.next(datagram.len());
                let r = receive(
                    &shared.crypto,
                    &table,
                    m.addr,
                    datagram,
                    buf,
                    &mut scratch,
                    &mut reply,
                    &mut drops,
                );
                if let Received::Deliver { peer, len } = r {
                    acc.add(&table, peer, len);
                    if out.commit(len) {
                        out.flush(&q.tun, &mut drops);
                    }
                }
            }
        }
        acc.flush(&table);
        out.flush(&q.tun, &mut drops);
        drops.flush_into(&shared.routes.unattributed);
    }
}

/// Decrypted packets waiting for one `send_multiple`. Each buffer has room for a coalesced
/// 64 KiB packet: tun-rs only coalesces into a buffer whose capacity allows it.
struct TunWriter {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl TunWriter {
    fn new(mtu: usize) -> Self {
        let cap = (2 * WRITE_OFFSET + 65535).max(WRITE_OFFSET + mtu + 128);
        TunWriter {
            bufs: (0..RX_WRITE_BATCH)
                .map(|_| Vec::with_capacity(cap))
                .collect(),
            used: 0,
            gro: GROTable::default(),
        }
    }

    /// The next free buffer, past the headroom, with room for a datagram of `len` bytes
    /// (plaintext is never longer than its datagram).
    #[inline]
    fn next(&mut self, len: usize) -> &mut [u8] {
        let b = &mut self.bufs[self.used];
        let want = (WRITE_OFFSET + len.max(MIN_OUT_LEN)).min(b.capacity());
        b.resize(want, 0);
        &mut b[WRITE_OFFSET..]
    }

    /// Keep the packet of `len` bytes just written by [`TunWriter::next`]; true when the batch
    /// is full and must be flushed.
    #[inline]
    fn commit(&mut self, len: usize) -> bool {
        self.bufs[self.used].truncate(WRITE_OFFSET + len);
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
    fn add(&mut self, table: &RouteTable, peer: PeerId, bytes: usize) {
        if self.peer != Some(peer) {
            self.flush(table);
            self.peer = Some(peer);
        }
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    fn flush(&mut self, table: &RouteTable) {
        if let Some(p) = self.peer.take() {
            table.peer(p).stats.rx(self.packets, self.bytes);
        }
        self.packets = 0;
        self.bytes = 0;
    }
}
