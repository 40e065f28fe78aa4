//! The round trip a responder measures ([`crate::answer`]), in virtual time (`mock-clock`
//! feature): from its response to the initiator's first data, in microseconds, whatever the
//! network's delay; kept across a rekey until the rekey's own measurement; nothing from a
//! response the initiator cannot use.

use super::*;
use crate::mock_clock;
use std::time::Duration;

/// Delivers `datagrams` to `to` once `delay` of virtual time has passed; what `to` sends.
fn after(delay: Duration, to: &mut Peer, datagrams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    mock_clock::advance(delay);
    datagrams.iter().flat_map(|d| deliver(to, d).sent).collect()
}

/// An initiation from `a` (a fresh one, or its first packet's).
fn initiation(a: &mut Peer) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; BUF];
    let Action::WriteToNetwork(n) = a.session.initiate_handshake(&mut out) else {
        panic!("no initiation")
    };
    vec![out[..n].to_vec()]
}

#[test]
fn the_responder_measures_from_its_response_to_the_initiators_first_data() {
    let (mut a, mut b) = pair();
    let leg = Duration::from_micros(7_250);
    let init = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"x"));
    let response = after(leg, &mut b, init);
    assert_eq!(
        b.session.stats().responder_rtt,
        None,
        "measured on answering"
    );
    let data = after(leg, &mut a, response);
    assert!(!data.is_empty(), "the initiator sends at once");
    after(leg, &mut b, data);
    let (sa, sb) = (a.session.stats(), b.session.stats());
    assert_eq!(sb.responder_rtt, Some(Duration::from_micros(14_500)));
    assert_eq!(sb.handshakes, 1);
    // The initiator's own measurement, to the millisecond; the responder has none.
    assert_eq!(sa.handshake_rtt_ms, Some(14));
    assert_eq!((sa.responder_rtt, sb.handshake_rtt_ms), (None, None));
}

#[test]
fn the_measurement_is_kept_across_a_rekey_until_the_rekey_measures() {
    let (mut a, mut b) = pair();
    let init = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"x"));
    let leg = Duration::from_millis(20);
    let response = after(leg, &mut b, init);
    let data = after(leg, &mut a, response);
    after(leg, &mut b, data);
    let first = Some(Duration::from_millis(40));
    assert_eq!(b.session.stats().responder_rtt, first);

    mock_clock::advance(Duration::from_secs(2));
    let leg = Duration::from_micros(300);
    let init = initiation(&mut a);
    let response = after(leg, &mut b, init);
    // Answered, not confirmed: the last measurement stands.
    assert_eq!(b.session.stats().responder_rtt, first);
    let data = after(leg, &mut a, response);
    after(leg, &mut b, data);
    let st = b.session.stats();
    assert_eq!(st.responder_rtt, Some(Duration::from_micros(600)));
    assert_eq!((st.handshakes, st.rekeys), (2, 1));
}

#[test]
fn a_response_the_initiator_cannot_use_measures_nothing() {
    // Another preshared key: the initiation verifies, the response does not.
    let (mut a, mut b) = pair_with([7; 32], [8; 32]);
    let init = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"x"));
    let leg = Duration::from_millis(5);
    let response = after(leg, &mut b, init);
    assert_eq!(response.len(), 1, "b answered");
    let data = after(leg, &mut a, response);
    assert!(data.is_empty(), "a sent {} datagrams", data.len());
    mock_clock::advance(Duration::from_secs(1));
    let st = b.session.stats();
    assert_eq!((st.responder_rtt, st.handshakes), (None, 0));
}

/// What `p`'s timers send now (a handshake retry, a keepalive), if anything.
fn timers(p: &mut Peer) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; BUF];
    match p.session.update_timers(&mut out) {
        Action::WriteToNetwork(n) => vec![out[..n].to_vec()],
        _ => Vec::new(),
    }
}

#[test]
fn a_response_the_initiator_takes_up_after_retrying_is_measured() {
    // a's first initiation is answered slowly; a retries (5 s on), b answers the retry too, and
    // that answer is lost; then the first answer reaches a, which sends on its session.
    let (mut a, mut b) = pair();
    let leg = Duration::from_millis(10);
    let init = send(&mut a, &ipv4_packet([10, 244, 1, 5], b"x"));
    let first = after(leg, &mut b, init);
    mock_clock::advance(Duration::from_secs(5));
    let retry = timers(&mut a);
    assert_eq!(retry.len(), 1, "a retried");
    let lost = after(leg, &mut b, retry);
    assert_eq!(lost.len(), 1, "b answered the retry");
    let data = after(leg, &mut a, first);
    assert!(!data.is_empty(), "a sends on the first answer's session");
    after(leg, &mut b, data);
    let st = b.session.stats();
    // From b's first answer (at 10 ms) to a's data (at 5 s + 40 ms).
    assert_eq!(st.responder_rtt, Some(Duration::from_millis(5_030)));
    assert_eq!(st.handshakes, 1);
    assert!(st.last_handshake.is_some(), "b has a session");
}

#[test]
fn crossing_initiations_are_measured_at_both_ends() {
    // Both initiate at once; each answers the other's initiation, then takes the other's
    // answer: two sessions, and each end measures as initiator and as responder.
    let (mut a, mut b) = pair();
    let leg = Duration::from_micros(2_500);
    let from_a = initiation(&mut a);
    let from_b = initiation(&mut b);
    mock_clock::advance(leg);
    let to_a = after(Duration::ZERO, &mut b, from_a);
    let to_b = after(Duration::ZERO, &mut a, from_b);
    assert_eq!((to_a.len(), to_b.len()), (1, 1), "each answered");
    mock_clock::advance(leg);
    let data_to_b = after(Duration::ZERO, &mut a, to_a);
    let data_to_a = after(Duration::ZERO, &mut b, to_b);
    assert!(!data_to_b.is_empty() && !data_to_a.is_empty());
    mock_clock::advance(leg);
    after(Duration::ZERO, &mut b, data_to_b);
    after(Duration::ZERO, &mut a, data_to_a);
    for (name, p) in [("a", &a), ("b", &b)] {
        let st = p.session.stats();
        assert_eq!(st.handshake_rtt_ms, Some(5), "{name} as initiator");
        assert_eq!(
            st.responder_rtt,
            Some(Duration::from_micros(5_000)),
            "{name} as responder"
        );
        assert_eq!(st.handshakes, 2, "{name}");
    }
}
