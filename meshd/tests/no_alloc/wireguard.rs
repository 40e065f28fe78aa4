use super::{allocations_in, packet};
use meshd::datapath::runs::Runs;
use meshd::datapath::wireguard::{Wireguard, SCRATCH_LEN};
use meshd::datapath::worker::encode_batch;
use meshd::datapath::{Encap, PeerAcc, Received, Rx};
use meshd::link::registry::Links;
use meshd::peers::wireguard::NodeCrypto;
use meshd::peers::{Endpoint, EndpointSource, Peer, PeerKey};
use meshd::routes::{Local, Routes};
use meshd::stats::{DropTally, Stamp};
use meshd_crypto::{ClusterSecret, Keyring, PrivateKey, PublicKey};
use std::net::SocketAddr;
use std::sync::Arc;

/// A node's route table with one keyed peer, and its encapsulation.
struct Node {
    routes: Routes,
    wg: Wireguard,
}

fn node(n: u8, key: &PrivateKey, secret: &ClusterSecret, peer: (u8, PublicKey)) -> Node {
    let crypto = Arc::new(NodeCrypto::new(
        key.clone(),
        Keyring::single(secret.clone()),
        100,
    ));
    let routes = Routes::new(Local {
        name: format!("n{n}"),
        vni: 1,
        port: 51820,
    });
    let p = Peer {
        name: format!("n{}", peer.0),
        endpoints: vec![Endpoint {
            addr: format!("198.18.0.{}:51820", peer.0).parse().unwrap(),
            source: EndpointSource::Configured,
        }],
        subnet: format!("10.244.{}.0/24", peer.0).parse().unwrap(),
        key: Some(PeerKey::fixed(peer.1)),
        kernel_vxlan: false,
    };
    let mut links = Links::new(routes.local().clone(), Some(crypto.clone()), 1420);
    routes.install(&links.reconcile(&[p], 0).links);
    Node {
        routes,
        wg: Wireguard {
            crypto,
            nat_keepalive: None,
            hole_punching: false,
        },
    }
}

/// One node's receive side: buffers allocated once, as a worker's are.
struct Receiver {
    out: Vec<u8>,
    scratch: Vec<u8>,
    drops: DropTally,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver {
            out: vec![0u8; 65_600],
            scratch: vec![0u8; SCRATCH_LEN],
            drops: DropTally::default(),
        }
    }

    fn take(
        &mut self,
        at: &Node,
        from: SocketAddr,
        d: &[u8],
        replies: &mut Vec<Vec<u8>>,
    ) -> Received {
        let mut reply = |b: &[u8], _| replies.push(b.to_vec());
        // Moving the buffers in and out allocates nothing (an empty Vec holds no memory).
        let mut rx = Rx {
            scratch: std::mem::take(&mut self.scratch),
            drops: std::mem::take(&mut self.drops),
            reply: &mut reply,
            now: Stamp::now(),
        };
        let r = at
            .wg
            .receive(&mut rx, &at.routes.load(), from, d, &mut self.out);
        (self.scratch, self.drops) = (rx.scratch, rx.drops);
        r
    }
}

#[test]
fn encrypt_and_decrypt_allocate_nothing_per_packet() {
    let secret = ClusterSecret::generate();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let a = node(1, &ka, &secret, (2, kb.public_key()));
    let b = node(2, &kb, &secret, (1, ka.public_key()));
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "198.18.0.1:51820".parse().unwrap(),
        "198.18.0.2:51820".parse().unwrap(),
    );
    let mut batch = Runs::new(64, Wireguard::datagram_len(1420), 64);
    let mut drops = DropTally::default();
    let (mut rx_a, mut rx_b) = (Receiver::new(), Receiver::new());

    // Handshake, allocations allowed.
    let first = packet([10, 244, 1, 2], [10, 244, 2, 3], 100);
    encode_batch(
        &a.wg,
        &a.routes.load(),
        std::iter::once(&first[..]),
        &mut batch,
        &mut drops,
        0,
    );
    let init = batch.bytes(&batch.runs()[0]).to_vec();
    let mut replies = Vec::new();
    rx_b.take(&b, a_addr, &init, &mut replies);
    let response = replies.pop().unwrap();
    rx_a.take(&a, b_addr, &response, &mut replies);
    for r in std::mem::take(&mut replies) {
        rx_b.take(&b, a_addr, &r, &mut replies);
    }

    // A TSO super-packet's worth of segments, then their decryption.
    let segments: Vec<Vec<u8>> = (0..44)
        .map(|_| packet([10, 244, 1, 2], [10, 244, 2, 3], 1380))
        .collect();
    let mut no_replies = Vec::with_capacity(0);
    let mut delivered = 0usize;
    let allocs = allocations_in(|| {
        for _ in 0..100 {
            batch.clear();
            let table = a.routes.load();
            let taken = encode_batch(
                &a.wg,
                &table,
                segments.iter().map(|s| &s[..]),
                &mut batch,
                &mut drops,
                0,
            );
            assert_eq!(taken, segments.len());
            // Sent, as the worker would: the queue holds nothing of the peer's any more.
            a.wg.sent(&table, 0, &batch);
            for run in batch.runs() {
                let bytes = batch.bytes(run);
                for d in bytes.chunks(run.segment) {
                    if let Received::Deliver { len, .. } = rx_b.take(&b, a_addr, d, &mut no_replies)
                    {
                        delivered += len;
                    }
                }
            }
        }
    });

    assert_eq!(batch.runs().len(), 1, "{:?}", batch.runs());
    assert_eq!(delivered, 100 * 44 * 1400);
    assert!(no_replies.is_empty());
    assert_eq!(allocs, 0, "the encrypted per-packet path allocated");
}

/// What the RX path refuses it also remembers for the control thread: data from a peer on a
/// session we lost flags that peer for a handshake, a refused initiator is noted; and the
/// receive tally stamps the peer's "last heard". None of it allocates. (Identifying an
/// initiator, `meshd_crypto::identify_initiator`, allocates once per initiation: a handshake
/// cost, rate-limited, not a per-packet one; the note it leads to is counted here alone.)
#[test]
fn refusals_and_the_receive_tally_allocate_nothing() {
    let secret = ClusterSecret::generate();
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let b = node(2, &kb, &secret, (1, ka.public_key()));
    let a_addr: SocketAddr = "198.18.0.1:51820".parse().unwrap();
    // Data on a session B does not have: type 4, an index no session of B's holds.
    let mut lost = vec![0u8; 132];
    lost[0] = 4;
    lost[4..8].copy_from_slice(&0x7f_ffffu32.to_le_bytes());
    let mut rx = Receiver::new();
    let mut replies = Vec::with_capacity(0);
    let stranger = PrivateKey::generate().public_key();
    let table = b.routes.load();
    let allocs = allocations_in(|| {
        for _ in 0..100 {
            assert_eq!(rx.take(&b, a_addr, &lost, &mut replies), Received::Nothing);
            b.wg.crypto
                .rejected
                .note(&stranger, a_addr.ip(), Stamp::now());
            let mut acc = PeerAcc::new(Stamp::now());
            acc.add(&table, 0, 100);
            acc.add(&table, 0, 100);
            acc.flush(&table);
        }
    });
    assert!(replies.is_empty());
    assert_eq!(allocs, 0, "refusing (and remembering) allocated");
    assert!(table.peer(0).stats.last_heard().is_some());
    assert!(table
        .peer(0)
        .wg
        .as_ref()
        .unwrap()
        .take_handshake_wanted(Stamp::now()));
    assert!(b.wg.crypto.rejected.take(&stranger, Stamp::now()));
}
