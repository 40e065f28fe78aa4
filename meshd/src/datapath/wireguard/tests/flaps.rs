//! Membership flaps and restarts, at the WireGuard layer: a peer that leaves the peer set and
//! comes back keeps its session; a peer that sends on a session we lost gets a handshake from
//! us at once; a restarted node that refused a member's initiation starts the handshake itself
//! once it learns the member.

use super::{handshake, packet, pair, Node};
use crate::datapath::wireguard::timers;
use crate::datapath::Received;
use crate::peers::wireguard::NodeCrypto;
use crate::stats::{DropReason, Stamp};
use meshd_crypto::{Action, ClusterSecret, Keyring};

/// What node `n`'s control thread sends to its peer `name` on this tick, if anything.
fn tick(n: &Node, name: &str, now: Stamp) -> Option<Vec<u8>> {
    let table = n.routes().load();
    let peer = table.peers().iter().find(|p| p.name == name).unwrap();
    let mut out = vec![0u8; super::super::SCRATCH_LEN];
    match timers(peer, peer.wg.as_ref().unwrap(), now, &mut out) {
        Action::WriteToNetwork(len) => Some(out[..len].to_vec()),
        _ => None,
    }
}

/// `initiator` sent `init`; the exchange runs to a confirmed session at both ends.
fn complete(initiator: &Node, responder: &Node, init: &[u8]) {
    assert_eq!(init.len(), 148, "an initiation");
    let (_, _, replies, _) = responder.receive(initiator.addr(), init);
    // The response; a responder with a packet queued behind a handshake of its own may send an
    // initiation after it, which the exchange does not need.
    let response = replies.iter().find(|r| r.len() == 92).expect("a response");
    let (_, _, replies, _) = initiator.receive(responder.addr(), response);
    for r in replies {
        responder.receive(initiator.addr(), &r);
    }
}

fn delivered(to: &Node, from: &Node, dst: u8) -> bool {
    let src = [10, 244, from.n, 2];
    let d = from.send(&[packet(src, [10, 244, dst, 3], 100)]);
    d.len() == 1 && matches!(to.receive(from.addr(), &d[0]).0, Received::Deliver { .. })
}

#[test]
fn a_peer_that_flaps_out_and_back_keeps_its_session() {
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    let index = b.routes().load().peer(0).wg.as_ref().unwrap().index;
    // B briefly holds A down; A never noticed and keeps its session.
    b.knows(&[]);
    assert!(!delivered(&b, &a, 2), "delivered while A was no peer");
    b.knows(&[&a]);
    assert_eq!(b.routes().load().peer(0).wg.as_ref().unwrap().index, index);
    assert!(
        delivered(&b, &a, 2),
        "A's session was not kept for its return"
    );
    assert!(delivered(&a, &b, 1));
    // B also handshakes at once, in case A restarted; traffic goes on meanwhile and after.
    let init = tick(&b, "n1", Stamp::now()).expect("a handshake on B's next tick");
    assert!(delivered(&b, &a, 2));
    complete(&b, &a, &init);
    assert!(delivered(&b, &a, 2));
    assert!(delivered(&a, &b, 1));
}

#[test]
fn data_on_a_lost_session_makes_us_start_a_handshake_at_once() {
    let secret = ClusterSecret::generate();
    let (a, b) = (Node::new(1, &secret), Node::new(2, &secret));
    a.knows(&[&b]);
    b.knows(&[&a]);
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    // B restarts with the same key: new sessions, new indices. A still has the old one.
    let crypto = NodeCrypto::new(b.key.clone(), Keyring::single(secret.clone()), 100);
    let b = Node::with_crypto(2, b.key.clone(), crypto);
    b.knows(&[&a]);
    let now = Stamp::now();
    assert_eq!(tick(&b, "n1", now), None, "nothing asked for yet");
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
    let (r, _, _, drops) = b.receive(a.addr(), &d[0]);
    assert_eq!(r, Received::Nothing);
    assert_eq!(drops.dropped(DropReason::UnknownIndex), 1);
    let init = tick(&b, "n1", now).expect("B starts a handshake on the next tick");
    complete(&b, &a, &init);
    assert!(delivered(&b, &a, 2), "A's traffic does not reach B again");
    // Now B's session has authenticated A: data on the old index is a straggler or a forgery
    // (anyone can write an index), and asks for no handshake at all, not even a second later.
    let stale = d[0].clone();
    for _ in 0..100 {
        let (_, _, _, drops) = b.receive(a.addr(), &stale);
        assert_eq!(drops.dropped(DropReason::UnknownIndex), 1);
    }
    let later = Stamp::from_raw(now.raw() + 2_000).unwrap();
    assert_eq!(
        tick(&b, "n1", later),
        None,
        "a forged index forced a handshake"
    );
    let wg = b.routes().load().peer(0).wg.clone().unwrap();
    assert_eq!(
        wg.forced_counts(),
        (1, 100),
        "forced once, then ignored 100"
    );
    assert!(delivered(&b, &a, 2));
}

/// A session that never authenticated its peer takes data on an unknown index as the peer's
/// word that it lost us: one handshake a second, whatever the rate.
#[test]
fn a_flood_on_a_lost_session_costs_one_handshake_a_second() {
    let secret = ClusterSecret::generate();
    let (a, b) = (Node::new(1, &secret), Node::new(2, &secret));
    a.knows(&[&b]);
    b.knows(&[&a]);
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 10));
    let crypto = NodeCrypto::new(b.key.clone(), Keyring::single(secret.clone()), 100);
    let b = Node::with_crypto(2, b.key.clone(), crypto);
    b.knows(&[&a]);
    let stale = a
        .send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)])
        .remove(0);
    for _ in 0..100 {
        b.receive(a.addr(), &stale);
    }
    let now = Stamp::now();
    assert!(tick(&b, "n1", now).is_some());
    for _ in 0..100 {
        b.receive(a.addr(), &stale);
    }
    assert_eq!(
        tick(&b, "n1", now),
        None,
        "a second handshake within the second"
    );
    let wg = b.routes().load().peer(0).wg.clone().unwrap();
    assert_eq!(wg.forced_counts(), (1, 0));
}

#[test]
fn a_refused_initiator_gets_a_handshake_once_it_becomes_a_peer() {
    let secret = ClusterSecret::generate();
    let (a, b) = (Node::new(1, &secret), Node::new(2, &secret));
    a.knows(&[&b]);
    // B (just restarted) has not learnt A yet, and refuses it.
    let init = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 10)]);
    let (_, _, replies, drops) = b.receive(a.addr(), &init[0]);
    assert!(replies.is_empty());
    assert_eq!(drops.dropped(DropReason::HandshakeRejected), 1);
    // Moments later gossip tells B about A.
    b.knows(&[&a]);
    let init = tick(&b, "n1", Stamp::now()).expect("B initiates instead of waiting 5 s");
    complete(&b, &a, &init);
    assert!(delivered(&b, &a, 2));
    assert!(delivered(&a, &b, 1));
}
