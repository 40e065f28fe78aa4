//! The loops every queue runs, once for any [`Encap`]: TUN → UDP ([`tx_loop`]) and UDP → TUN
//! ([`rx_loop`]).
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
//! ([`answer_from_rx`]): a ping crosses each node on one thread, where it took two. The TX
//! state ([`TxState`]) sits behind a per-queue lock that only the queue's TX loop and the RX
//! loops take, once per batch, so one flow's packets leave in the order they came.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use super::flows::MAX_FLOW_PORTS;
use super::gro::Coalescer;
use super::io::{send_runs_from, PeerAcc, TunReader, UdpReader, TX_BATCH};
use super::runs::Runs;
use super::waiter::Waiter;
use super::waiter::{wait_any, wait_or_stop};
use super::{Encap, EncodeBatch, Encoded, Queue, Received, Rx, Shared};
use crate::kernel::probe;
use crate::routes::RouteTable;
use crate::stats::{DropReason, DropTally, Stamp};
use crate::wire::ip::may_answer;

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
fn send_batch<E: Encap>(
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
    let waiter = Waiter::new(q.tun.as_raw_fd(), &[], libc::POLLIN, &shared.stop).ok();
    // Just woken: send the first read at once; busy: fill batches.
    let mut woke = true;
    while !shared.stop.is_set() {
        let (_, more) = send_batch(shared, q, &mut lock_tx(q), !woke);
        woke = false;
        if !more {
            q.tx_idle.store(true, Ordering::SeqCst);
            match &waiter {
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

/// The RX worker's hand-off to TX: a packet it just wrote to the TUN device often has its
/// answer waiting in the TUN queue when the write returns (the kernel delivers it and replies
/// in the same softirq: a ping's echo, a TCP ACK). When the TX worker sleeps, send that answer
/// from here rather than wake it: one thread wake-up less per round trip. The TX worker, woken
/// all the same, finds the queue empty or waits for the lock; order is kept by the lock.
///
/// The kernel puts an answer in the TUN queue its flow hashes to, which need not be `own`: an
/// ICMP echo reply does not hash as its request did, and lands in another queue. So when
/// `own` has nothing and the round was a `lone` datagram (a request at a low rate, not a
/// burst), the other queues whose TX workers sleep are looked at too: a read each. Only after
/// a write of something the kernel may answer at once ([`may_answer`]): at the end of a round
/// trip (an echo reply written) those reads found nothing and only kept the woken application
/// off this CPU.
fn answer_from_rx<E: Encap>(shared: &Shared<E>, own: &Queue, all: &[Arc<Queue>], lone: bool) {
    if answer_from(shared, own) || !lone {
        return;
    }
    for q in all.iter().filter(|q| !std::ptr::eq(&***q, own)) {
        if answer_from(shared, q) {
            return;
        }
    }
}

/// Send what `q`'s TUN queue holds, if its TX worker sleeps and nobody else holds its state;
/// whether anything was sent.
fn answer_from<E: Encap>(shared: &Shared<E>, q: &Queue) -> bool {
    if !q.tx_idle.load(Ordering::SeqCst) {
        return false;
    }
    let Ok(mut st) = q.tx.try_lock() else {
        return false;
    };
    let (sent, _) = send_batch(shared, q, &mut st, false);
    q.counters
        .answered
        .fetch_add(sent as u64, Ordering::Relaxed);
    sent > 0
}

pub(crate) fn rx_loop<E: Encap>(shared: &Shared<E>, q: &Queue, all: &[Arc<Queue>]) {
    let mut reader = UdpReader::new(q.gro, E::max_datagram(shared.mtu));
    let (vnet, uso) = (q.tun.tcp_gso(), q.tun.udp_gso());
    let mut out = Coalescer::new(E::RX_WRITE_BATCH, vnet, uso, !E::AUTHENTICATED);
    let (sock, state) = &*q.socket;
    let mut reply = |bytes: &[u8], to: SocketAddr| {
        if let Err(e) = sock.send_to(bytes, to) {
            tracing::trace!(error = %e, "UDP send of a handshake message");
        }
    };
    let mut rx = Rx {
        scratch: shared.encap.rx_scratch(),
        drops: DropTally::default(),
        reply: &mut reply,
        now: Stamp::now(),
    };
    // The source ports' sockets are read too, each only when `poll` said it had datagrams or
    // its last read was full, and once every FLOW_READ_EVERY busy rounds: a meshd peer answers
    // the data port, so they are usually empty and a read of one is a wasted call.
    let flows = &q.flows[..q.flows.len().min(MAX_FLOW_PORTS)];
    let mut flow_fds: [RawFd; MAX_FLOW_PORTS] = [-1; MAX_FLOW_PORTS];
    for (fd, s) in flow_fds.iter_mut().zip(flows) {
        *fd = s.0.as_raw_fd();
    }
    let flow_fds = &flow_fds[..flows.len()];
    let mut flow_ready = [false; MAX_FLOW_PORTS];
    let waiter = Waiter::new(sock.as_raw_fd(), flow_fds, libc::POLLIN, &shared.stop).ok();
    let mut rounds = 0u32;
    while !shared.stop.is_set() {
        let table = shared.routes.load();
        rx.now = Stamp::now();
        let mut acc = PeerAcc::new(rx.now);
        let mut wrote = false;
        // Something written may be answered by the kernel during the write (see
        // `answer_from_rx`): an echo request, TCP. An echo reply, UDP cannot be.
        let mut answerable = false;
        let mut datagrams = 0u64;
        let more = {
            let mut deliver = |from: SocketAddr, datagram: &[u8]| {
                datagrams += 1;
                // A buffer only for an encapsulation that delivers into one (WireGuard
                // decrypts there); cleartext delivers from where the packet lies.
                let room = E::packet_room(datagram.len());
                let buf = if room == 0 {
                    &mut [][..]
                } else {
                    out.next(room)
                };
                let full = match shared.encap.receive(&mut rx, &table, from, datagram, buf) {
                    Received::Deliver { peer, len } => {
                        acc.add(&table, peer, len);
                        answerable = answerable || may_answer(out.pending(len));
                        out.commit(len)
                    }
                    Received::Inside { peer, at, len } => {
                        acc.add(&table, peer, len);
                        let packet = &datagram[at..at + len];
                        answerable = answerable || may_answer(packet);
                        out.push(packet)
                    }
                    Received::Nothing => false,
                };
                if full {
                    wrote |= flush(&mut out, q, &mut rx.drops);
                }
            };
            let mut more = reader.recv(sock, state, &mut deliver);
            rounds = rounds.wrapping_add(1);
            for (ready, s) in flow_ready.iter_mut().zip(flows) {
                if *ready || rounds % FLOW_READ_EVERY == 0 {
                    *ready = reader.recv(&s.0, &s.1, &mut deliver);
                    more |= *ready;
                }
            }
            more
        };
        acc.flush(&table);
        wrote |= flush(&mut out, q, &mut rx.drops);
        rx.drops.flush_into(&shared.routes.unattributed);
        q.counters
            .rx_datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
        if wrote && answerable {
            answer_from_rx(shared, q, all, datagrams == 1);
        }
        if !more {
            let ready = &mut flow_ready[..flows.len()];
            match &waiter {
                Some(w) => {
                    w.wait(ready);
                }
                None => wait_any(sock, flow_fds, libc::POLLIN, ready, &shared.stop),
            }
        }
    }
}

/// Write what `out` holds to the queue's TUN device; whether there was anything.
fn flush(out: &mut Coalescer, q: &Queue, drops: &mut DropTally) -> bool {
    let mut failed = 0;
    let wrote = out.flush(&*q.tun, &mut failed);
    if failed > 0 {
        tracing::trace!(failed, "TUN writes");
        drops.add_n(DropReason::TunWriteError, failed);
    }
    wrote
}

/// How often (in busy rounds) an RX worker reads its queue's source port without being told.
const FLOW_READ_EVERY: u32 = 16;
