//! TUN → UDP, encrypted: a batch of packets is routed, each encrypted by its peer's session
//! straight into one contiguous buffer, and grouped into *runs* that one GSO `sendmsg` each
//! carries (consecutive datagrams to one peer, all of one size but the last, which may be
//! shorter: the kernel splits them again at `segment_size`).
//!
//! [`TxBatch`] does no I/O, so the no-allocation test drives it directly; [`tx_loop`] is the
//! worker around it.

use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use meshd_crypto::session::MIN_OUT_LEN;
use meshd_crypto::wire::DATA_OVERHEAD;
use meshd_crypto::{Action, Session};

use super::super::encode::MAX_GSO_BYTES;
use super::super::io::{send_runs, wait, RunOut, TunReader, TX_BATCH};
use super::{Queue, Shared};
use crate::routes::{PeerId, RouteTable};
use crate::stats::{DropReason, DropTally};
use crate::wire::ip::v4_dst;

/// Packets encrypted per lock of a session. Holding it for a whole batch (~100 µs) made the
/// RX worker wait to decrypt the reverse direction's ACKs, which slowed a TCP stream; one lock
/// per few packets costs nothing measurable when uncontended.
pub const HOLD_PACKETS: usize = 4;

/// Consecutive datagrams to one peer, contiguous in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub peer: PeerId,
    pub start: usize,
    pub len: usize,
    /// Size of every datagram but the last.
    pub segment: usize,
    pub datagrams: usize,
    /// Plaintext bytes, for counters.
    pub inner_bytes: usize,
    last: usize,
}

pub struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    max_per_run: usize,
}

impl TxBatch {
    /// Room for `packets` packets of up to `mtu` bytes, at most `max_per_run` datagrams per
    /// run (1 without GSO; the socket's GSO segment limit with).
    pub fn new(packets: usize, mtu: usize, max_per_run: usize) -> Self {
        TxBatch {
            buf: vec![0; packets * (mtu + DATA_OVERHEAD).max(MIN_OUT_LEN)],
            used: 0,
            runs: Vec::with_capacity(packets),
            max_per_run: max_per_run.max(1),
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }

    pub fn set_max_per_run(&mut self, n: usize) {
        self.max_per_run = n.max(1);
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn bytes(&self, run: &Run) -> &[u8] {
        &self.buf[run.start..run.start + run.len]
    }

    /// Encrypt a batch of IP packets read from the TUN device. A peer's session stays locked
    /// for up to [`HOLD_PACKETS`] consecutive packets to that peer (a TSO super-packet's
    /// segments all go to one), then is released so the RX worker can decrypt meanwhile.
    pub fn push_all<'p>(
        &mut self,
        table: &RouteTable,
        packets: impl Iterator<Item = &'p [u8]>,
        drops: &mut DropTally,
    ) {
        let mut held: Option<(PeerId, MutexGuard<'_, Session>)> = None;
        let mut held_for = 0;
        for packet in packets {
            let Some(id) = route(table, packet) else {
                drops.add(DropReason::NoRoute);
                continue;
            };
            let entry = table.peer(id);
            let Some(wg) = &entry.wg else {
                drops.add(DropReason::NoSession);
                continue;
            };
            let room = &mut self.buf[self.used..];
            if room.len() < MIN_OUT_LEN.max(packet.len() + DATA_OVERHEAD)
                || self.runs.len() == self.runs.capacity()
            {
                // The caller sizes batches so this cannot happen; count rather than overrun.
                drops.add(DropReason::SendError);
                continue;
            }
            if held.as_ref().map(|(p, _)| *p) != Some(id) || held_for == HOLD_PACKETS {
                // Unlock the previous peer first: a worker never holds two sessions.
                drop(held.take());
                held = Some((id, wg.lock()));
                held_for = 0;
            }
            held_for += 1;
            let Some((_, session)) = held.as_mut() else {
                continue;
            };
            match session.encapsulate(packet, room) {
                Action::WriteToNetwork(n) => self.append(id, n, packet.len()),
                // Queued behind a handshake already in flight.
                Action::Done => {}
                Action::Error(e) => entry.stats.count_drop(DropReason::from_session(e), 1),
                Action::WriteToTunnelV4(..) | Action::WriteToTunnelV6(..) => {
                    drops.add(DropReason::Malformed)
                }
            }
        }
    }

    #[inline]
    fn append(&mut self, peer: PeerId, n: usize, inner: usize) {
        let start = self.used;
        self.used += n;
        if let Some(r) = self.runs.last_mut() {
            if r.peer == peer
                && r.datagrams < self.max_per_run
                && r.last == r.segment
                && n <= r.segment
                && r.len + n <= MAX_GSO_BYTES
            {
                r.len += n;
                r.datagrams += 1;
                r.last = n;
                r.inner_bytes += inner;
                return;
            }
        }
        self.runs.push(Run {
            peer,
            start,
            len: n,
            segment: n,
            datagrams: 1,
            inner_bytes: inner,
            last: n,
        });
    }
}

/// The peer that owns an IPv4 packet's destination. IPv6 has no pod subnets yet.
#[inline]
fn route(table: &RouteTable, packet: &[u8]) -> Option<PeerId> {
    if packet.first()? >> 4 != 4 {
        return None;
    }
    table.lookup_v4(v4_dst(packet)?)
}

pub fn tx_loop(shared: &Shared, q: &Queue) {
    let mut reader = TunReader::new(shared.mtu);
    let mut batch = TxBatch::new(TX_BATCH, shared.mtu, q.gso_segments);
    let mut drops = DropTally::default();
    let (sock, state) = &*q.socket;
    while !shared.stop.load(Ordering::Relaxed) {
        let n = reader.read(&q.tun, &mut drops);
        if n == 0 {
            drops.flush_into(&shared.routes.unattributed);
            wait(&*q.tun, libc::POLLIN);
            continue;
        }
        let table = shared.routes.load();
        batch.clear();
        batch.set_max_per_run(state.max_gso_segments().min(q.gso_segments));
        batch.push_all(&table, reader.packets(n), &mut drops);
        let runs = batch.runs().iter().map(|run| RunOut {
            peer: run.peer,
            bytes: batch.bytes(run),
            segment: run.segment,
            datagrams: run.datagrams,
            inner_bytes: run.inner_bytes,
        });
        send_runs(&table, sock, state, &shared.stop, runs);
        drops.flush_into(&shared.routes.unattributed);
    }
}
