//! The loops every queue runs, once for any [`Encap`]: TUN → UDP ([`tx_loop`]) and UDP → TUN
//! ([`rx_loop`]).
//!
//! Each loop allocates its buffers once, reads a batch, routes it against one route-table
//! snapshot, and writes it out in as few system calls as the kernel allows. When the far side is
//! full (a UDP send buffer, say), the loop waits for it instead of dropping: backpressure reaches
//! the sender through the TUN queue.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::io::{send_runs, wait, PeerAcc, TunReader, TunWriter, UdpReader, TX_BATCH};
use super::runs::Runs;
use super::{Encap, EncodeBatch, Encoded, Queue, Received, Rx, Shared};
use crate::routes::RouteTable;
use crate::stats::{DropReason, DropTally, Stamp};

/// Route and encode a batch of packets read from the TUN device into `runs`: the TX path's
/// per-packet loop, without I/O (the no-allocation test drives it directly).
pub fn encode_batch<'p, 't, E: Encap>(
    encap: &'t E,
    table: &'t RouteTable,
    packets: impl Iterator<Item = &'p [u8]>,
    runs: &mut Runs,
    drops: &mut DropTally,
) {
    let mut tx = encap.tx(table);
    for packet in packets {
        let Some(id) = table.route(packet) else {
            drops.add(DropReason::NoRoute);
            continue;
        };
        let Some(room) = runs.room(E::datagram_len(packet.len())) else {
            // The caller sizes batches so this cannot happen; count rather than overrun.
            drops.add(DropReason::SendError);
            continue;
        };
        let peer = table.peer(id);
        match tx.encode(id, peer, packet, room) {
            Encoded::Datagram(n) => runs.commit(id, n, packet.len()),
            Encoded::Queued => {}
            Encoded::PeerDrop(reason) => peer.stats.count_drop(reason, 1),
            Encoded::Drop(reason) => drops.add(reason),
        }
    }
}

pub(crate) fn tx_loop<E: Encap>(shared: &Shared<E>, q: &Queue) {
    let mut reader = TunReader::new(shared.mtu);
    let mut runs = Runs::new(TX_BATCH, E::datagram_len(shared.mtu), q.gso_segments);
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
        runs.clear();
        runs.set_max_per_run(state.max_gso_segments().min(q.gso_segments));
        encode_batch(
            &*shared.encap,
            &table,
            reader.packets(n),
            &mut runs,
            &mut drops,
        );
        send_runs(&table, sock, state, &shared.stop, &runs);
        drops.flush_into(&shared.routes.unattributed);
    }
}

pub(crate) fn rx_loop<E: Encap>(shared: &Shared<E>, q: &Queue) {
    let mut reader = UdpReader::new(q.gro, E::max_datagram(shared.mtu));
    let mut out = TunWriter::new(E::RX_WRITE_BATCH);
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
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let table = shared.routes.load();
        let mut acc = PeerAcc::new(Stamp::now());
        let got = reader.recv(sock, state, |from, datagram| {
            let buf = out.next(E::packet_room(datagram.len()));
            let r = shared.encap.receive(&mut rx, &table, from, datagram, buf);
            if let Received::Deliver { peer, len } = r {
                acc.add(&table, peer, len);
                if out.commit(len) {
                    out.flush(&q.tun, &mut rx.drops);
                }
            }
        });
        acc.flush(&table);
        out.flush(&q.tun, &mut rx.drops);
        rx.drops.flush_into(&shared.routes.unattributed);
        if !got {
            wait(sock, libc::POLLIN);
        }
    }
}
