//! The cleartext VXLAN loops every queue runs: TUN → UDP ([`tx_loop`]) and UDP → TUN
//! ([`rx_loop`]).
//!
//! Each loop allocates its buffers once, reads a batch, routes it against one route-table
//! snapshot, and writes it out in as few system calls as the kernel allows. When the far side is
//! full (a UDP send buffer, say), the loop waits for it instead of dropping: backpressure reaches
//! the sender through the TUN queue.

use quinn_udp::UdpSocketState;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tun_rs::SyncDevice;

use super::encode::{decode, Encoder};
use super::io::{send_runs, wait, PeerAcc, RunOut, TunReader, TunWriter, UdpReader, TX_BATCH};
use crate::routes::Routes;
use crate::stats::DropTally;
use crate::wire::vxlan::HEADER_LEN;

/// Inner packets handed to one `send_multiple` (and so to one GRO coalescing pass).
const RX_WRITE_BATCH: usize = 128;

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
    let mut reader = TunReader::new(shared.mtu);
    let mut enc = Encoder::new(
        TX_BATCH * (HEADER_LEN + shared.mtu),
        TX_BATCH,
        q.gso_segments,
    );
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
        enc.clear();
        enc.set_max_frames_per_run(state.max_gso_segments().min(q.gso_segments));
        for packet in reader.packets(n) {
            enc.push(&table, packet, &mut drops);
        }
        let runs = enc.runs().iter().map(|run| RunOut {
            peer: run.peer,
            bytes: enc.bytes(run),
            segment: run.segment,
            datagrams: run.frames,
            inner_bytes: run.inner_bytes,
        });
        send_runs(&table, sock, state, &shared.stop, runs);
        drops.flush_into(&shared.routes.unattributed);
    }
}

pub fn rx_loop(shared: &Shared, q: &Queue) {
    let mut reader = UdpReader::new(q.gro, shared.mtu + HEADER_LEN + 64);
    let mut out = TunWriter::new(RX_WRITE_BATCH);
    let mut drops = DropTally::default();
    let (sock, state) = &*q.socket;
    while !shared.stop.load(Ordering::Relaxed) {
        let table = shared.routes.load();
        let mut acc = PeerAcc::default();
        let got = reader.recv(sock, state, |from, datagram| {
            match decode(&table, from.ip(), shared.vni, datagram) {
                Ok((peer, packet)) => {
                    acc.add(&table, peer, packet.len());
                    if out.push(packet) {
                        out.flush(&q.tun, &mut drops);
                    }
                }
                Err((Some(peer), reason)) => table.peer(peer).stats.count_drop(reason, 1),
                Err((None, reason)) => drops.add(reason),
            }
        });
        acc.flush(&table);
        out.flush(&q.tun, &mut drops);
        drops.flush_into(&shared.routes.unattributed);
        if !got {
            wait(sock, libc::POLLIN);
        }
    }
}
