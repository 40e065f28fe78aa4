//! Tests of [`GossipSealer`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn secret(n: u8) -> ClusterSecret {
    ClusterSecret::from_bytes([n; 32])
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn sealer(s: &ClusterSecret, id: u64) -> GossipSealer {
    GossipSealer::with_sender_id(s, None, SealerConfig::default(), id)
}

fn seal(s: &mut GossipSealer, msg: &[u8], now: SystemTime) -> Vec<u8> {
    let mut out = vec![0u8; msg.len() + OVERHEAD];
    let n = s.seal(msg, &mut out, now).unwrap();
    assert_eq!(n, out.len());
    out
}

fn open(s: &mut GossipSealer, d: &[u8], now: SystemTime) -> Result<Vec<u8>, OpenError> {
    let mut out = vec![0u8; 2048];
    s.open(d, &mut out, now).map(|n| out[..n].to_vec())
}

#[test]
fn round_trip_and_layout() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(1), 20));
    let d = seal(&mut a, b"ping", at(0));
    assert_eq!(d[VERSION], [FORMAT_VERSION]);
    assert_eq!(d[KEY_ID], gossip_key_id(&secret(1)));
    assert_eq!(d[SENDER], 10u64.to_le_bytes());
    assert_eq!(d[COUNTER], 0u64.to_le_bytes());
    assert_eq!(read_u64(&d, TIMESTAMP), 1_700_000_000_000);
    assert!(
        !d.windows(4).any(|w| w == b"ping"),
        "plaintext in the clear"
    );
    assert_eq!(open(&mut b, &d, at(1)).unwrap(), b"ping");
    // Empty plaintexts are fine too, and counters advance.
    let e = seal(&mut a, b"", at(0));
    assert_eq!(e[COUNTER], 1u64.to_le_bytes());
    assert_eq!(open(&mut b, &e, at(0)).unwrap(), b"");
}

#[test]
fn tampering_anywhere_is_detected() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(1), 20));
    let d = seal(&mut a, b"membership update", at(0));
    for i in 0..d.len() {
        let mut t = d.clone();
        t[i] ^= 0x01;
        let err = open(&mut b, &t, at(0)).unwrap_err();
        assert_ne!(err, OpenError::Replayed, "byte {i}");
    }
    // Untouched, it still opens: no failed attempt consumed its counter.
    assert_eq!(open(&mut b, &d, at(0)).unwrap(), b"membership update");
}

#[test]
fn replay_is_rejected() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(1), 20));
    let d1 = seal(&mut a, b"1", at(0));
    let d2 = seal(&mut a, b"2", at(0));
    assert!(open(&mut b, &d2, at(0)).is_ok());
    assert!(open(&mut b, &d1, at(0)).is_ok(), "reordering is allowed");
    assert_eq!(open(&mut b, &d1, at(0)), Err(OpenError::Replayed));
    assert_eq!(open(&mut b, &d2, at(5)), Err(OpenError::Replayed));
}

#[test]
fn age_is_bounded_both_ways() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(1), 20));
    let d = seal(&mut a, b"old", at(0));
    assert_eq!(open(&mut b, &d, at(61)), Err(OpenError::Expired));
    assert_eq!(
        open(&mut b, &d, at(0) - Duration::from_secs(61)),
        Err(OpenError::FromFuture)
    );
    assert!(open(&mut b, &d, at(60)).is_ok());
    // A restarted receiver has no windows, but the age bound still holds.
    let mut restarted = sealer(&secret(1), 30);
    assert_eq!(open(&mut restarted, &d, at(100)), Err(OpenError::Expired));
}

#[test]
fn rotation_accepts_the_previous_key_only() {
    let (old, new, other) = (secret(1), secret(2), secret(3));
    let mut not_yet_rotated = sealer(&old, 10);
    let mut rotated = sealer(&old, 20);
    rotated.rotate(&new);
    let mut fresh = GossipSealer::with_sender_id(&new, Some(&old), SealerConfig::default(), 30);

    let from_old = seal(&mut not_yet_rotated, b"old key", at(0));
    let from_new = seal(&mut rotated, b"new key", at(0));
    assert_eq!(from_new[KEY_ID], gossip_key_id(&new));
    assert_eq!(open(&mut rotated, &from_old, at(0)).unwrap(), b"old key");
    assert_eq!(open(&mut fresh, &from_old, at(0)).unwrap(), b"old key");
    assert_eq!(open(&mut fresh, &from_new, at(0)).unwrap(), b"new key");
    // Not yet rotated: the new key is unknown.
    assert_eq!(
        open(&mut not_yet_rotated, &from_new, at(0)),
        Err(OpenError::UnknownKey)
    );
    // A third secret is unknown to everyone.
    let mut stranger = sealer(&other, 40);
    let foreign = seal(&mut stranger, b"let me in", at(0));
    assert_eq!(
        open(&mut fresh, &foreign, at(0)),
        Err(OpenError::UnknownKey)
    );
    // After forgetting, the old key is refused.
    let from_old2 = seal(&mut not_yet_rotated, b"late", at(0));
    fresh.forget_previous();
    assert_eq!(
        open(&mut fresh, &from_old2, at(0)),
        Err(OpenError::UnknownKey)
    );
}

#[test]
fn colliding_key_id_with_another_secret_is_forged() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(2), 20));
    let mut d = seal(&mut a, b"x", at(0));
    d[KEY_ID].copy_from_slice(&gossip_key_id(&secret(2)));
    assert_eq!(open(&mut b, &d, at(0)), Err(OpenError::Forged));
}

#[test]
fn wrong_sizes_garbage_and_reflection() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(1), 20));
    let d = seal(&mut a, b"hello", at(0));
    assert_eq!(open(&mut b, &[], at(0)), Err(OpenError::TooShort));
    assert_eq!(
        open(&mut b, &d[..OVERHEAD - 1], at(0)),
        Err(OpenError::TooShort)
    );
    assert_eq!(
        open(&mut b, &[0xff; 100], at(0)),
        Err(OpenError::BadVersion)
    );
    let mut out = [0u8; 4];
    assert_eq!(b.open(&d, &mut out, at(0)), Err(OpenError::BufferTooSmall));
    assert_eq!(open(&mut a, &d, at(0)), Err(OpenError::Reflected));
    assert_eq!(
        a.seal(b"hello", &mut [0u8; OVERHEAD + 4], at(0)),
        Err(SealError::BufferTooSmall)
    );
    // Truncated by one byte: the tag no longer matches.
    assert_eq!(
        open(&mut b, &d[..d.len() - 1], at(0)),
        Err(OpenError::Forged)
    );
}

#[test]
fn sender_table_is_bounded_and_forgets_quiet_senders_first() {
    let config = SealerConfig {
        max_age: Duration::from_secs(60),
        max_senders: 2,
    };
    let s = secret(1);
    let mut rx = GossipSealer::with_sender_id(&s, None, config, 1);
    let mut quiet = sealer(&s, 2);
    let mut busy = sealer(&s, 3);
    let mut newcomer = sealer(&s, 4);
    let q = seal(&mut quiet, b"q", at(0));
    open(&mut rx, &q, at(0)).unwrap();
    let b1 = seal(&mut busy, b"b", at(100));
    open(&mut rx, &b1, at(100)).unwrap();
    let n = seal(&mut newcomer, b"n", at(100));
    open(&mut rx, &n, at(100)).unwrap();
    assert_eq!(rx.senders.len(), 2);
    assert!(rx.senders.contains_key(&3) && rx.senders.contains_key(&4));
    // The busy sender's window survived: its replay is still caught.
    assert_eq!(open(&mut rx, &b1, at(100)), Err(OpenError::Replayed));
}

proptest! {
    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), id_ok in any::<bool>()) {
        let mut rx = sealer(&secret(1), 20);
        let mut d = bytes;
        if id_ok && d.len() >= HEADER_LEN {
            d[VERSION].fill(FORMAT_VERSION);
            d[RESERVED].fill(0);
            d[KEY_ID].copy_from_slice(&gossip_key_id(&secret(1)));
            d[TIMESTAMP].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
        }
        let mut out = [0u8; 256];
        prop_assert!(rx.open(&d, &mut out, at(0)).is_err());
    }

    #[test]
    fn round_trip_any_plaintext(msg in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let (mut a, mut b) = (sealer(&secret(9), 1), sealer(&secret(9), 2));
        let d = seal(&mut a, &msg, at(0));
        prop_assert_eq!(open(&mut b, &d, at(0)).unwrap(), msg);
    }
}
