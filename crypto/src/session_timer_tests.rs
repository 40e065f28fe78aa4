//! Session timers in virtual time (`mock-clock` feature): rekey after 120 s, keys dropped
//! after 180 s, connection expired after 540 s; preshared-key switches run tick by tick as the
//! daemon's timer thread runs them (retries, waiting for a lagging peer, retirement). Nothing
//! sleeps.

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

/// One tick of the daemon's timer thread.
const TICK: Duration = Duration::from_millis(100);

/// A pair run in virtual time: every tick each side may send one packet, runs its timers, and
/// everything sent is delivered at once (replies included) unless the network is down.
#[derive(Default)]
struct Run {
    /// Packets encapsulated by a (0) and b (1), and delivered to a (0) and b (1).
    sent: [usize; 2],
    delivered: [usize; 2],
    /// Errors returned to a (0) and b (1).
    errors: [Vec<SessionError>; 2],
    /// The generation of each initiation's sender index, by sender.
    initiations: [Vec<u32>; 2],
    /// The generation of each data message's receiver index, by sender.
    data: [Vec<u32>; 2],
    network_down: bool,
    /// Sides that send no packets, only what their timers produce.
    silent: [bool; 2],
}

impl Run {
    fn tick(&mut self, a: &mut Peer, b: &mut Peer, with_data: bool) {
        mock_clock::advance(TICK);
        let mut out = vec![0u8; BUF];
        let mut wire = std::collections::VecDeque::new();
        for (side, p) in [(0, &mut *a), (1, &mut *b)] {
            let mut o = Outcome::default();
            if with_data && !self.silent[side] {
                let src = [10, 244, side as u8 + 1, 5];
                let packet = ipv4_packet(src, &self.sent[side].to_le_bytes());
                record(p.session.encapsulate(&packet, &mut out), &out, &mut o);
                self.sent[side] += 1;
            }
            record(p.session.update_timers(&mut out), &out, &mut o);
            self.errors[side].extend(o.errors);
            wire.extend(o.sent.into_iter().map(|d| (side, d)));
        }
        let mut hops = 0;
        while let Some((from, d)) = wire.pop_front() {
            self.observe(from, &d);
            if self.network_down {
                continue;
            }
            hops += 1;
            assert!(hops < 1000, "datagrams ping-pong forever");
            let to = 1 - from;
            let o = deliver(if to == 0 { &mut *a } else { &mut *b }, &d);
            self.delivered[to] += o.delivered.len();
            self.errors[to].extend(o.errors);
            wire.extend(o.sent.into_iter().map(|d| (to, d)));
        }
    }

    fn ticks(&mut self, a: &mut Peer, b: &mut Peer, n: usize) {
        for _ in 0..n {
            self.tick(a, b, true);
        }
    }

    fn observe(&mut self, from: usize, d: &[u8]) {
        let d = WgDatagram::new_checked(d).unwrap();
        match d.message_type() {
            MessageType::Initiation => {
                self.initiations[from].push(crate::wire::generation_of(d.sender_index().unwrap()))
            }
            MessageType::Data => {
                self.data[from].push(crate::wire::generation_of(d.receiver_index().unwrap()))
            }
            _ => {}
        }
    }

    /// Every packet sent was delivered, exactly once.
    fn assert_no_loss(&self) {
        assert_eq!(self.delivered, [self.sent[1], self.sent[0]]);
    }
}

#[test]
fn psk_switch_in_virtual_time() {
    let (mut a, mut b) = established_pair();
    let mut run = Run::default();
    assert!(a.session.set_psk(P2));
    run.ticks(&mut a, &mut b, 30);
    assert!(run.errors[0].contains(&SessionError::HandshakeFailed));
    assert!(a.session.stats().psk_pending);
    assert!(run.data[0].iter().chain(&run.data[1]).all(|&g| g == 0));

    assert!(b.session.set_psk(P2));
    run.ticks(&mut a, &mut b, 2);
    for p in [&a, &b] {
        let st = p.session.stats();
        assert!(st.retiring && !st.psk_pending, "{st:?}");
    }
    let switched = [run.data[0].len(), run.data[1].len()];

    // The old tunnels go RETIRE_AFTER after the new session was confirmed, not before.
    run.ticks(&mut a, &mut b, 95);
    assert!(a.session.stats().retiring && b.session.stats().retiring);
    run.ticks(&mut a, &mut b, 10);
    assert!(!a.session.stats().retiring && !b.session.stats().retiring);
    run.ticks(&mut a, &mut b, 10);

    run.assert_no_loss();
    assert!(run.errors[0]
        .iter()
        .all(|&e| e == SessionError::HandshakeFailed));
    assert!(run.errors[1].is_empty(), "{:?}", run.errors[1]);
    for side in [0, 1] {
        assert!(run.data[side][switched[side]..].iter().all(|&g| g == 1));
    }
    assert_eq!(
        a.session.stats().rx_bytes,
        b.session.stats().tx_bytes,
        "bytes are counted across both tunnels"
    );
}

#[test]
fn a_peer_lagging_a_minute_keeps_its_session() {
    let (mut a, mut b) = established_pair();
    let mut run = Run::default();
    assert!(a.session.set_psk(P2));
    // boringtun would retry every 5 s: 15 initiations in 75 s, each taking a slot of b's
    // 8-slot session ring, the 8th overwriting the live session.
    run.ticks(&mut a, &mut b, 750);
    let rejected = MAX_PSK_REJECTIONS as usize;
    assert_eq!(run.initiations[0], vec![1; rejected]);
    assert_eq!(run.errors[0], vec![SessionError::HandshakeFailed; rejected]);
    let st = a.session.stats();
    assert!(st.psk_pending && st.psk_rejections == MAX_PSK_REJECTIONS);
    run.assert_no_loss();

    // b switches at last and initiates: a, which stopped, answers.
    assert!(b.session.set_psk(P2));
    let switched = [run.data[0].len(), run.data[1].len()];
    run.ticks(&mut a, &mut b, 150);
    run.assert_no_loss();
    assert!(!a.session.stats().retiring && !b.session.stats().retiring);
    for side in [0, 1] {
        assert!(run.data[side][switched[side] + 2..].iter().all(|&g| g == 1));
    }
    assert_eq!(run.errors[0].len(), rejected);
    assert!(run.errors[1].is_empty(), "{:?}", run.errors[1]);
}

#[test]
fn both_tunnels_get_their_timers() {
    let (mut a, mut b) = established_pair();
    let mut out = vec![0u8; BUF];
    // a last received data, so its old session owes b a keepalive 10 s from now; its new
    // tunnel initiates now and retries every 5 s, unanswered. The 10 s retry and the
    // keepalive fall due together: each goes out, one tick apart at most.
    mock_clock::advance(TICK);
    assert_eq!(a.session.update_timers(&mut out), Action::Done);
    let d = send(&mut b, &ipv4_packet([10, 244, 2, 5], b"owed a keepalive"));
    assert_eq!(deliver(&mut a, &d[0]).delivered.len(), 1);
    assert!(a.session.set_psk(P2));
    let mut sent = Vec::new();
    for tick in 0..=110u32 {
        let action = a.session.update_timers(&mut out);
        if let Action::WriteToNetwork(n) = action {
            let d = WgDatagram::new_checked(&out[..n]).unwrap();
            sent.push((tick, d.message_type()));
        }
        mock_clock::advance(TICK);
    }
    let at = |kind| {
        sent.iter()
            .filter(|(_, k)| *k == kind)
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
    };
    let initiations = at(MessageType::Initiation);
    let keepalives = at(MessageType::Data);
    assert_eq!(initiations.len(), 3, "{sent:?}");
    assert_eq!(keepalives.len(), 1, "{sent:?}");
    assert!(keepalives[0].abs_diff(initiations[2]) <= 1, "{sent:?}");
}

#[test]
fn a_switch_during_a_partition_ends_on_the_new_key() {
    let (mut a, mut b) = established_pair();
    let mut run = Run {
        network_down: true,
        ..Run::default()
    };
    assert!(a.session.set_psk(P2));
    // The old session's handshake gives up (no answer for 15 + 90 s) and it is dropped; the
    // new tunnel keeps trying, starting over each time boringtun gives up.
    run.ticks(&mut a, &mut b, 1200);
    let st = a.session.stats();
    assert!(!st.retiring && st.last_handshake.is_none(), "{st:?}");
    assert!(run.initiations[0].iter().filter(|&&g| g == 1).count() > 20);

    // b comes back on the new key too: its old session is gone, so that is a plain start.
    assert!(b.session.set_psk(P2));
    assert!(!b.session.stats().retiring);
    run.network_down = false;
    // Timers only: with packets queued on both sides, boringtun's simultaneous initiations
    // collide forever in lockstep virtual time (with or without a key switch).
    for _ in 0..60 {
        run.tick(&mut a, &mut b, false);
    }
    traffic(&mut a, &mut b, 5);
}

#[test]
fn a_waiting_session_starts_again_when_the_peer_drops_the_old_key() {
    let (mut a, mut b) = established_pair();
    let mut run = Run {
        silent: [false, true],
        ..Run::default()
    };
    assert!(a.session.set_psk(P2));
    run.ticks(&mut a, &mut b, 200);
    assert_eq!(a.session.stats().psk_rejections, MAX_PSK_REJECTIONS);

    // b restarts on the new key, with nothing to send: it will not initiate. a's old session
    // goes unanswered, its handshake under the old key fails, and a initiates again.
    let key = b.session.recipe.local_private.clone();
    let limiter = RateLimiter::new(&key.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
    let a_public = a.session.recipe.local_private.public_key();
    b.session = Session::new(&key, 2, a_public, P2, &limiter).unwrap();
    let before = run.initiations[0].len();
    run.ticks(&mut a, &mut b, 250);
    let failed_old = run.errors[0].iter().skip(MAX_PSK_REJECTIONS as usize);
    assert!(failed_old
        .clone()
        .any(|&e| e == SessionError::HandshakeFailed));
    assert_eq!(a.session.stats().psk_rejections, 0);
    assert!(run.initiations[0][before..].contains(&1));

    // In virtual time only, b refuses those as replays for a while: a tunnel's TAI64N stamps
    // are the wall clock at its creation plus virtual time since, so the new tunnel's run
    // behind the old one's, which b saw last. They catch up once the old one gives up.
    run.ticks(&mut a, &mut b, 1500);
    assert!(!a.session.stats().psk_pending);
    traffic(&mut a, &mut b, 5);
}
