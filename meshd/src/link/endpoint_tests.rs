//! Tests of [`super::EndpointCell`]: roaming, NAT bits, relays.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn ep(a: &str) -> Endpoint {
    Endpoint {
        addr: a.parse().unwrap(),
        source: EndpointSource::Gossiped,
    }
}

#[test]
fn authenticated_traffic_moves_the_endpoint_and_a_candidate_does_not_move_a_working_one() {
    let cell = EndpointCell::new(Some(&ep("192.168.1.1:51820")));
    let t0 = Stamp::now();
    let nat: SocketAddr = "198.18.0.101:51820".parse().unwrap();
    // From the address in use: heard, nothing moves.
    cell.heard_from("192.168.1.1:51820".parse().unwrap(), t0, |_| true);
    assert_eq!(cell.nat(), 0);
    // Another port of an address it listens at: another of its flows.
    cell.heard_from("192.168.1.1:52660".parse().unwrap(), t0, |_| true);
    assert_eq!(cell.get(), "192.168.1.1:51820".parse().unwrap());
    // From its NAT: it roamed, and it is behind NAT.
    cell.heard_from(nat, t0, |_| false);
    assert_eq!(cell.get(), nat);
    assert_eq!(cell.nat(), PEER_NAT);
    assert_eq!(cell.change().how, How::Roamed);
    // Another mapping of the same NAT while the one in use is heard: no move.
    let other: SocketAddr = "198.18.0.101:40000".parse().unwrap();
    cell.heard_from(other, t0, |_| false);
    assert_eq!(cell.get(), nat);
    // A record's candidate does not move a working endpoint.
    assert!(!cell.pick(&ep("192.168.1.9:51820"), t0));
    assert_eq!(cell.get(), nat);
    assert!(cell.working(t0));
    // Seen through a NAT by the peer: our bit.
    let public: SocketAddr = "198.18.0.55:51820".parse().unwrap();
    cell.set_seen(Seen::Elsewhere(public), None);
    assert_eq!(cell.nat(), PEER_NAT | SELF_NAT);
    // Seen directly: no bit, even while others see us through a NAT.
    cell.set_seen(Seen::Direct, Some(public));
    assert_eq!(cell.nat(), PEER_NAT);
    cell.set_seen(Seen::Nothing, Some(public));
    assert_eq!(cell.nat(), PEER_NAT);
}

#[test]
fn a_node_behind_nat_presumes_it_towards_a_peer_that_said_nothing_yet() {
    let cell = EndpointCell::new(Some(&ep("198.18.0.30:51820")));
    let public: SocketAddr = "198.18.0.101:4000".parse().unwrap();
    cell.set_seen(Seen::Nothing, None);
    assert_eq!(cell.nat(), 0);
    cell.set_seen(Seen::Nothing, Some(public));
    assert_eq!((cell.nat(), cell.seen_as()), (SELF_NAT, Some(public)));
}

#[test]
fn a_relay_port_is_taken_while_nothing_works_and_a_direct_path_wins_over_it() {
    let cell = EndpointCell::new(Some(&ep("192.168.2.1:51820")));
    let t0 = Stamp::now();
    let relay: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let use_relay = |addr: SocketAddr, via: &str| RelayUse {
        addr,
        via: Arc::from(via),
        why: "test".into(),
    };
    // Nothing works: the relay port becomes the endpoint in use.
    assert!(cell.set_relay(Some(use_relay(relay, "pub1")), t0));
    assert_eq!(
        (cell.get(), cell.change().how),
        (relay, How::Relay(Arc::from("pub1")))
    );
    cell.heard_from(relay, t0, |_| false);
    // The relay dies: its replacement takes over at once, though the old one worked.
    let other: SocketAddr = "198.18.0.2:41000".parse().unwrap();
    assert!(cell.set_relay(Some(use_relay(other, "pub2")), t0));
    assert_eq!(cell.get(), other);
    cell.heard_from(other, t0, |_| false);
    // A direct path answers: it takes over; the relay's copies do not move it back
    // while the direct one is heard.
    let direct: SocketAddr = "198.18.0.102:5000".parse().unwrap();
    cell.heard_from(direct, t0, |_| false);
    assert_eq!(cell.get(), direct);
    cell.heard_from(other, t0, |_| false);
    assert_eq!(cell.get(), direct);
    assert!(!cell.set_relay(Some(use_relay(other, "pub2")), t0));
    // Once the direct path is quiet, the relayed datagrams move it back.
    let later = Stamp::from_raw(t0.raw() + 2_000).unwrap();
    cell.heard_from(other, later, |_| false);
    assert_eq!(cell.get(), other);
}

#[test]
fn another_relay_the_peer_uses_is_named_and_left_once_its_relay_is_gone() {
    let cell = EndpointCell::new(Some(&ep("192.168.2.1:51820")));
    let t0 = Stamp::now();
    let p1: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let p2: SocketAddr = "198.18.0.2:41000".parse().unwrap();
    let use_relay = |addr: SocketAddr, via: &str| RelayUse {
        addr,
        via: Arc::from(via),
        why: "test".into(),
    };
    let both = vec![(p1, Arc::from("pub1")), (p2, Arc::from("pub2"))];
    cell.set_offered(both.clone());
    // Each port newly offered gets one datagram (so its relay learns this side's port).
    assert_eq!(cell.take_fresh_offers(), vec![p1, p2]);
    cell.set_offered(both.clone());
    assert!(cell.take_fresh_offers().is_empty());
    assert!(cell.set_relay(Some(use_relay(p1, "pub1")), t0));
    // The peer chose pub2 (it held other offers then): roaming follows its traffic there.
    cell.heard_from(p2, t0, |_| false);
    assert_eq!(cell.get(), p2);
    assert_eq!(cell.relay_via(p2).as_deref(), Some("pub2"));
    assert!(cell.relayed());
    // Still offered and working, and not this node's own earlier choice: it stays.
    cell.set_offered(both.clone());
    assert!(!cell.set_relay(Some(use_relay(p1, "pub1")), t0));
    assert_eq!(cell.get(), p2);
    // This node now chooses the relay in use (the chooser keeps the one in use while it is
    // near the best, `relay::choose`); when it names another, clearly faster, the pair moves.
    assert!(!cell.set_relay(Some(use_relay(p2, "pub2")), t0));
    assert!(cell.set_relay(Some(use_relay(p1, "pub1")), t0));
    assert_eq!(cell.get(), p1);
    // pub1 dies (offered no more): the endpoint leaves its port for the chosen relay at once.
    cell.set_offered(vec![(p2, Arc::from("pub2"))]);
    assert!(cell.set_relay(Some(use_relay(p2, "pub2")), t0));
    assert_eq!(cell.get(), p2);
}
