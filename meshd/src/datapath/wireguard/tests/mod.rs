//! Two (or three) nodes in one process, wired by hand: handshake through the real TX batch and
//! RX demultiplexer, then cryptokey routing, replays, unknown indices, strangers, a wrong
//! cluster secret, and how TX groups datagrams into GSO runs. Rotation is in `rotation.rs`,
//! membership flaps and restarts in `flaps.rs`, the timer thread's logs in `timers.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod flaps;
mod roaming;
mod rotation;
mod timers;
mod window;

use super::Wireguard;
use crate::backend::Backend;
use crate::datapath::runs::Runs;
use crate::datapath::worker::encode_batch;
use crate::datapath::{Encap, Received, Rx};
use crate::peers::wireguard::NodeCrypto;
use crate::peers::{Endpoint, EndpointSource, Peer, PeerKey, PeerSet};
use crate::routes::{Local, Routes};
use crate::stats::{DropReason, DropTally, PeerStats, Stamp};
use meshd_crypto::{ClusterSecret, Keyring, PrivateKey, PublicKey};
use std::net::SocketAddr;
use std::sync::Arc;

struct Node {
    n: u8,
    key: PrivateKey,
    encap: Wireguard,
    backend: Backend,
}

impl Node {
    fn new(n: u8, secret: &ClusterSecret) -> Node {
        let key = PrivateKey::generate();
        let crypto = NodeCrypto::new(key.clone(), Keyring::single(secret.clone()), 100);
        Node::with_crypto(n, key, crypto)
    }

    fn with_crypto(n: u8, key: PrivateKey, crypto: NodeCrypto) -> Node {
        let local = Local {
            name: format!("n{n}"),
            vni: 1,
            port: 51820,
        };
        let crypto = Arc::new(crypto);
        Node {
            n,
            key,
            encap: Wireguard {
                nat_keepalive: None,
                hole_punching: false,
                crypto: crypto.clone(),
            },
            backend: Backend::new(Arc::new(Routes::new(local)), Some(crypto), Vec::new(), 1420),
        }
    }

    fn routes(&self) -> &Routes {
        self.backend.routes()
    }

    fn public(&self) -> PublicKey {
        self.key.public_key()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, self.n], 51820))
    }

    /// This node as the others learn it from gossip: key and published secret ids.
    fn as_peer(&self) -> Peer {
        let ids = self.encap.crypto.keyring().ids();
        Peer {
            name: format!("n{}", self.n),
            endpoints: vec![Endpoint {
                addr: self.addr(),
                source: EndpointSource::Gossiped,
            }],
            subnet: format!("10.244.{}.0/24", self.n).parse().unwrap(),
            key: Some(PeerKey {
                public: self.public(),
                secret_ids: Some(ids),
            }),
            kernel_vxlan: false,
        }
    }

    fn knows(&self, peers: &[&Node]) {
        let list: Vec<_> = peers.iter().map(|p| p.as_peer()).collect();
        self.backend.update(|set| {
            *set = PeerSet::new(list);
            true
        });
    }

    /// A batch of packets through the TX path's per-packet loop into `batch`, by queue 0,
    /// which then holds nothing (as once the worker sent the batch).
    fn encode(&self, packets: &[Vec<u8>], batch: &mut Runs, drops: &mut DropTally) {
        let table = self.routes().load();
        let taken = encode_batch(
            &self.encap,
            &table,
            packets.iter().map(|p| &p[..]),
            batch,
            drops,
            0,
        );
        assert_eq!(taken, packets.len());
        self.encap.sent(&table, 0, batch);
    }

    /// The datagrams a batch of packets becomes, in order.
    fn send(&self, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut batch = Runs::new(64, Wireguard::datagram_len(1420), 64);
        self.encode(packets, &mut batch, &mut DropTally::default());
        let mut out = Vec::new();
        for r in batch.runs() {
            for d in batch.bytes(r).chunks(r.segment) {
                out.push(d.to_vec());
            }
        }
        out
    }

    /// Hands `datagram` from `from` to this node; returns the outcome, the plaintext, the
    /// replies it sent and the unattributed drops.
    fn receive(
        &self,
        from: SocketAddr,
        datagram: &[u8],
    ) -> (Received, Vec<u8>, Vec<Vec<u8>>, PeerStats) {
        let mut out = vec![0u8; 65_600];
        let mut replies = Vec::new();
        let mut reply = |b: &[u8], _to| replies.push(b.to_vec());
        let mut rx = Rx {
            scratch: self.encap.rx_scratch(),
            drops: DropTally::default(),
            reply: &mut reply,
            now: Stamp::now(),
        };
        let r = self
            .encap
            .receive(&mut rx, &self.routes().load(), from, datagram, &mut out);
        let unattributed = PeerStats::default();
        rx.drops.flush_into(&unattributed);
        let len = match r {
            Received::Deliver { len, .. } => len,
            Received::Nothing => 0,
            Received::Inside { .. } => unreachable!("WireGuard delivers what it decrypted"),
        };
        (r, out[..len].to_vec(), replies, unattributed)
    }

    fn peer_drops(&self, name: &str, reason: DropReason) -> u64 {
        let t = self.routes().load();
        let p = t.peers().iter().find(|p| p.name == name).unwrap();
        p.stats.dropped(reason)
    }
}

use crate::wire::ip::tests_support::ipv4_packet as packet;

/// A sends `first` to B: initiation, response, keepalive and the queued packet. Returns the
/// data datagram that carried `first`.
fn handshake(a: &Node, b: &Node, first: &[u8]) -> Vec<u8> {
    let init = a.send(&[first.to_vec()]);
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].len(), 148, "an initiation");
    let (r, _, replies, _) = b.receive(a.addr(), &init[0]);
    assert_eq!(r, Received::Nothing);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].len(), 92, "a response");
    let (r, _, replies, _) = a.receive(b.addr(), &replies[0]);
    assert_eq!(r, Received::Nothing);
    // A keepalive confirming the session, then the packet queued behind the handshake.
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].len(), 32);
    let (r, _, _, _) = b.receive(a.addr(), &replies[0]);
    assert_eq!(r, Received::Nothing);
    replies[1].clone()
}

fn pair() -> (Node, Node) {
    let secret = ClusterSecret::generate();
    let (a, b) = (Node::new(1, &secret), Node::new(2, &secret));
    a.knows(&[&b]);
    b.knows(&[&a]);
    (a, b)
}

#[test]
fn handshake_then_data_both_ways() {
    let (a, b) = pair();
    let p = packet([10, 244, 1, 2], [10, 244, 2, 3], 1000);
    let data = handshake(&a, &b, &p);
    let (r, plain, _, drops) = b.receive(a.addr(), &data);
    assert_eq!(
        r,
        Received::Deliver {
            peer: 0,
            len: p.len()
        }
    );
    assert_eq!(plain, p);
    assert_eq!(drops.snapshot().drops, vec![]);
    // And back, on the session B now has.
    let back = packet([10, 244, 2, 3], [10, 244, 1, 2], 300);
    let d = b.send(std::slice::from_ref(&back));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].len(), back.len() + 32);
    let (r, plain, _, _) = a.receive(b.addr(), &d[0]);
    assert!(matches!(r, Received::Deliver { .. }));
    assert_eq!(plain, back);
    let st = a
        .routes()
        .load()
        .peer(0)
        .wg
        .as_ref()
        .unwrap()
        .lock()
        .stats();
    assert_eq!(st.handshakes, 1);
    assert!(st.last_handshake.is_some());
}

#[test]
fn cryptokey_routing_drops_foreign_sources() {
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 100));
    // A's session, but a source in nobody's (or B's own) subnet.
    for src in [[10, 244, 9, 9], [10, 244, 2, 7], [192, 0, 2, 1]] {
        let d = a.send(&[packet(src, [10, 244, 2, 3], 100)]);
        let (r, _, _, _) = b.receive(a.addr(), &d[0]);
        assert_eq!(r, Received::Nothing, "{src:?} was delivered");
    }
    assert_eq!(b.peer_drops("n1", DropReason::SpoofedSource), 3);
}

#[test]
fn replays_unknown_indices_and_garbage_are_counted() {
    let (a, b) = pair();
    let data = handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 100));
    assert!(matches!(
        b.receive(a.addr(), &data).0,
        Received::Deliver { .. }
    ));
    assert_eq!(b.receive(a.addr(), &data).0, Received::Nothing);
    assert_eq!(b.peer_drops("n1", DropReason::Replayed), 1);

    let mut other = data.clone();
    other[5] ^= 0x55; // receiver index → no session of ours
    let (_, _, _, drops) = b.receive(a.addr(), &other);
    assert_eq!(drops.dropped(DropReason::UnknownIndex), 1);

    let mut tampered = data.clone();
    tampered[40] ^= 1;
    tampered[8] = tampered[8].wrapping_add(100); // a fresh counter, so it is not a replay
    assert_eq!(b.receive(a.addr(), &tampered).0, Received::Nothing);
    assert_eq!(b.peer_drops("n1", DropReason::DecryptFailed), 1);

    for garbage in [
        &[][..],
        &[4, 0, 0][..],
        &[9, 0, 0, 0, 1, 2, 3, 4][..],
        &[1; 147][..],
    ] {
        let (r, _, replies, drops) = b.receive(a.addr(), garbage);
        assert_eq!(r, Received::Nothing);
        assert!(replies.is_empty());
        assert_eq!(drops.dropped(DropReason::Malformed), 1, "{garbage:?}");
    }
}

#[test]
fn strangers_and_other_clusters_get_no_session() {
    let secret = ClusterSecret::generate();
    let (a, b) = (Node::new(1, &secret), Node::new(2, &secret));
    b.knows(&[&a]);
    // A stranger: B does not know its key.
    let stranger = Node::new(3, &secret);
    stranger.knows(&[&b]);
    let init = stranger.send(&[packet([10, 244, 3, 2], [10, 244, 2, 3], 10)]);
    let (r, _, replies, drops) = b.receive(stranger.addr(), &init[0]);
    assert_eq!(r, Received::Nothing);
    assert!(replies.is_empty(), "B answered a stranger");
    assert_eq!(drops.dropped(DropReason::HandshakeRejected), 1);

    // A node B knows, with another cluster secret: the initiation carries no preshared key,
    // so B answers, but the response does not authenticate at A.
    let other = Node::with_crypto(
        1,
        a.key.clone(),
        NodeCrypto::new(
            a.key.clone(),
            Keyring::single(ClusterSecret::generate()),
            100,
        ),
    );
    other.knows(&[&b]);
    let init = other.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 10)]);
    let (_, _, replies, _) = b.receive(other.addr(), &init[0]);
    assert_eq!(replies.len(), 1);
    let (r, _, replies, _) = other.receive(b.addr(), &replies[0]);
    assert_eq!(r, Received::Nothing);
    assert!(replies.is_empty(), "{replies:?}");
    assert_eq!(other.peer_drops("n2", DropReason::HandshakeRejected), 1);
}

#[test]
fn tx_groups_equal_sizes_per_peer_into_runs() {
    let secret = ClusterSecret::generate();
    let (a, b, c) = (
        Node::new(1, &secret),
        Node::new(2, &secret),
        Node::new(3, &secret),
    );
    a.knows(&[&b, &c]);
    b.knows(&[&a]);
    c.knows(&[&a]);
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    handshake(&a, &c, &packet([10, 244, 1, 2], [10, 244, 3, 3], 10));
    let to = |n: u8, len| packet([10, 244, 1, 2], [10, 244, n, 3], len);
    let packets = vec![
        to(2, 1000),
        to(2, 1000),
        to(2, 1000),
        to(2, 400),
        to(2, 1000),
        to(3, 1000),
        to(3, 1000),
        to(9, 10),
    ];
    let mut batch = Runs::new(64, Wireguard::datagram_len(1420), 64);
    let mut drops = DropTally::default();
    a.encode(&packets, &mut batch, &mut drops);
    let shape: Vec<(u32, usize, usize)> = batch
        .runs()
        .iter()
        .map(|r| (r.peer, r.datagrams, r.segment))
        .collect();
    // Three full and a short one in one GSO run; a full one after a short one starts anew.
    assert_eq!(shape, vec![(0, 4, 1052), (0, 1, 1052), (1, 2, 1052)]);
    let unattributed = PeerStats::default();
    drops.flush_into(&unattributed);
    assert_eq!(unattributed.dropped(DropReason::NoRoute), 1);
    // Without GSO every datagram is a run of its own.
    batch.clear();
    batch.set_max_per_run(1);
    a.encode(&packets, &mut batch, &mut drops);
    assert_eq!(batch.runs().len(), 7);
}

#[test]
fn sessions_survive_route_updates() {
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    let before = b.routes().load().peer(0).wg.as_ref().unwrap().index;
    b.knows(&[&a]);
    let after = b.routes().load().peer(0).wg.as_ref().unwrap().index;
    assert_eq!(before, after);
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 10)]);
    assert!(matches!(
        b.receive(a.addr(), &d[0]).0,
        Received::Deliver { .. }
    ));
    assert_eq!(b.routes().load().by_index(before), Some(0));
    assert_eq!(b.routes().load().by_key(&a.public()), Some(0));
}

/// Random bytes and bit-flipped copies of real datagrams (every type) never panic the receive
/// path, are never delivered, and each is counted somewhere. A deterministic xorshift keeps the
/// test reproducible; `tests/fuzz` covers the datagram view itself.
#[test]
fn hostile_datagrams_are_never_delivered_and_never_panic() {
    let (a, b) = pair();
    let init = a
        .send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 10)])
        .remove(0);
    let (_, _, replies, _) = b.receive(a.addr(), &init);
    let response = replies[0].clone();
    let (_, _, replies, _) = a.receive(b.addr(), &response);
    let data = replies[1].clone();
    // Delivered once, genuinely: WireGuard does not authenticate the header, so a copy whose
    // flipped bit lands in the index's session-slot bits would otherwise count as the original.
    b.receive(a.addr(), &replies[0]);
    assert!(matches!(
        b.receive(a.addr(), &data).0,
        Received::Deliver { .. }
    ));
    let mut cookie = vec![0u8; 64];
    cookie[0] = 3;
    let seeds = [init, response, data, cookie];

    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut d = if i % 3 == 0 {
            let len = (next() % 200) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 4 && i % 2 == 0 {
                d[..4].copy_from_slice(&[(next() % 5) as u8, 0, 0, 0]);
            }
            d
        } else {
            seeds[(next() % 4) as usize].clone()
        };
        if !d.is_empty() && i % 3 != 0 {
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % d.len();
                d[at] ^= 1 << (next() % 8);
            }
        }
        let before = peer_drops_total(&b);
        let (r, _, replies, unattributed) = b.receive(a.addr(), &d);
        assert_eq!(
            r,
            Received::Nothing,
            "hostile datagram {i} delivered: {d:?}"
        );
        let counted = peer_drops_total(&b) - before
            + crate::stats::DROP_REASONS
                .iter()
                .map(|r| unattributed.dropped(*r))
                .sum::<u64>();
        assert!(
            counted == 1 || !replies.is_empty(),
            "hostile datagram {i} neither counted once nor answered: {d:?}"
        );
    }
}

fn peer_drops_total(n: &Node) -> u64 {
    let t = n.routes().load();
    crate::stats::DROP_REASONS
        .iter()
        .map(|r| t.peer(0).stats.dropped(*r))
        .sum()
}
