//! Initiators whose handshake we refused because they were not peers (yet): a fixed-size
//! memory the RX path writes without allocating or locking, and the control plane reads when
//! a peer joins the peer set.
//!
//! Why: a restarted node hears a member's first initiation before gossip has told it about
//! that member. It must refuse it (it cannot tell a member from a stranger), but when the member
//! becomes a peer moments later it starts a handshake at once instead of waiting the 5 s until
//! the member's next retry ([`crate::link::registry::Links::reconcile`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meshd_crypto::PublicKey;

use crate::stats::Stamp;

/// Refused initiators remembered at once. A restarted node hears from every member with
/// traffic for it within a second or two; 256 covers a cluster that size without forgetting
/// one, at 40 bytes a slot. Beyond it the oldest are forgotten: those members retry on their
/// own after 5 s, as before.
pub(crate) const REJECTED_SLOTS: usize = 256;
/// How long a refusal is remembered: twice boringtun's 5 s handshake retry (REKEY_TIMEOUT).
/// A member that becomes a peer later than that has retried on its own by then.
pub(crate) const REJECTED_MEMORY: Duration = Duration::from_secs(10);

/// A ring of (key, when) slots. A writer that races another on the same slot may leave a torn
/// key: it then matches no peer, which costs at most the 5 s retry this is here to save.
pub struct RejectedInitiators {
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    key: [AtomicU64; 4],
    /// [`Stamp`] milliseconds; 0 while empty or being written.
    at: AtomicU64,
}

impl Default for RejectedInitiators {
    fn default() -> Self {
        RejectedInitiators {
            slots: (0..REJECTED_SLOTS).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl RejectedInitiators {
    /// The RX path refused an initiation from `key` at `now`.
    #[inline]
    pub fn note(&self, key: &PublicKey, now: Stamp) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        slot.at.store(0, Ordering::Relaxed);
        for (word, chunk) in slot.key.iter().zip(words(key)) {
            word.store(chunk, Ordering::Relaxed);
        }
        slot.at.store(now.raw(), Ordering::Release);
    }

    /// Whether `key` was refused within [`REJECTED_MEMORY`] before `now`; forgets it if so, so
    /// that one refusal starts one handshake.
    pub fn take(&self, key: &PublicKey, now: Stamp) -> bool {
        let want = words(key);
        let mut found = false;
        for slot in self.slots.iter() {
            let at = slot.at.load(Ordering::Acquire);
            let Some(when) = Stamp::from_raw(at) else {
                continue;
            };
            if when.age(now) > REJECTED_MEMORY {
                continue;
            }
            let same = slot
                .key
                .iter()
                .zip(want)
                .all(|(w, k)| w.load(Ordering::Relaxed) == k);
            // A slot rewritten while we read it is not the one we compared.
            if same
                && slot
                    .at
                    .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                found = true;
            }
        }
        found
    }
}

fn words(key: &PublicKey) -> [u64; 4] {
    let b = key.as_bytes();
    std::array::from_fn(|i| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use meshd_crypto::PrivateKey;

    fn later(s: Stamp, d: Duration) -> Stamp {
        Stamp::from_raw(s.raw() + d.as_millis() as u64).unwrap()
    }

    #[test]
    fn a_refusal_is_remembered_once_and_for_ten_seconds() {
        let r = RejectedInitiators::default();
        let (a, b) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let t0 = Stamp::now();
        r.note(&a, t0);
        assert!(!r.take(&b, t0), "never refused");
        assert!(r.take(&a, later(t0, Duration::from_secs(3))));
        assert!(!r.take(&a, t0), "one refusal, one handshake");
        r.note(&a, t0);
        assert!(!r.take(&a, later(t0, REJECTED_MEMORY + Duration::from_secs(1))));
    }

    #[test]
    fn the_ring_forgets_the_oldest_first() {
        let r = RejectedInitiators::default();
        let t0 = Stamp::now();
        let keys: Vec<PublicKey> = (0..REJECTED_SLOTS + 1)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        for k in &keys {
            r.note(k, t0);
        }
        assert!(!r.take(&keys[0], t0), "overwritten by the last one");
        assert!(r.take(&keys[1], t0));
        assert!(r.take(&keys[REJECTED_SLOTS], t0));
    }
}
