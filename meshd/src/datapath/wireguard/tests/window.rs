//! Eight TX queues encrypt for one peer and the peer takes their datagrams in the order the
//! queues send them: one queue is preempted between encrypting a full batch and sending it
//! while the seven others send batch after batch. Each queue holds what it encrypted until it
//! sends, so without a bound the late batch reaches the peer 1,792 counters behind the newest
//! and boringtun's 1,024-counter window refuses all of it as replays; with it (`tx.rs`), the
//! other queues send what they hold and wait, and nothing is lost.

use super::{handshake, packet, pair, Node};
use crate::datapath::io::TX_BATCH;
use crate::datapath::runs::Runs;
use crate::datapath::wireguard::Wireguard;
use crate::datapath::worker::encode_batch;
use crate::datapath::{Encap, Received};
use crate::stats::{DropReason, DropTally};

const QUEUES: usize = 8;

/// Queue `q` of `a` encodes `packets`, sending (to `b`, which takes each datagram at once)
/// whenever the peer's bound asks it to; returns how many are left when it must wait for
/// another queue (holding nothing), 0 once all are encoded (held, not sent).
fn encode(a: &Node, b: &Node, q: usize, runs: &mut Runs, packets: &[Vec<u8>]) -> usize {
    let mut left = packets;
    loop {
        let table = a.routes().load();
        let taken = encode_batch(
            &a.encap,
            &table,
            left.iter().map(|p| &p[..]),
            runs,
            &mut DropTally::default(),
            q,
        );
        left = &left[taken..];
        if left.is_empty() {
            return 0;
        }
        if runs.runs().is_empty() {
            return left.len();
        }
        send(a, b, q, runs);
    }
}

/// Queue `q` sends what it holds; `b` takes it in that order.
fn send(a: &Node, b: &Node, q: usize, runs: &mut Runs) -> usize {
    let mut delivered = 0;
    for r in runs.runs() {
        for d in runs.bytes(r).chunks(r.segment) {
            if matches!(b.receive(a.addr(), d).0, Received::Deliver { .. }) {
                delivered += 1;
            }
        }
    }
    a.encap.sent(&a.routes().load(), q, runs);
    runs.clear();
    delivered
}

#[test]
fn eight_queues_never_overrun_the_peers_replay_window() {
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    let batch: Vec<Vec<u8>> = (0..TX_BATCH)
        .map(|_| packet([10, 244, 1, 2], [10, 244, 2, 3], 100))
        .collect();
    let mut runs: Vec<Runs> = (0..QUEUES)
        .map(|_| Runs::new(TX_BATCH, Wireguard::datagram_len(1420), 64))
        .collect();
    let mut delivered = 0;
    // Queue 0 encrypts its batch and is preempted before it sends.
    assert_eq!(encode(&a, &b, 0, &mut runs[0], &batch), 0);
    let mut waiting = Vec::new();
    for (q, r) in runs.iter_mut().enumerate().skip(1) {
        match encode(&a, &b, q, r, &batch) {
            0 => delivered += send(&a, &b, q, r),
            left => waiting.push((q, left)),
        }
    }
    let held_back = waiting.len();
    delivered += send(&a, &b, 0, &mut runs[0]);
    for (q, left) in waiting {
        assert_eq!(
            encode(&a, &b, q, &mut runs[q], &batch[TX_BATCH - left..]),
            0
        );
        delivered += send(&a, &b, q, &mut runs[q]);
    }
    assert_eq!(b.peer_drops("n1", DropReason::Replayed), 0);
    assert_eq!(delivered, QUEUES * TX_BATCH);
    assert!(held_back > 0, "no queue was held back");
}
