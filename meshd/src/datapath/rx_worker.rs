//! The UDP → TUN loop every receiving queue runs ([`rx_loop`]), and its hand-off to TX: the
//! answer the kernel makes to a packet the loop wrote is sent by the loop at once
//! ([`answer_from_rx`]).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::flows::MAX_FLOW_PORTS;
use super::gro::Coalescer;
use super::io::{PeerAcc, UdpReader};
use super::waiter::{wait_any, Waiter};
use super::worker::{send_batch, TxState};
use super::{Encap, Queue, Received, Rx, Shared};
use crate::stats::{DropReason, DropTally, Stamp};
use crate::wire::ip::may_answer;

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
        // A lone datagram whose packet the kernel may answer at once: hold the sleeping TX
        // workers' queues across the write, so that the answer wakes nobody (`Claim`).
        let lone = datagrams == 1;
        let mut claim = if answerable && lone {
            Claim::take(q, all)
        } else {
            Claim::default()
        };
        wrote |= flush(&mut out, q, &mut rx.drops);
        rx.drops.flush_into(&shared.routes.unattributed);
        q.counters
            .rx_datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
        if wrote && answerable {
            if claim.is_empty() {
                answer_from_rx(shared, q, all, lone);
            } else {
                claim.answer(shared);
            }
        }
        drop(claim);
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

/// The RX worker's hand-off to TX: a packet it just wrote to the TUN device often has its
/// answer waiting in the TUN queue when the write returns (the kernel delivers it and replies
/// in the same softirq: a ping's echo, a TCP ACK). When the TX worker sleeps, send that answer
/// from here rather than wake it: one thread wake-up less per round trip. For a `lone`
/// datagram (a request at a low rate) the sleeping TX workers are held across the write
/// ([`Claim`]), so that none of them wakes for the answer; this function is the rest: a busy
/// round, or no claim to be had. Then the TX worker, woken all the same, finds the queue empty
/// or waits for the lock; order is kept by the lock.
///
/// The kernel puts an answer in the TUN queue its flow hashes to, which need not be `own`: an
/// ICMP echo reply does not hash as its request did, and lands in another queue. So when
/// `own` has nothing and the round was a `lone` datagram, the other queues whose TX workers
/// sleep are looked at too: a read each. Only after a write of something the kernel may answer
/// at once ([`may_answer`]): at the end of a round trip (an echo reply written) those reads
/// found nothing and only kept the woken application off this CPU.
pub(super) fn answer_from_rx<E: Encap>(
    shared: &Shared<E>,
    own: &Queue,
    all: &[Arc<Queue>],
    lone: bool,
) {
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
    send_answer(shared, q, &mut st)
}

/// Send what `q`'s TUN queue holds, with its TX state held, counted as answers; whether
/// anything was sent.
fn send_answer<E: Encap>(shared: &Shared<E>, q: &Queue, st: &mut TxState) -> bool {
    let (sent, _) = send_batch(shared, q, st, false);
    q.counters
        .answered
        .fetch_add(sent as u64, Ordering::Relaxed);
    sent > 0
}

/// Queues whose TX workers sleep, held by an RX worker across a TUN write it will answer: each
/// queue's TX state is locked and its TX worker's wake-up for the TUN queue stopped
/// ([`super::waiter::Waiter::watch_main`]), so that the answer the kernel queues during the
/// write (in its own queue, or another's: an echo reply hashes elsewhere) wakes no thread that
/// would only find it sent, or wait for the lock while it is. Dropping the claim resumes each
/// wake-up before letting go of the lock: whatever arrived meanwhile and was not sent wakes its
/// TX worker then. At most [`CLAIM_MAX`] queues, the RX worker's own first.
///
/// Measured (BENCHMARKS.md, issue 25): at 1000 pings a second the data-path threads' CPU a
/// ping fell by about a seventh and the round trip by 14–36 µs; at 20 a second, within the
/// noise (an earlier attempt, which let the TX worker wake and then held it back, was slower
/// from cold: the woken worker on the other CPU sometimes sent the answer first).
#[derive(Default)]
struct Claim<'a> {
    held: [Option<(&'a Queue, MutexGuard<'a, TxState>)>; CLAIM_MAX],
}

/// Queues a claim holds at most: each costs two `epoll_ctl` calls, and a read unless an
/// earlier one held the answer.
const CLAIM_MAX: usize = 4;

impl<'a> Claim<'a> {
    fn take(own: &'a Queue, all: &'a [Arc<Queue>]) -> Claim<'a> {
        let mut claim = Claim::default();
        let others = all.iter().map(|q| &**q).filter(|q| !std::ptr::eq(*q, own));
        let idle = std::iter::once(own)
            .chain(others)
            .filter(|q| q.tx_idle.load(Ordering::SeqCst));
        let mut slots = claim.held.iter_mut();
        for q in idle {
            let (Some(w), Ok(st)) = (&q.tx_waiter, q.tx.try_lock()) else {
                continue;
            };
            let Some(slot) = slots.next() else { break };
            // Refused (it never is for a registered descriptor): the TX worker wakes as it
            // would without a claim, and the hand-off below still answers.
            if w.watch_main(false) {
                *slot = Some((q, st));
            }
        }
        claim
    }

    fn is_empty(&self) -> bool {
        self.held.iter().all(Option::is_none)
    }

    /// Send what the held queues hold, own queue first, until one had something.
    fn answer<E: Encap>(&mut self, shared: &Shared<E>) {
        for (q, st) in self.held.iter_mut().flatten() {
            if send_answer(shared, q, st) {
                return;
            }
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        for (q, st) in self.held.iter_mut().filter_map(Option::take) {
            if let Some(w) = &q.tx_waiter {
                w.watch_main(true);
            }
            drop(st);
        }
    }
}
