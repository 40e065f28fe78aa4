#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::record::encode_record;
use crate::record::tests::sample;
use crate::signature::SigningKey;

/// The real boot epoch of a node started in 2025, so the clock bound is a real one.
const EPOCH: u32 = 1_750_000_000;

fn inbox() -> Inbox {
    Inbox::new(EPOCH, Instant::now())
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

/// `name`'s record at generation `g` (in this node's boot epoch), signed by `by`.
fn blob(name: &str, g: u64, by: Option<&SigningKey>) -> Vec<u8> {
    let mut r = sample(name);
    r.generation = (u64::from(EPOCH) << 32) + g;
    encode_record(&r, by).unwrap()
}

fn from() -> Option<SocketAddr> {
    Some("192.0.2.9:7946".parse().unwrap())
}

#[test]
fn a_name_binds_to_the_first_key_and_refuses_another() {
    let mut i = inbox();
    assert_eq!(
        i.offer_blob(&blob("a", 1, Some(&key(1))), from()),
        Some("a".into())
    );
    assert_eq!(i.offer_blob(&blob("a", 9, Some(&key(2))), from()), None);
    assert_eq!(i.refused[Refused::Impostor as usize], 1);
    let r = i.drain_refusals();
    assert_eq!(
        r,
        vec![Refusal {
            name: "a".into(),
            from: from(),
            key: Some(key(2).public()),
            why: Refused::Impostor
        }]
    );
    // The owner goes on; what was believed is the owner's record only.
    assert_eq!(
        i.offer_blob(&blob("a", 2, Some(&key(1))), None),
        Some("a".into())
    );
    let got = i.drain();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(r, _)| r.signer == Some(key(1).public())));
    assert_eq!(
        i.known("a").unwrap().binding,
        Some(Binding::Bound(key(1).public()))
    );
}

#[test]
fn unsigned_records_are_believed_until_the_name_is_seen_signed() {
    let mut i = inbox();
    assert!(i.offer_blob(&blob("old", 1, None), None).is_some());
    assert!(i.offer_blob(&blob("old", 2, None), None).is_some());
    assert_eq!(i.known("old").unwrap().binding, None);
    // The node is upgraded: its first signed record binds the name.
    assert!(i.offer_blob(&blob("old", 3, Some(&key(1))), None).is_some());
    // And it never goes back: an unsigned record (a downgrade, or a forger) is refused.
    assert!(i.offer_blob(&blob("old", 4, None), None).is_none());
    assert_eq!(i.refused[Refused::Unsigned as usize], 1);
    assert_eq!(i.drain().len(), 3);
}

/// An older node's state dump carries signed records re-encoded without their signature: the
/// signed copy of the same generation, arriving later, still binds the name.
#[test]
fn a_signed_copy_of_a_record_believed_unsigned_binds_it() {
    let mut i = inbox();
    assert!(i.offer_blob(&blob("a", 5, None), None).is_some());
    assert!(i.offer_blob(&blob("a", 5, None), None).is_none());
    assert!(i.offer_blob(&blob("a", 5, Some(&key(1))), None).is_some());
    assert_eq!(
        i.known("a").unwrap().binding,
        Some(Binding::Bound(key(1).public()))
    );
    assert!(
        i.offer_blob(&blob("a", 5, Some(&key(1))), None).is_none(),
        "once"
    );
    assert!(i.offer_blob(&blob("a", 5, Some(&key(2))), None).is_none());
}

#[test]
fn generations_from_the_future_are_refused() {
    let mut i = inbox();
    let mut r = sample("a");
    r.generation = u64::MAX;
    assert!(i
        .offer_blob(&encode_record(&r, Some(&key(1))).unwrap(), from())
        .is_none());
    // Just within the bound (a clock a day ahead) is believed, a second more is not.
    let ahead = u64::from(EPOCH) + MAX_CLOCK_AHEAD.as_secs();
    r.generation = (ahead + 1) << 32;
    assert!(i
        .offer_blob(&encode_record(&r, Some(&key(1))).unwrap(), None)
        .is_none());
    assert_eq!(i.refused[Refused::Generation as usize], 2);
    assert!(i.known("a").is_none(), "a refused record binds nothing");
    r.generation = (ahead << 32) | 0xffff;
    assert!(i
        .offer_blob(&encode_record(&r, Some(&key(1))).unwrap(), None)
        .is_some());
    // The bound moves with this node's clock.
    i.now += Duration::from_secs(10);
    r.generation = (ahead + 10) << 32;
    assert!(i
        .offer_blob(&encode_record(&r, Some(&key(1))).unwrap(), None)
        .is_some());
}

#[test]
fn bad_signatures_bad_names_and_a_full_table_are_refused_and_counted() {
    let mut i = inbox();
    let mut b = blob("a", 1, Some(&key(1)));
    let n = b.len();
    b[n - 3] ^= 1; // inside the signature
    assert!(i.offer_blob(&b, None).is_none());
    assert_eq!(i.refused[Refused::BadSignature as usize], 1);
    assert!(i.known("a").is_none());

    assert!(i
        .offer_blob(&blob("x\u{1b}[2J", 1, Some(&key(1))), from())
        .is_none());
    let r = i.drain_refusals();
    assert_eq!(r.last().unwrap().why, Refused::BadName);
    assert_eq!(
        r.last().unwrap().name,
        "x\\u{1b}[2J",
        "escaped for the logs"
    );

    for n in 0..MAX_NAMES {
        assert!(i
            .offer_blob(&blob(&format!("n{n}"), 1, None), None)
            .is_some());
    }
    assert!(i.offer_blob(&blob("one-more", 1, None), None).is_none());
    assert_eq!(i.refused[Refused::Full as usize], 1);
    // Known names still update.
    assert!(i.offer_blob(&blob("n7", 2, None), None).is_some());
    // Refusals waiting to be reported are bounded, the counts are not.
    assert!(i.offer_blob(&blob("n7", 3, Some(&key(1))), None).is_some());
    for _ in 0..2 * MAX_REPORTED {
        i.offer_blob(&blob("n7", 4, Some(&key(2))), None);
    }
    assert_eq!(i.drain_refusals().len(), MAX_REPORTED);
    assert_eq!(
        i.refused[Refused::Impostor as usize],
        2 * MAX_REPORTED as u64
    );
}

/// `meshd forget`: the old key keeps the name if it publishes anew within the hold; otherwise
/// the next key binds after it.
#[test]
fn a_forgotten_name_rebinds_after_the_hold_unless_its_owner_speaks() {
    let mut i = inbox();
    i.offer_blob(&blob("a", 5, Some(&key(1))), None);
    let f = Forget {
        key: key(1).public(),
        upto: i.known("a").unwrap().newest,
    };
    assert_eq!(i.release(&f), vec!["a".to_string()]);
    // During the hold, another key is still refused.
    assert!(i.offer_blob(&blob("a", 1, Some(&key(2))), None).is_none());
    assert_eq!(i.refused[Refused::Impostor as usize], 1);
    // The owner, alive, outbids the forget: bound again, and the forget no longer applies.
    assert!(i.offer_blob(&blob("a", 6, Some(&key(1))), None).is_some());
    assert_eq!(
        i.known("a").unwrap().binding,
        Some(Binding::Bound(key(1).public()))
    );
    assert!(i.release(&f).is_empty());
    i.now += REBIND_HOLD;
    assert!(i.offer_blob(&blob("a", 7, Some(&key(2))), None).is_none());

    // An owner that is gone: after the hold, the next key binds, whatever its generation.
    let f = Forget {
        key: key(1).public(),
        upto: i.known("a").unwrap().newest,
    };
    assert_eq!(i.release(&f).len(), 1);
    i.now += REBIND_HOLD;
    assert!(i.offer_blob(&blob("a", 1, Some(&key(2))), None).is_some());
    assert_eq!(
        i.known("a").unwrap().binding,
        Some(Binding::Bound(key(2).public()))
    );
    assert!(i.offer_blob(&blob("a", 9, Some(&key(1))), None).is_none());
}
