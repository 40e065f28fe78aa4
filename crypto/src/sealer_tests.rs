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
    ring_sealer(&[s], id)
}

fn ring(secrets: &[&ClusterSecret]) -> Keyring {
    Keyring::new(secrets.iter().map(|s| (*s).clone()).collect()).unwrap()
}

fn ring_sealer(secrets: &[&ClusterSecret], id: u64) -> GossipSealer {
    GossipSealer::with_sender_id(&ring(secrets), SealerConfig::default(), id)
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
    assert_eq!(d[KEY_ID], SecretId::of(&secret(1)).0);
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

/// The three rolling steps of a rotation (add the new secret, make it primary, drop the old):
/// nodes one step apart always open each other's datagrams.
#[test]
fn rotation_steps_one_apart_always_open() {
    let (old, new) = (secret(1), secret(2));
    let steps = [
        ring(&[&old]),
        ring(&[&old, &new]),
        ring(&[&new, &old]),
        ring(&[&new]),
    ];
    let mut id = 100;
    for a in 0..steps.len() {
        for b in 0..steps.len() {
            let (mut tx, mut rx) = (
                GossipSealer::with_sender_id(&steps[a], SealerConfig::default(), id),
                GossipSealer::with_sender_id(&steps[b], SealerConfig::default(), id + 1),
            );
            id += 2;
            let d = seal(&mut tx, b"hello", at(0));
            let opened = open(&mut rx, &d, at(0));
            if a.abs_diff(b) <= 1 {
                assert_eq!(opened.unwrap(), b"hello", "steps {a} -> {b}");
            } else if a != b {
                // Two steps apart: only a skipped step gets here, and it fails loudly.
                let expect_open = steps[b].ids().contains(&steps[a].primary_id());
                assert_eq!(opened.is_ok(), expect_open, "steps {a} -> {b}");
            }
        }
    }
}

#[test]
fn set_keyring_switches_sealing_and_keeps_counts_and_windows() {
    let (old, new, other) = (secret(1), secret(2), secret(3));
    let mut peer = sealer(&old, 10);
    let mut me = ring_sealer(&[&old], 20);
    let d1 = seal(&mut peer, b"one", at(0));
    assert!(open(&mut me, &d1, at(0)).is_ok());
    me.set_keyring(&ring(&[&new, &old]));
    assert_eq!(me.sealing_id(), SecretId::of(&new));
    let sealed = seal(&mut me, b"two", at(0));
    assert_eq!(sealed[KEY_ID], SecretId::of(&new).0);
    // Still opens the old secret, counted under it; the replay window survived the change.
    let d2 = seal(&mut peer, b"three", at(0));
    assert!(open(&mut me, &d2, at(0)).is_ok());
    assert_eq!(open(&mut me, &d1, at(0)), Err(OpenError::Replayed));
    let counts: Vec<_> = me.opened().collect();
    assert_eq!(
        counts,
        vec![(SecretId::of(&new), 0), (SecretId::of(&old), 2)]
    );
    // A secret outside the ring is unknown; after the old one is dropped, so is it.
    let mut stranger = sealer(&other, 40);
    let foreign = seal(&mut stranger, b"let me in", at(0));
    assert_eq!(open(&mut me, &foreign, at(0)), Err(OpenError::UnknownKey));
    me.set_keyring(&ring(&[&new]));
    let d3 = seal(&mut peer, b"late", at(0));
    assert_eq!(open(&mut me, &d3, at(0)), Err(OpenError::UnknownKey));
    // A peer on the new secret is still heard.
    let mut moved = sealer(&new, 11);
    let d4 = seal(&mut moved, b"new", at(0));
    assert_eq!(open(&mut me, &d4, at(0)).unwrap(), b"new");
    assert_eq!(me.opened().next(), Some((SecretId::of(&new), 1)));
}

#[test]
fn colliding_key_id_with_another_secret_is_forged() {
    let (mut a, mut b) = (sealer(&secret(1), 10), sealer(&secret(2), 20));
    let mut d = seal(&mut a, b"x", at(0));
    d[KEY_ID].copy_from_slice(&SecretId::of(&secret(2)).0);
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
    let mut rx = GossipSealer::with_sender_id(&Keyring::single(s.clone()), config, 1);
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
            d[KEY_ID].copy_from_slice(&SecretId::of(&secret(1)).0);
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
