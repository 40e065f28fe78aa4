//! The loops every queue runs, once for any [`Encap`]: TUN → UDP ([`tx_loop`]) and UDP → TUN
//! ([`super::rx_worker`]).
//!
//! Each loop allocates its buffers once, reads a batch, routes it against one route-table
//! snapshot, and writes it out in as few system calls as the kernel allows. When the far side is
//! full (a UDP send buffer, say), the loop waits for it instead of dropping: backpressure reaches
//! the sender through the TUN queue.
//!
//! Idle to busy: a TX loop just woken sends its first read at once (it fills batches again
//! from the next read on), a loop that found its source empty waits in `poll` at once (no
//! second read that would only say "empty" again), and the RX loop sends the answers its own
//! TUN write produced, from whichever TUN queue holds them, when that queue's TX loop sleeps
//! ([`super::rx_worker`]'s hand-off, its claim keeping that TX loop asleep): a ping crosses
//! each node on one thread, where it took two. The TX state ([`TxState`]) sits behind a
//! per-queue lock that only the queue's TX loop and the RX loops take, once per batch, so one
//! flow's packets leave in the order they came.

use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use super::io::{send_runs_from, TunReader, TX_BATCH};
use super::runs::Runs;
use super::waiter::wait_or_stop;
use super::{Encap, EncodeBatch, Encoded, Queue, Shared};
use crate::kernel::probe;
use crate::routes::RouteTable;
use crate::stats::{DropReason, DropTally};

/// Route and encode a batch of packets read from the TUN device into `runs`, for queue
/// `sender`: the TX path's per-packet loop, without I/O (the no-allocation test drives it
/// directly). Returns how many packets it took: all of them, unless a peer's datagrams in flight
/// were at their limit ([`Encoded::Blocked`]), in which case the caller sends (or waits) and
/// offers the rest again.
pub fn encode_batch<'p, 't, E: Encap>(
    encap: &'t E,
    table: &'t RouteTable,
    packets: impl Iterator<Item = &'p [u8]>,
    runs: &mut Runs,
    drops: &mut DropTally,
    sender: usize,
) -> usize {
    let mut tx = encap.tx(table, sender);
    let mut taken = 0;
    for packet in packets {
        let Some(id) = table.route(packet) else {
            drops.add(DropReason::NoRoute);
            taken += 1;
            continue;
        };
        let peer = table.peer(id);
        if runs.too_big().refuses(peer, packet) {
            taken += 1;
            continue;
        }
        let pod = !probe::is_node_echo(packet, peer.subnet);
        let Some(room) = runs.room(E::datagram_len(packet.len())) else {
            // The caller sizes batches so this cannot happen; count rather than overrun.
            drops.add(DropReason::SendError);
            taken += 1;
            continue;
        };
        match tx.encode(id, peer, packet, room) {
            Encoded::Datagram(n) => runs.commit(id, n, packet.len(), pod),
            Encoded::Queued => {}
            Encoded::PeerDrop(reason) => peer.stats.count_drop(reason, 1),
            Encoded::Drop(reason) => drops.add(reason),
            Encoded::Blocked => return taken,
        }
        taken += 1;
    }
    taken
}

/// Frame, in place, the `n` packets a [`TunReader::read_slots`] put in `runs`' buffer (packet
/// `i` at `i * stride + headroom`, `headroom` = the encapsulation's framing), and keep them as
/// runs: the TX path's per-packet loop where the encapsulation frames in place
/// ([`Encap::FRAMES_IN_PLACE`]), without I/O.
pub fn frame_batch<E: Encap>(
    encap: &E,
    table: &RouteTable,
    reader: &TunReader,
    n: usize,
    stride: usize,
    runs: &mut Runs,
    drops: &mut DropTally,
) {
    let headroom = E::datagram_len(0);
    let mut tx = encap.tx(table, 0);
    for i in 0..n {
        let (at, len) = (i * stride, reader.size(i));
        let Some(packet) = runs.buf_mut().get(at + headroom..at + headroom + len) else {
            drops.add(DropReason::Malformed);
            continue;
        };
        let Some(id) = table.route(packet) else {
            drops.add(DropReason::NoRoute);
            continue;
        };
        let peer = table.peer(id);
        let pod = !probe::is_node_echo(packet, peer.subnet);
        if runs.too_big_at(at + headroom, len, peer) {
            continue;
        }
        let Some(datagram) = runs.buf_mut().get_mut(at..at + headroom + len) else {
            drops.add(DropReason::Malformed);
            continue;
        };
        match tx.frame(id, peer, datagram) {
            Encoded::Datagram(k) => runs.commit_in_place(id, at, k, len, pod),
            Encoded::Queued => {}
            Encoded::PeerDrop(reason) => peer.stats.count_drop(reason, 1),
            Encoded::Drop(reason) => drops.add(reason),
            // Framing has no counters to hold back (cleartext).
            Encoded::Blocked => drops.add(DropReason::SendError),
        }
    }
}

/// A queue's TUN → UDP buffers: the batch read from the TUN device, the runs it is encoded
/// into, and the drops counted meanwhile. It lives in [`Queue::tx`], so that either worker can
/// send (one at a time).
pub(crate) struct TxState {
    /// The queue's index: its slot in each peer's `InFlight`.
    sender: usize,
    reader: TunReader,
    runs: Runs,
    drops: DropTally,
    /// Where the encapsulation frames in place: the slot each packet is read into.
    stride: usize,
}

impl TxState {
    pub(crate) fn new<E: Encap>(sender: usize, mtu: usize, gso_segments: usize) -> Self {
        let stride = E::datagram_len(mtu);
        TxState {
            sender,
            // Framing in place reads into the runs' buffer: no buffers of its own.
            reader: TunReader::new(if E::FRAMES_IN_PLACE { 0 } else { mtu }),
            runs: Runs::new(TX_BATCH, stride, gso_segments),
            drops: DropTally::default(),
            stride,
        }
    }
}

/// Read one batch from the queue's TUN device (filling it only with `fill`, see
/// [`TunReader::read`]), encode it and send it: the datagrams sent, and whether more may be
/// waiting (false once a read found the queue empty).
pub(super) fn send_batch<E: Encap>(
    shared: &Shared<E>,
    q: &Queue,
    st: &mut TxState,
    fill: bool,
) -> (usize, bool) {
    let mut sent = 0;
    let n = if E::FRAMES_IN_PLACE {
        let headroom = E::datagram_len(0);
        let buf = st.runs.buf_mut();
        st.reader
            .read_slots(&q.tun, buf, st.stride, headroom, &mut st.drops, fill)
    } else {
        st.reader.read(&q.tun, &mut st.drops, fill)
    };
    if n > 0 {
        let (_, state) = q.send_socket();
        let table = shared.routes.load();
        st.runs.clear();
        st.runs
            .set_max_per_run(state.max_gso_segments().min(q.gso_segments));
        if E::FRAMES_IN_PLACE {
            frame_batch(
                &*shared.encap,
                &table,
                &st.reader,
                n,
                st.stride,
                &mut st.runs,
                &mut st.drops,
            );
        } else {
            let mut taken = 0;
            let mut waits = 0u32;
            loop {
                taken += encode_batch(
                    &*shared.encap,
                    &table,
                    st.reader.packets(n).skip(taken),
                    &mut st.runs,
                    &mut st.drops,
                    st.sender,
                );
                if taken >= n || shared.stop.is_set() {
                    break;
                }
                // A peer's datagrams in flight are at the limit: send what this batch holds
                // (of every peer, so that no queue waits while holding), or, holding nothing,
                // wait for the queues that hold the oldest to send theirs.
                if st.runs.runs().is_empty() {
                    wait_for_others(&mut waits);
                } else {
                    sent += send_held(shared, &table, q, &mut st.runs, st.sender);
                }
            }
        }
        sent += send_held(shared, &table, q, &mut st.runs, st.sender);
        q.counters
            .tx_datagrams
            .fetch_add(sent as u64, Ordering::Relaxed);
        // Packets too big for their peer are answered, into the TUN device they came from.
        let failed = st.runs.too_big().flush(&*q.tun, q.tun.tcp_gso());
        st.drops.add_n(DropReason::TunWriteError, failed);
    }
    st.drops.flush_into(&shared.routes.unattributed);
    (sent, n > 0 && !st.reader.drained())
}

/// Send `runs` from queue `q`'s sockets, tell the encapsulation they are out of queue
/// `sender`'s hands, and empty them: the datagrams sent (or failed).
fn send_held<E: Encap>(
    shared: &Shared<E>,
    table: &RouteTable,
    q: &Queue,
    runs: &mut Runs,
    sender: usize,
) -> usize {
    let (sock, state) = q.send_socket();
    let (dsock, dstate) = &*q.socket;
    send_runs_from(
        table,
        (sock, state),
        (dsock, dstate),
        shared.stop.flag(),
        runs,
    );
    shared.encap.sent(table, sender, runs);
    let sent = runs.runs().iter().map(|r| r.datagrams).sum();
    runs.clear();
    sent
}

/// Yield to the queues that hold a peer's oldest datagrams unsent: they are between encoding
/// and sending a batch (never waiting themselves: a waiting queue holds nothing), so a few
/// yields usually do; after that, short sleeps rather than a spin on a busy machine.
fn wait_for_others(waits: &mut u32) {
    *waits += 1;
    if *waits <= 16 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

fn lock_tx(q: &Queue) -> MutexGuard<'_, TxState> {
    // A worker that panicked while holding it left only buffers behind: keep using them.
    q.tx.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn tx_loop<E: Encap>(shared: &Shared<E>, q: &Queue) {
    // Just woken: send the first read at once; busy: fill batches.
    let mut woke = true;
    while !shared.stop.is_set() {
        let (_, more) = send_batch(shared, q, &mut lock_tx(q), !woke);
        woke = false;
        if !more {
            q.tx_idle.store(true, Ordering::SeqCst);
            match &q.tx_waiter {
                Some(w) => {
                    w.wait(&mut []);
                }
                None => wait_or_stop(&*q.tun, libc::POLLIN, &shared.stop),
            }
            q.tx_idle.store(false, Ordering::SeqCst);
            woke = true;
        }
    }
}
