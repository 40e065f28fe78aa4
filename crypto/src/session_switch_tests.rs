//! Tests of a [`Session`]'s preshared-key switch (`session_switch.rs`): traffic never stops while
//! both ends move to a new key in any order, and what the receiver index says about it.

use super::*;

/// Preshared keys for the key-switch tests.
const P1: [u8; 32] = [0x11; 32];
const P2: [u8; 32] = [0x22; 32];
const P3: [u8; 32] = [0x33; 32];

fn receiver_index(datagram: &[u8]) -> u32 {
    WgDatagram::new_checked(datagram)
        .unwrap()
        .receiver_index()
        .unwrap()
}

fn receiver_local_index(datagram: &[u8]) -> u32 {
    crate::wire::local_index_of(receiver_index(datagram))
}

fn receiver_generation(datagram: &[u8]) -> u32 {
    crate::wire::generation_of(receiver_index(datagram))
}

/// Runs `p`'s timers twice (during a key switch each call may serve only one of its two
/// tunnels), returning what they sent; errors fail the test.
fn timer_datagrams(p: &mut Peer) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; BUF];
    let mut o = Outcome::default();
    for _ in 0..2 {
        record(p.session.update_timers(&mut out), &out, &mut o);
    }
    assert!(o.errors.is_empty() && o.delivered.is_empty(), "{o:?}");
    o.sent
}

/// Sends `rounds` packets each way, each datagram delivered at once, and checks that every
/// packet arrives (none lost, none queued behind a handshake). Returns the generation of the
/// receiver index of each datagram `a` sent, then of each `b` sent.
fn traffic(a: &mut Peer, b: &mut Peer, rounds: u8) -> (Vec<u32>, Vec<u32>) {
    let mut generations = (Vec::new(), Vec::new());
    for i in 0..rounds {
        for a_to_b in [true, false] {
            let (tx, rx, seen, src) = if a_to_b {
                (&mut *a, &mut *b, &mut generations.0, [10, 244, 1, 5])
            } else {
                (&mut *b, &mut *a, &mut generations.1, [10, 244, 2, 5])
            };
            let p = ipv4_packet(src, &[i; 64]);
            let d = send(tx, &p);
            assert_eq!(d.len(), 1);
            seen.push(receiver_generation(&d[0]));
            let o = deliver(rx, &d[0]);
            assert_eq!(o.delivered, vec![(p, IpAddr::from(src))], "{:?}", o.errors);
        }
    }
    generations
}

/// An established pair under `P1`, with data having flowed both ways.
fn established_pair() -> (Peer, Peer) {
    let (mut a, mut b) = pair_with(P1, P1);
    establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
    traffic(&mut a, &mut b, 1);
    (a, b)
}

#[test]
fn receiver_index_names_the_local_index() {
    // The largest index, so that a generation bit leaking into it would show.
    let (mut a, mut b) = pair_at(MAX_LOCAL_INDEX - 1, MAX_LOCAL_INDEX, P1, P1);
    establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
    let d = send(&mut a, b"").remove(0);
    assert_eq!(receiver_local_index(&d), b.session.local_index());
    assert_eq!(receiver_generation(&d), 0);

    // After a key switch the generation flips; the local index stays.
    assert!(a.session.set_psk(P2) && b.session.set_psk(P2));
    let init = timer_datagrams(&mut a);
    let (at_a, at_b) = exchange(&mut a, &mut b, init);
    assert!(at_a.errors.is_empty() && at_b.errors.is_empty());
    let to_b = send(&mut a, b"").remove(0);
    let to_a = send(&mut b, b"").remove(0);
    assert_eq!(receiver_local_index(&to_b), b.session.local_index());
    assert_eq!(receiver_local_index(&to_a), a.session.local_index());
    assert_eq!(
        (receiver_generation(&to_b), receiver_generation(&to_a)),
        (1, 1)
    );
}

#[test]
fn psk_switch_loses_nothing_while_the_peer_lags() {
    let (mut a, mut b) = established_pair();
    assert!(a.session.set_psk(P2));
    let st = a.session.stats();
    assert!(st.retiring && st.psk_pending);
    assert_eq!(st.psk_switches, 1);

    // a starts a handshake under P2; b, still on P1, answers it, and a cannot verify that.
    let init = timer_datagrams(&mut a);
    assert_eq!(init.len(), 1);
    let (at_a, at_b) = exchange(&mut a, &mut b, init);
    assert_eq!(at_a.errors, vec![SessionError::HandshakeFailed]);
    assert!(at_b.errors.is_empty() && at_b.delivered.is_empty());
    assert_eq!(a.session.stats().psk_rejections, 1);
    assert!(a.session.stats().psk_pending);

    // Meanwhile traffic flows both ways on the old session (generation 0 on the wire).
    let (to_b, to_a) = traffic(&mut a, &mut b, 20);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 0));

    // b switches: its handshake under P2 reaches a's new tunnel and completes.
    assert!(b.session.set_psk(P2));
    let init = timer_datagrams(&mut b);
    assert_eq!(init.len(), 1);
    let (at_b, at_a) = exchange(&mut b, &mut a, init);
    assert!(
        at_a.errors.is_empty() && at_b.errors.is_empty(),
        "{at_a:?} {at_b:?}"
    );
    for p in [&a, &b] {
        let st = p.session.stats();
        assert!(st.retiring && !st.psk_pending, "{st:?}");
        assert!(st.last_handshake.is_some());
    }

    // Traffic moved to the new tunnels, still without loss.
    let (to_b, to_a) = traffic(&mut a, &mut b, 20);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 1));
    let (sa, sb) = (a.session.stats(), b.session.stats());
    assert_eq!((sa.tx_bytes, sa.rx_bytes), (sb.rx_bytes, sb.tx_bytes));
    assert_eq!((sa.psk_switches, sb.psk_switches), (1, 1));
    assert_eq!((sa.errors, sb.errors), (1, 0));
    assert!(timer_datagrams(&mut a).is_empty() && timer_datagrams(&mut b).is_empty());
}

#[test]
fn datagrams_sent_before_the_switch_still_decrypt() {
    let (mut a, mut b) = established_pair();
    let (late_p, late_q) = (
        ipv4_packet([10, 244, 1, 5], b"late to b"),
        ipv4_packet([10, 244, 2, 5], b"late to a"),
    );
    let late_to_b = send(&mut a, &late_p).remove(0);
    let late_to_a = send(&mut b, &late_q).remove(0);

    assert!(a.session.set_psk(P2) && b.session.set_psk(P2));
    let init = timer_datagrams(&mut a);
    let (at_a, at_b) = exchange(&mut a, &mut b, init);
    assert!(at_a.errors.is_empty() && at_b.errors.is_empty());
    let (to_b, to_a) = traffic(&mut a, &mut b, 3);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 1));

    assert_eq!(deliver(&mut b, &late_to_b).delivered[0].0, late_p);
    assert_eq!(deliver(&mut a, &late_to_a).delivered[0].0, late_q);
}

#[test]
fn same_psk_is_a_no_op_and_switching_back_keeps_the_live_session() {
    let (mut a, mut b) = established_pair();
    assert!(!a.session.set_psk(P1));
    let st = a.session.stats();
    assert_eq!((st.psk_switches, st.retiring), (0, false));
    assert!(timer_datagrams(&mut a).is_empty());

    assert!(a.session.set_psk(P2));
    let init = timer_datagrams(&mut a);
    let (at_a, _) = exchange(&mut a, &mut b, init);
    assert_eq!(at_a.errors, vec![SessionError::HandshakeFailed]);

    // Back to P1 before P2 ever worked: the old session is current again, no handshake.
    assert!(a.session.set_psk(P1));
    let st = a.session.stats();
    assert_eq!(
        (st.psk_switches, st.retiring, st.psk_pending),
        (2, false, false)
    );
    let handshakes = (a.session.stats().handshakes, b.session.stats().handshakes);
    let (to_b, to_a) = traffic(&mut a, &mut b, 10);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 0));
    assert!(timer_datagrams(&mut a).is_empty());
    assert_eq!(
        handshakes,
        (a.session.stats().handshakes, b.session.stats().handshakes)
    );
}

#[test]
fn a_second_switch_before_the_first_completed_keeps_the_live_session() {
    let (mut a, mut b) = established_pair();
    assert!(a.session.set_psk(P2));
    let init = timer_datagrams(&mut a);
    exchange(&mut a, &mut b, init);
    // P2 is dropped for P3 before any handshake under it completed.
    assert!(a.session.set_psk(P3));
    let st = a.session.stats();
    assert!(st.retiring && st.psk_pending);
    assert_eq!((st.psk_switches, st.psk_rejections), (2, 0));
    let (to_b, to_a) = traffic(&mut a, &mut b, 10);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 0));

    // b goes straight to P3 and starts the handshake: both end up on it.
    assert!(b.session.set_psk(P3));
    let init = timer_datagrams(&mut b);
    let (at_b, at_a) = exchange(&mut b, &mut a, init);
    assert!(
        at_a.errors.is_empty() && at_b.errors.is_empty(),
        "{at_a:?} {at_b:?}"
    );
    let (to_b, to_a) = traffic(&mut a, &mut b, 10);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 1));
}

#[test]
fn a_switch_after_the_first_completed_retires_the_oldest() {
    let (mut a, mut b) = established_pair();
    assert!(a.session.set_psk(P2) && b.session.set_psk(P2));
    let init = timer_datagrams(&mut a);
    exchange(&mut a, &mut b, init);
    assert!(!a.session.stats().psk_pending);
    // P2's session becomes the retiring one; P1's is dropped, its bytes still counted.
    let before = a.session.stats();
    assert!(a.session.set_psk(P3) && b.session.set_psk(P3));
    let st = a.session.stats();
    assert!(st.retiring && st.psk_pending);
    assert_eq!(
        (st.tx_bytes, st.rx_bytes),
        (before.tx_bytes, before.rx_bytes)
    );
    let (to_b, to_a) = traffic(&mut a, &mut b, 5);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 1));
    let init = timer_datagrams(&mut b);
    let (at_b, at_a) = exchange(&mut b, &mut a, init);
    assert!(
        at_a.errors.is_empty() && at_b.errors.is_empty(),
        "{at_a:?} {at_b:?}"
    );
    let (to_b, to_a) = traffic(&mut a, &mut b, 5);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 0));
}

#[test]
fn simultaneous_switches_converge() {
    let (mut a, mut b) = established_pair();
    assert!(a.session.set_psk(P2) && b.session.set_psk(P2));
    // Both initiate before either initiation arrives.
    let (init_a, init_b) = (timer_datagrams(&mut a), timer_datagrams(&mut b));
    assert_eq!((init_a.len(), init_b.len()), (1, 1));
    let at_b = deliver(&mut b, &init_a[0]);
    let at_a = deliver(&mut a, &init_b[0]);
    assert!(at_a.errors.is_empty() && at_b.errors.is_empty());
    // The responses cross.
    let (from_b, to_a) = exchange(&mut b, &mut a, at_b.sent);
    let (from_a, to_b) = exchange(&mut a, &mut b, at_a.sent);
    for o in [&from_b, &to_a, &from_a, &to_b] {
        assert!(o.errors.is_empty(), "{o:?}");
    }
    assert!(!a.session.stats().psk_pending && !b.session.stats().psk_pending);
    let (to_b, to_a) = traffic(&mut a, &mut b, 10);
    assert!(to_b.iter().chain(&to_a).all(|&g| g == 1));
}

#[test]
fn a_switch_without_a_session_is_a_plain_start() {
    let (mut a, mut b) = pair_with(P1, P2);
    assert!(a.session.set_psk(P2));
    let st = a.session.stats();
    assert!(!st.retiring && !st.psk_pending);
    establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
    let (to_b, to_a) = traffic(&mut a, &mut b, 3);
    assert!(to_b.iter().all(|&g| g == 0) && to_a.iter().all(|&g| g == 1));
}

#[cfg(feature = "mock-clock")]
#[path = "session_timer_tests.rs"]
mod timers;

#[cfg(feature = "mock-clock")]
#[path = "session_rtt_tests.rs"]
mod rtt;
