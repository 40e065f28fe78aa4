//! Tests of [`Session`]: two sessions exchange datagrams in memory through their [`Action`]s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::handshake::DEFAULT_HANDSHAKES_PER_SECOND;
use proptest::prelude::*;
use std::net::Ipv6Addr;

const BUF: usize = 2048;

struct Peer {
    session: Session,
}

/// Two sessions `a` (index 1) and `b` (index 2) that expect each other, with the given PSKs.
fn pair_with(psk_a: [u8; 32], psk_b: [u8; 32]) -> (Peer, Peer) {
    pair_at(1, 2, psk_a, psk_b)
}

/// Two sessions that expect each other, with the given local indices and PSKs.
fn pair_at(index_a: u32, index_b: u32, psk_a: [u8; 32], psk_b: [u8; 32]) -> (Peer, Peer) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let la = RateLimiter::new(&ka.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let lb = RateLimiter::new(&kb.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let a = Session::new(&ka, index_a, kb.public_key(), psk_a, &la).unwrap();
    let b = Session::new(&kb, index_b, ka.public_key(), psk_b, &lb).unwrap();
    (Peer { session: a }, Peer { session: b })
}

fn pair() -> (Peer, Peer) {
    pair_with([7; 32], [7; 32])
}

/// What one peer did with one datagram (flushing its queue afterwards, as the daemon does).
#[derive(Default, Debug)]
struct Outcome {
    sent: Vec<Vec<u8>>,
    delivered: Vec<(Vec<u8>, IpAddr)>,
    errors: Vec<SessionError>,
}

fn record(action: Action, out: &[u8], o: &mut Outcome) -> bool {
    match action {
        Action::Done => return false,
        Action::WriteToNetwork(n) => o.sent.push(out[..n].to_vec()),
        Action::WriteToTunnelV4(n, a) => o.delivered.push((out[..n].to_vec(), a.into())),
        Action::WriteToTunnelV6(n, a) => o.delivered.push((out[..n].to_vec(), a.into())),
        Action::Error(e) => o.errors.push(e),
    }
    true
}

fn deliver(to: &mut Peer, datagram: &[u8]) -> Outcome {
    let mut o = Outcome::default();
    let mut out = vec![0u8; BUF];
    let action = to.session.decapsulate(None, datagram, &mut out);
    // As the daemon does: flush after a handshake message, and after data while packets wait.
    let sent = matches!(action, Action::WriteToNetwork(_))
        || (matches!(action, Action::WriteToTunnelV4(..)) && to.session.has_queued());
    record(action, &out, &mut o);
    if sent {
        loop {
            let action = to.session.flush_queued(&mut out);
            if !record(action, &out, &mut o) {
                break;
            }
        }
    }
    o
}

/// Ping-pongs datagrams, starting with `first` from `from`, until neither side sends more.
/// Returns everything each side delivered to its TUN and every error, per side.
fn exchange(from: &mut Peer, to: &mut Peer, first: Vec<Vec<u8>>) -> (Outcome, Outcome) {
    let (mut at_from, mut at_to) = (Outcome::default(), Outcome::default());
    let mut in_flight = first;
    let mut towards_to = true;
    for _ in 0..16 {
        if in_flight.is_empty() {
            break;
        }
        let mut replies = Vec::new();
        for d in in_flight.drain(..) {
            let (receiver, acc) = if towards_to {
                (&mut *to, &mut at_to)
            } else {
                (&mut *from, &mut at_from)
            };
            let o = deliver(receiver, &d);
            replies.extend(o.sent);
            acc.delivered.extend(o.delivered);
            acc.errors.extend(o.errors);
        }
        in_flight = replies;
        towards_to = !towards_to;
    }
    (at_from, at_to)
}

fn send(p: &mut Peer, packet: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; BUF];
    let mut o = Outcome::default();
    record(p.session.encapsulate(packet, &mut out), &out, &mut o);
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    o.sent
}

fn ipv4_packet(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let total = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&[10, 244, 2, 5]);
    p.extend_from_slice(payload);
    p
}

fn ipv6_packet(src: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    p.extend_from_slice(payload);
    p
}

/// Completes a handshake initiated by `a` carrying `packet`, which `b` must deliver.
/// Both sides queue traffic before either has a session (two pods talking at once): b answers
/// a's initiation, and b's session becomes current only with a's first data. b's queue must
/// then come out whole and in order, not rotated by a flush made while it had no session.
#[test]
fn a_responders_queue_leaves_in_order_once_its_session_is_current() {
    let (mut a, mut b) = pair();
    let packets: Vec<Vec<u8>> = (0..6u8)
        .map(|i| ipv4_packet([10, 244, 2, 9], &[i; 16]))
        .collect();
    // b queues six packets; its own initiation is lost.
    for p in &packets {
        let _ = send(&mut b, p);
    }
    assert!(b.session.has_queued());
    // a's packet starts a's handshake, which b answers.
    let first = send(&mut a, &ipv4_packet([10, 244, 1, 9], b"hello"));
    assert_eq!(first.len(), 1, "a's initiation");
    let at_b = deliver(&mut b, &first[0]);
    assert_eq!(
        at_b.sent.len(),
        1,
        "only b's response, no second initiation: {at_b:?}"
    );
    // a completes the handshake and sends its queued packet (and a keepalive).
    let at_a = deliver(&mut a, &at_b.sent[0]);
    assert!(!at_a.sent.is_empty(), "{at_a:?}");
    let mut from_b = Vec::new();
    for d in &at_a.sent {
        let o = deliver(&mut b, d);
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        from_b.extend(o.sent);
    }
    assert!(!b.session.has_queued());
    let mut got = Vec::new();
    for d in &from_b {
        got.extend(deliver(&mut a, d).delivered.into_iter().map(|(p, _)| p));
    }
    assert_eq!(got, packets, "b's queued packets, whole and in order");
}

/// `data_sent` counts every data message, whichever call made it (the keepalive and the queued
/// packet a handshake releases, then each packet), and no handshake message: the counter of the
/// last one sent is the count less one.
#[test]
fn data_sent_counts_every_data_message() {
    let (mut a, mut b) = pair();
    let init = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"queued"));
    assert_eq!(init.len(), 1);
    assert_eq!(a.session.data_sent(), 0, "an initiation is no data");
    let at_b = deliver(&mut b, &init[0]);
    assert_eq!(b.session.data_sent(), 0, "nor is a response");
    let at_a = deliver(&mut a, &at_b.sent[0]);
    let data = |sent: &[Vec<u8>]| sent.iter().filter(|d| d[0] == 4).count() as u64;
    assert_eq!(data(&at_a.sent), 2, "{at_a:?}");
    assert_eq!(a.session.data_sent(), 2);
    let mut last = Vec::new();
    for i in 0..5 {
        last = send(&mut a, &ipv4_packet([10, 244, 1, 5], &[i; 10])).remove(0);
    }
    assert_eq!(a.session.data_sent(), 7);
    let counter = u64::from_le_bytes(last[8..16].try_into().unwrap());
    assert_eq!(counter, a.session.data_sent() - 1);
}

fn establish(a: &mut Peer, b: &mut Peer, packet: &[u8]) {
    let init = send(a, packet);
    assert_eq!(init.len(), 1);
    let (at_a, at_b) = exchange(a, b, init);
    assert!(
        at_a.errors.is_empty() && at_b.errors.is_empty(),
        "{at_a:?} {at_b:?}"
    );
    assert_eq!(at_b.delivered.len(), 1);
    assert_eq!(at_b.delivered[0].0, packet);
}

#[test]
fn round_trip_both_ways() {
    let (mut a, mut b) = pair();
    let to_b = ipv4_packet([10, 244, 1, 5], b"hello b");
    establish(&mut a, &mut b, &to_b);

    let to_a = ipv4_packet([10, 244, 2, 5], b"hello a");
    let data = send(&mut b, &to_a);
    assert_eq!(
        data.len(),
        1,
        "responder sends data once the initiator confirmed"
    );
    let at_a = deliver(&mut a, &data[0]);
    assert_eq!(
        at_a.delivered,
        vec![(to_a.clone(), IpAddr::from([10, 244, 2, 5]))]
    );

    // Established both ways: straight to data, no more handshakes.
    for i in 0..10u8 {
        let p = ipv4_packet([10, 244, 1, 5], &[i; 100]);
        let d = send(&mut a, &p);
        assert_eq!(deliver(&mut b, &d[0]).delivered[0].0, p);
    }
    let (sa, sb) = (a.session.stats(), b.session.stats());
    assert_eq!((sa.handshakes, sb.handshakes, sa.rekeys), (1, 1, 0));
    assert!(sa.last_handshake.is_some() && sb.last_handshake.is_some());
    assert_eq!(sa.tx_bytes, sb.rx_bytes);
    assert_eq!(sa.rx_bytes, to_a.len() as u64);
    assert_eq!((sa.errors, sb.errors), (0, 0));
}

#[test]
fn a_responder_counts_a_handshake_only_once_the_initiator_confirms_it() {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let la = RateLimiter::new(&ka.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let lb = RateLimiter::new(&kb.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let mut b = Peer {
        session: Session::new(&kb, 2, ka.public_key(), [2; 32], &lb).unwrap(),
    };
    let p = ipv4_packet([10, 244, 1, 5], b"secret");
    // An initiator under another preshared key, again and again (a restarted one each time):
    // each initiation is answered, enough of them to use each of boringtun's 8 session slots.
    for _ in 0..9 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut a = Peer {
            session: Session::new(&ka, 1, kb.public_key(), [1; 32], &la).unwrap(),
        };
        let init = send(&mut a, &p);
        let (at_a, _) = exchange(&mut a, &mut b, init);
        assert_eq!(at_a.errors, vec![SessionError::HandshakeFailed]);
    }
    let st = b.session.stats();
    assert_eq!((st.handshakes, st.last_handshake), (0, None), "{st:?}");
    // The right key: the initiator's keepalive confirms the answer, and it counts once.
    let mut a = Peer {
        session: Session::new(&ka, 1, kb.public_key(), [2; 32], &la).unwrap(),
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let init = send(&mut a, &p);
    let (_, at_b) = exchange(&mut a, &mut b, init);
    assert_eq!(at_b.delivered.len(), 1);
    let st = b.session.stats();
    assert_eq!(st.handshakes, 1, "{st:?}");
    assert!(st.last_handshake.is_some());
}

#[test]
fn ipv6_round_trip() {
    let (mut a, mut b) = pair();
    let src: Ipv6Addr = "fd00::1:5".parse().unwrap();
    let p = ipv6_packet(src, b"six");
    let init = send(&mut a, &p);
    let (_, at_b) = exchange(&mut a, &mut b, init);
    assert_eq!(at_b.delivered, vec![(p, IpAddr::V6(src))]);
}

#[test]
fn wrong_psk_gives_no_session() {
    let (mut a, mut b) = pair_with([1; 32], [2; 32]);
    let p = ipv4_packet([10, 244, 1, 5], b"secret");
    let init = send(&mut a, &p);
    let (at_a, at_b) = exchange(&mut a, &mut b, init);
    assert!(at_b.delivered.is_empty());
    assert_eq!(at_a.errors, vec![SessionError::HandshakeFailed]);
    assert_eq!(a.session.stats().handshake_failures, 1);
    assert_eq!(a.session.stats().last_handshake, None);
    // Whoever initiates, the handshake fails the same way.
    let (mut a, mut b) = pair_with([1; 32], [2; 32]);
    let init = send(&mut b, &p);
    let (at_b, at_a) = exchange(&mut b, &mut a, init);
    assert!(at_a.delivered.is_empty());
    assert_eq!(at_b.errors, vec![SessionError::HandshakeFailed]);
}

#[test]
fn wrong_peer_key_gives_no_session() {
    let (mut a, _) = pair();
    // `c` expects a stranger, but a's initiation is encrypted to c's key.
    let kc = PrivateKey::generate();
    let lc = RateLimiter::new(&kc.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let stranger = PrivateKey::generate().public_key();
    let mut c = Peer {
        session: Session::new(&kc, 3, stranger, [7; 32], &lc).unwrap(),
    };
    let ka = PrivateKey::generate();
    let la = RateLimiter::new(&ka.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let mut a_to_c = Peer {
        session: Session::new(&ka, 1, kc.public_key(), [7; 32], &la).unwrap(),
    };
    let init = send(&mut a_to_c, b"");
    let o = deliver(&mut c, &init[0]);
    assert_eq!(o.errors, vec![SessionError::WrongPeerKey]);
    assert!(o.sent.is_empty());
    assert_eq!(c.session.stats().handshake_failures, 1);

    // An initiation for someone else entirely fails mac1.
    let init = send(&mut a, b"");
    let o = deliver(&mut c, &init[0]);
    assert_eq!(o.errors, vec![SessionError::InvalidMac]);
}

#[test]
fn replays_are_rejected() {
    let (mut a, mut b) = pair();
    let p = ipv4_packet([10, 244, 1, 5], b"once");
    let init = send(&mut a, &p);
    let init_copy = init[0].clone();
    let (_, _) = exchange(&mut a, &mut b, init);

    let d = send(&mut a, &p);
    assert_eq!(deliver(&mut b, &d[0]).delivered.len(), 1);
    let again = deliver(&mut b, &d[0]);
    assert!(again.delivered.is_empty());
    assert_eq!(again.errors, vec![SessionError::Replayed]);

    let replayed_init = deliver(&mut b, &init_copy);
    assert_eq!(replayed_init.errors, vec![SessionError::ReplayedHandshake]);
    assert_eq!(b.session.stats().replays, 2);
}

#[test]
fn tampered_and_garbage_datagrams_are_errors() {
    let (mut a, mut b) = pair();
    establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
    let mut d = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"tamper me")).remove(0);
    let last = d.len() - 1;
    d[last] ^= 0x80;
    assert_eq!(
        deliver(&mut b, &d).errors,
        vec![SessionError::DecryptFailed]
    );
    assert_eq!(b.session.stats().decrypt_failures, 1);

    let mut out = [0u8; BUF];
    for bad in [&[][..], &[4, 0, 0], &[9; 40], &[1; 100]] {
        assert_eq!(
            b.session.decapsulate(None, bad, &mut out),
            Action::Error(SessionError::Malformed)
        );
    }
    // A data message for an index b never handed out.
    let mut foreign = d.clone();
    foreign[4..8].copy_from_slice(&0x0909_0900u32.to_le_bytes());
    assert!(matches!(
        b.session.decapsulate(None, &foreign, &mut out),
        Action::Error(SessionError::NoSession | SessionError::WrongIndex)
    ));
}

#[test]
fn short_buffers_are_errors_not_panics() {
    let (mut a, mut b) = pair();
    let p = ipv4_packet([10, 244, 1, 5], &[0; 500]);
    assert_eq!(
        a.session.encapsulate(&p, &mut [0u8; 147]),
        Action::Error(SessionError::BufferTooSmall)
    );
    assert_eq!(
        a.session.encapsulate(&p, &mut [0u8; 520]),
        Action::Error(SessionError::BufferTooSmall)
    );
    establish(&mut a, &mut b, &p);
    let d = send(&mut a, &p).remove(0);
    assert_eq!(
        b.session.decapsulate(None, &d, &mut [0u8; 200]),
        Action::Error(SessionError::BufferTooSmall)
    );
    assert_eq!(
        a.session.update_timers(&mut [0u8; 10]),
        Action::Error(SessionError::BufferTooSmall)
    );
    assert_eq!(
        a.session.flush_queued(&mut [0u8; 300]),
        Action::Error(SessionError::BufferTooSmall)
    );
    // Still works after all that.
    assert_eq!(deliver(&mut b, &d).delivered[0].0, p);
}

#[test]
fn index_must_fit_23_bits() {
    let k = PrivateKey::generate();
    let l = RateLimiter::new(&k.public_key(), 10);
    let peer = PrivateKey::generate().public_key();
    assert!(Session::new(&k, MAX_LOCAL_INDEX, peer, [0; 32], &l).is_ok());
    // Bit 23 is the generation of the session's tunnels, not the daemon's.
    for index in [
        MAX_LOCAL_INDEX + 1,
        crate::wire::GENERATION_BIT | 5,
        1 << 24,
    ] {
        assert_eq!(
            Session::new(&k, index, peer, [0; 32], &l).unwrap_err(),
            SessionError::IndexOutOfRange
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_datagrams_never_panic(
        kind in 1u8..=4,
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let (mut a, mut b) = pair();
        establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
        let mut d = vec![kind, 0, 0, 0];
        d.extend_from_slice(&body);
        let mut out = [0u8; BUF];
        let action = b.session.decapsulate(None, &d, &mut out);
        prop_assert!(!matches!(action, Action::WriteToTunnelV4(..) | Action::WriteToTunnelV6(..)));
    }
}

#[path = "session_switch_tests.rs"]
mod switch;
