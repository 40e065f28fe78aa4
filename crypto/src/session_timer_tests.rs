//! Session timers in virtual time (`mock-clock` feature): rekey after 120 s, keys dropped
//! after 180 s, connection expired after 540 s. Nothing sleeps.

use super::*;
use crate::mock_clock;
use std::time::Duration;

/// Advances the virtual clock one second at a time, running both sessions' timers as the
/// daemon would, and returns what each wanted to send.
fn run_for(a: &mut Peer, b: &mut Peer, seconds: u64) -> (Vec<Action>, Vec<Action>) {
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    let mut out = vec![0u8; BUF];
    for _ in 0..seconds {
        mock_clock::advance(Duration::from_secs(1));
        for (p, acc) in [(&mut *a, &mut from_a), (&mut *b, &mut from_b)] {
            let action = p.session.update_timers(&mut out);
            if action != Action::Done {
                acc.push(action);
            }
        }
    }
    (from_a, from_b)
}

fn is_initiation(out: &[u8], action: Action) -> bool {
    match action {
        Action::WriteToNetwork(n) => WgDatagram::new_checked(&out[..n])
            .is_ok_and(|d| d.message_type() == MessageType::Initiation),
        _ => false,
    }
}

#[test]
fn initiator_rekeys_after_120_seconds_of_sending() {
    let (mut a, mut b) = pair();
    let p = ipv4_packet([10, 244, 1, 5], b"x");
    establish(&mut a, &mut b, &p);
    let mut out = vec![0u8; BUF];
    for second in 1..=125u64 {
        mock_clock::advance(Duration::from_secs(1));
        let d = send(&mut a, &p);
        // Data keeps flowing on the old keys while the rekey is in flight.
        for datagram in d {
            deliver(&mut b, &datagram);
        }
        let action = a.session.update_timers(&mut out);
        if second < 120 {
            assert!(!is_initiation(&out, action), "early rekey at {second} s");
        } else if is_initiation(&out, action) {
            let Action::WriteToNetwork(n) = action else {
                unreachable!()
            };
            let (at_a, at_b) = exchange(&mut a, &mut b, vec![out[..n].to_vec()]);
            assert!(at_a.errors.is_empty() && at_b.errors.is_empty());
            break;
        }
        // b answers with keepalives, as a real peer would: without them a would rekey at
        // 15 s for lack of any reply (KEEPALIVE + REKEY_TIMEOUT).
        if let Action::WriteToNetwork(n) = b.session.update_timers(&mut out) {
            deliver(&mut a, &out[..n]);
        }
    }
    assert_eq!(a.session.stats().rekeys, 1);
    assert_eq!(b.session.stats().rekeys, 1);
    assert!(a.session.stats().last_handshake < Some(Duration::from_secs(10)));
    let d = send(&mut a, &p);
    assert_eq!(deliver(&mut b, &d[0]).delivered[0].0, p);
}

#[test]
fn keys_are_dropped_after_180_seconds() {
    let (mut a, mut b) = pair();
    let p = ipv4_packet([10, 244, 1, 5], b"x");
    establish(&mut a, &mut b, &p);
    let late = send(&mut a, &p).remove(0);
    run_for(&mut a, &mut b, 179);
    assert!(b.session.stats().last_handshake.is_some());
    run_for(&mut a, &mut b, 3);
    assert_eq!(b.session.stats().last_handshake, None);
    let mut out = vec![0u8; BUF];
    assert_eq!(
        b.session.decapsulate(None, &late, &mut out),
        Action::Error(SessionError::NoSession)
    );
    // The initiator has no data keys either: a packet now starts a handshake.
    let action = a.session.encapsulate(&p, &mut out);
    assert!(
        is_initiation(&out, action) || action == Action::Done,
        "{action:?}"
    );
}

#[test]
fn connection_expires_after_540_seconds() {
    let (mut a, mut b) = pair();
    establish(&mut a, &mut b, &ipv4_packet([10, 244, 1, 5], b"x"));
    let (from_a, _) = run_for(&mut a, &mut b, 539);
    assert!(!from_a.contains(&Action::Error(SessionError::Expired)));
    assert!(!a.session.is_expired());
    let (from_a, from_b) = run_for(&mut a, &mut b, 2);
    assert!(
        from_a.contains(&Action::Error(SessionError::Expired)),
        "{from_a:?}"
    );
    assert!(
        from_b.contains(&Action::Error(SessionError::Expired)),
        "{from_b:?}"
    );
    assert!(a.session.is_expired());

    // Traffic after expiry starts over with a fresh handshake, which succeeds.
    let p = ipv4_packet([10, 244, 1, 5], b"again");
    establish(&mut a, &mut b, &p);
    assert_eq!(a.session.stats().rekeys, 1);
}
