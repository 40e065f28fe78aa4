//! The I/O both data paths (cleartext VXLAN and WireGuard) share: batched TUN reads, batched UDP
//! receives, sends that wait out a full socket buffer, and the per-peer receive tally (the
//! TUN writes, coalesced, are [`super::gro`]'s). What differs between the paths (framing, crypto) is an
//! [`super::Encap`].

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use tun_rs::{SyncDevice, VIRTIO_NET_HDR_LEN};

use super::runs::Runs;
use crate::routes::{PeerId, RouteTable};
use crate::stats::{DropReason, DropTally, Stamp};

/// Packets per TX batch. A TSO super-packet of 64 KiB split at the smallest MSS we allow
/// (576-byte MTU → 536) is 123 segments, so a batch must hold that many after a first read.
pub const TX_BATCH: usize = 256;
/// Read again from the TUN device only while this many buffers are free (see above).
const TX_READ_ROOM: usize = 128;
/// Datagrams per `recvmmsg`: quinn-udp's own batch size on Linux.
const RX_BATCH: usize = 32;
/// A GRO-coalesced UDP read is at most 64 KiB.
const GRO_BUF: usize = 65535;
/// How long a wait without a stop descriptor (tests, a full send buffer) sleeps before its
/// caller looks at the stop flag again.
const IDLE_POLL_MS: i32 = 200;
/// How long an idle worker sleeps with the stop descriptor in its poll set: only a safety net,
/// since [`Stop::set`] wakes it at once. An idle node's workers then wake for traffic alone.
const STOP_POLL_MS: i32 = 5_000;

/// The data path's stop: a flag the loops check, and an eventfd in every idle worker's poll
/// set that [`Stop::set`] makes readable, so workers sleep until traffic or the stop instead of
/// waking five times a second to look at the flag. Without an eventfd (the kernel refused one)
/// idle waits fall back to [`IDLE_POLL_MS`].
pub(crate) struct Stop {
    flag: AtomicBool,
    event: Option<std::os::fd::OwnedFd>,
}

impl Stop {
    pub(crate) fn new() -> Self {
        // SAFETY: eventfd(2) with valid flags; a non-negative result is a descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        let event = (fd >= 0).then(|| {
            // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        });
        Stop {
            flag: AtomicBool::new(false),
            event,
        }
    }

    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The flag alone, for loops that check it between short waits.
    pub(crate) fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    /// Stops the loops and wakes every idle worker.
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        if let Some(fd) = &self.event {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// The descriptor idle waits add to their poll set, and how long they may sleep.
    pub(super) fn poll_slot(&self) -> (RawFd, i32) {
        match &self.event {
            Some(fd) => (fd.as_raw_fd(), STOP_POLL_MS),
            None => (-1, IDLE_POLL_MS),
        }
    }
}

/// Batched reads from one TUN queue; TSO super-packets come back split into segments.
pub struct TunReader {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    drained: bool,
}

impl TunReader {
    pub fn new(mtu: usize) -> Self {
        TunReader {
            original: vec![0u8; VIRTIO_NET_HDR_LEN + 65535],
            bufs: (0..TX_BATCH).map(|_| vec![0u8; mtu]).collect(),
            sizes: vec![0; TX_BATCH],
            drained: false,
        }
    }

    /// Read what is ready, up to a batch; 0 when nothing is (the caller waits with [`wait`]).
    /// With `fill`, read again while a batch has room (under load: fewer, fuller sends);
    /// without, stop at the first read that returned packets (after idle: the first packet
    /// goes out without waiting for a read that finds the queue empty).
    pub fn read(&mut self, tun: &SyncDevice, drops: &mut DropTally, fill: bool) -> usize {
        let (n, drained) = read_batch(
            tun,
            &mut self.original,
            &mut self.bufs,
            &mut self.sizes,
            0,
            drops,
            fill,
        );
        self.drained = drained;
        n
    }

    /// [`TunReader::read`] straight into `buf`: packet `i` at `i * stride + headroom`, its
    /// length at [`TunReader::size`]`(i)`, so the caller can frame it where it lies.
    pub fn read_slots(
        &mut self,
        tun: &SyncDevice,
        buf: &mut [u8],
        stride: usize,
        headroom: usize,
        drops: &mut DropTally,
        fill: bool,
    ) -> usize {
        let mut chunks = buf.chunks_mut(stride);
        let mut slots: [&mut [u8]; TX_BATCH] =
            std::array::from_fn(|_| chunks.next().unwrap_or_default());
        let (n, drained) = read_batch(
            tun,
            &mut self.original,
            &mut slots,
            &mut self.sizes,
            headroom,
            drops,
            fill,
        );
        self.drained = drained;
        n
    }

    /// Length of packet `i` of the last read.
    #[inline]
    pub(crate) fn size(&self, i: usize) -> usize {
        self.sizes[i]
    }

    /// Whether the last read emptied the queue: the caller may then wait at once rather than
    /// read again (`poll` returns straight away if a packet came meanwhile), a system call less
    /// each time the path goes idle.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// The first `n` packets of the last read.
    pub fn packets(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.sizes)
            .take(n)
            .map(|(b, &len)| &b[..len])
    }
}

/// Read what is ready into `bufs` (each packet at `offset` in its buffer), up to a batch; see
/// [`TunReader::read`]. Returns the packets read and whether the queue was found empty.
fn read_batch<B: AsRef<[u8]> + AsMut<[u8]>>(
    tun: &SyncDevice,
    original: &mut [u8],
    bufs: &mut [B],
    sizes: &mut [usize],
    offset: usize,
    drops: &mut DropTally,
    fill: bool,
) -> (usize, bool) {
    let mut n = 0;
    // Without a buffer of a whole slot the queue cannot be read (a slot past the end of the
    // caller's buffer is empty).
    let usable = bufs
        .iter()
        .take_while(|b| b.as_ref().len() > offset)
        .count()
        .min(sizes.len());
    while n == 0 || (fill && usable - n >= TX_READ_ROOM) {
        if n == usable {
            break;
        }
        match tun.recv_multiple(
            original,
            &mut bufs[n..usable],
            &mut sizes[n..usable],
            offset,
        ) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (n, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::trace!(error = %e, "TUN read");
                drops.add(DropReason::Malformed);
                break;
            }
        }
    }
    (n, false)
}

/// Batched UDP receives (recvmmsg, GRO when on), handed out one datagram at a time.
pub struct UdpReader {
    big: Vec<u8>,
    slot: usize,
    meta: [RecvMeta; RX_BATCH],
}

impl UdpReader {
    /// `max_datagram`: the largest datagram expected without GRO.
    pub fn new(gro: bool, max_datagram: usize) -> Self {
        let slot = if gro { GRO_BUF } else { max_datagram };
        UdpReader {
            big: vec![0u8; RX_BATCH * slot],
            slot,
            meta: [RecvMeta::default(); RX_BATCH],
        }
    }

    /// Receive one batch and call `f(source, datagram)` for each datagram in it, GRO
    /// segments split apart. Returns whether more may be waiting: false when the batch was not
    /// full (the socket was empty; the caller waits, and `poll` returns straight away if a
    /// datagram came meanwhile).
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        state: &UdpSocketState,
        mut f: impl FnMut(SocketAddr, &[u8]),
    ) -> bool {
        let received = {
            let mut chunks = self.big.chunks_mut(self.slot);
            let mut iovs: [IoSliceMut<'_>; RX_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            state.recv(UdpSockRef::from(sock), &mut iovs, &mut self.meta)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            // An ICMP error queued on the socket, say: read again.
            Err(e) => {
                tracing::trace!(error = %e, "UDP receive");
                return true;
            }
        };
        let slot = self.slot;
        for (i, m) in self.meta.iter().take(n).enumerate() {
            let data = &self.big[i * slot..i * slot + m.len.min(slot)];
            // An empty datagram is still a datagram to judge (and count); chunks() yields none.
            let empty: &[&[u8]] = if data.is_empty() { &[&[]] } else { &[] };
            for datagram in data.chunks(m.stride.max(1)).chain(empty.iter().copied()) {
                f(m.addr, datagram);
            }
        }
        n == RX_BATCH
    }
}

/// Received counters for the peer of the current stretch of datagrams, added once per stretch,
/// with the time the batch was read: the peer's "last heard" is one relaxed store per stretch.
pub struct PeerAcc {
    peer: Option<PeerId>,
    packets: u64,
    bytes: u64,
    at: Stamp,
}

impl PeerAcc {
    /// An accumulator for a batch read at `at`.
    pub fn new(at: Stamp) -> Self {
        PeerAcc {
            peer: None,
            packets: 0,
            bytes: 0,
            at,
        }
    }

    #[inline]
    pub fn add(&mut self, table: &RouteTable, peer: PeerId, bytes: usize) {
        if self.peer != Some(peer) {
            self.flush(table);
            self.peer = Some(peer);
        }
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn flush(&mut self, table: &RouteTable) {
        if let Some(p) = self.peer.take() {
            let stats = &table.peer(p).stats;
            stats.rx(self.packets, self.bytes);
            stats.heard(self.at);
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// Send each run with one `sendmsg` (GSO when it holds more than one datagram) and count it
/// against its peer: sent, or dropped as a send error.
pub fn send_runs(
    table: &RouteTable,
    sock: &UdpSocket,
    state: &UdpSocketState,
    stop: &AtomicBool,
    runs: &Runs,
) {
    send_runs_from(table, (sock, state), (sock, state), stop, runs);
}

/// [`send_runs`], each run from `flow` (the queue's source port), or from `data` (the data
/// port) for a peer reached through a NAT ([`crate::link::PeerLink::one_flow`]).
pub(crate) fn send_runs_from(
    table: &RouteTable,
    flow: (&UdpSocket, &UdpSocketState),
    data: (&UdpSocket, &UdpSocketState),
    stop: &AtomicBool,
    runs: &Runs,
) {
    for run in runs.runs() {
        let peer = table.peer(run.peer);
        let (sock, state) = if peer.one_flow() { data } else { flow };
        let t = Transmit {
            destination: peer.endpoint(),
            ecn: None,
            contents: runs.bytes(run),
            segment_size: (run.datagrams > 1).then_some(run.segment),
            src_ip: None,
        };
        match send(sock, state, &t, stop) {
            Ok(()) => peer.stats.tx(
                run.datagrams as u64,
                run.inner_bytes as u64,
                run.pod_bytes as u64,
            ),
            Err(e) => {
                tracing::trace!(error = %e, peer = %peer.name, "UDP send");
                peer.stats
                    .count_drop(DropReason::SendError, run.datagrams as u64);
            }
        }
    }
}

/// Send one transmit, waiting while the socket buffer is full: backpressure, not loss.
pub(crate) fn send(
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
                wait(sock, libc::POLLOUT);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Sleep until `fd` is ready for `events` or the idle period ends.
pub fn wait(fd: &impl AsRawFd, events: libc::c_short) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe {
        libc::poll(&mut p, 1, IDLE_POLL_MS);
    }
}
