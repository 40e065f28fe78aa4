//! Roaming: the endpoint in use follows the source of what authenticated (WireGuard's rule),
//! and only that: a replayed or forged datagram from elsewhere moves nothing, nor does another
//! source port of the address a peer listens at (its other flows).

use std::net::SocketAddr;

use super::{handshake, packet, pair};
use crate::datapath::Received;
use crate::link::endpoint::{How, PEER_NAT};

#[test]
fn the_endpoint_follows_authenticated_traffic_and_nothing_else() {
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 100));
    let table = b.routes().load();
    let link = table.peer(0);
    assert_eq!(link.endpoint(), a.addr());
    // Another of a's flows (another port of the address it advertises): no move.
    let flow = SocketAddr::from(([198, 18, 0, 1], 52660));
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
    assert!(matches!(b.receive(flow, &d[0]).0, Received::Deliver { .. }));
    assert_eq!(link.endpoint(), a.addr());
    // A's NAT mapping changed: the next authenticated datagram moves the endpoint.
    let nat = SocketAddr::from(([198, 51, 100, 7], 40001));
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
    assert!(matches!(b.receive(nat, &d[0]).0, Received::Deliver { .. }));
    assert_eq!(link.endpoint(), nat);
    assert_eq!(link.ep.change().how, How::Roamed);
    assert_eq!(
        link.ep.nat(),
        PEER_NAT,
        "a source it does not advertise: behind a NAT"
    );
    assert!(link.one_flow());
    // The same datagram replayed from elsewhere: refused, nothing moves.
    let elsewhere = SocketAddr::from(([203, 0, 113, 9], 9999));
    assert_eq!(b.receive(elsewhere, &d[0]).0, Received::Nothing);
    assert_eq!(link.endpoint(), nat);
    // Garbage shaped like data from elsewhere: nothing moves either.
    let mut forged = d[0].clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(b.receive(elsewhere, &forged).0, Received::Nothing);
    assert_eq!(link.endpoint(), nat);
    // Back at an address it advertises: not behind a NAT any more.
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
    assert!(matches!(
        b.receive(a.addr(), &d[0]).0,
        Received::Deliver { .. }
    ));
    assert_eq!((link.endpoint(), link.ep.nat()), (a.addr(), 0));
}

#[test]
fn keepalives_go_to_a_pair_behind_nat_after_silence_and_never_to_a_public_pair() {
    use crate::datapath::wireguard::nat::keepalive;
    use crate::stats::Stamp;
    use meshd_crypto::Action;
    use std::time::Duration;
    let (a, b) = pair();
    handshake(&a, &b, &packet([10, 244, 1, 2], [10, 244, 2, 3], 100));
    let table = b.routes().load();
    let (link, every) = (table.peer(0), Some(Duration::from_secs(25)));
    let wg = link.wg.as_ref().unwrap();
    let mut out = vec![0u8; super::super::SCRATCH_LEN];
    let now = Stamp::now();
    // A public pair: never.
    assert_eq!(keepalive(link, wg, every, now, &mut out), Action::Done);
    // Behind a NAT: one at once (it makes the mapping), then after 25 s of silence.
    let d = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
    b.receive(SocketAddr::from(([198, 51, 100, 7], 40001)), &d[0]);
    assert!(link.one_flow());
    assert!(
        matches!(
            keepalive(link, wg, every, now, &mut out),
            Action::WriteToNetwork(32)
        ),
        "an empty data message at once for a pair behind NAT"
    );
    assert_eq!(keepalive(link, wg, every, now, &mut out), Action::Done);
    let later = Stamp::from_raw(now.raw() + 24_000).unwrap();
    assert_eq!(keepalive(link, wg, every, later, &mut out), Action::Done);
    let later = Stamp::from_raw(now.raw() + 26_000).unwrap();
    assert!(matches!(
        keepalive(link, wg, every, later, &mut out),
        Action::WriteToNetwork(32)
    ));
    // Off by configuration: never.
    let later = Stamp::from_raw(now.raw() + 60_000).unwrap();
    assert_eq!(keepalive(link, wg, None, later, &mut out), Action::Done);
}
