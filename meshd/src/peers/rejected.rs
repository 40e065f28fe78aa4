//! Initiators whose handshake we refused because they were not peers (yet): a fixed-size
//! memory the RX path writes without allocating or locking, and the control plane reads when
//! a peer joins the peer set.
//!
//! Why: a restarted node hears a member's first initiation before gossip has told it about
//! that member. It must refuse it (it cannot tell a member from a stranger), but when the member
//! becomes a peer moments later it starts a handshake at once instead of waiting the 5 s until
//! the member's next retry ([`crate::link::registry::Links::reconcile`]).
//!
//! Anyone who knows our public key can make an initiation we refuse, from a fresh key each
//! time: the ring takes at most [`NOTE_BURST`] refusals from one source address at once and
//! one per [`NOTE_EVERY`] after that (a member retries every 5 s), so one stranger holds at
//! most a handful of the slots and cannot turn the ring over ([`meshd_crypto::SourceLimiter`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meshd_crypto::{PublicKey, SourceLimiter};

use crate::stats::Stamp;

/// Refused initiators remembered at once. A restarted node hears from every member with
/// traffic for it within a second or two; 256 covers a cluster that size without forgetting
/// one, at 40 bytes a slot. Beyond it the oldest are forgotten: those members retry on their
/// own after 5 s, as before.
pub(crate) const REJECTED_SLOTS: usize = 256;
/// How long a refusal is remembered: twice boringtun's 5 s handshake retry (REKEY_TIMEOUT).
/// A member that becomes a peer later than that has retried on its own by then.
pub(crate) const REJECTED_MEMORY: Duration = Duration::from_secs(10);
/// Refusals one source address may have remembered at once: a few members behind one NAT
/// address, restarted together.
pub(crate) const NOTE_BURST: u32 = 4;
/// And then one per this long: WireGuard's REKEY_TIMEOUT, how often a member retries. Within
/// [`REJECTED_MEMORY`] one source holds at most `NOTE_BURST + 2` of the slots.
pub(crate) const NOTE_EVERY: Duration = Duration::from_secs(5);
/// Buckets of the per-source limit: 8 KiB, and two sources rarely share one.
const SOURCE_BUCKETS: usize = 1024;

/// A ring of (key, when) slots. A writer that races another on the same slot may leave a torn
/// key: it then matches no peer, which costs at most the 5 s retry this is here to save.
pub struct RejectedInitiators {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    sources: SourceLimiter,
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
            sources: SourceLimiter::new(SOURCE_BUCKETS, NOTE_EVERY, NOTE_BURST),
        }
    }
}

impl RejectedInitiators {
    /// The RX path refused an initiation from `key`, sent from `src`, at `now`. Whether it is
    /// remembered: not when `src` is over its limit (counted, [`RejectedInitiators::limited`]).
    #[inline]
    pub fn note(&self, key: &PublicKey, src: IpAddr, now: Stamp) -> bool {
        if !self.sources.allow(src, now.raw()) {
            return false;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        slot.at.store(0, Ordering::Relaxed);
        for (word, chunk) in slot.key.iter().zip(words(key)) {
            word.store(chunk, Ordering::Relaxed);
        }
        slot.at.store(now.raw(), Ordering::Release);
        true
    }

    /// Refusals not remembered because their source was over its limit.
    pub fn limited(&self) -> u64 {
        self.sources.refused()
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

    fn source(n: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, n])
    }

    #[test]
    fn a_refusal_is_remembered_once_and_for_ten_seconds() {
        let r = RejectedInitiators::default();
        let (a, b) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let t0 = Stamp::now();
        assert!(r.note(&a, source(1), t0));
        assert!(!r.take(&b, t0), "never refused");
        assert!(r.take(&a, later(t0, Duration::from_secs(3))));
        assert!(!r.take(&a, t0), "one refusal, one handshake");
        assert!(r.note(&a, source(1), t0));
        assert!(!r.take(&a, later(t0, REJECTED_MEMORY + Duration::from_secs(1))));
    }

    #[test]
    fn the_ring_forgets_the_oldest_first() {
        let r = RejectedInitiators::default();
        let t0 = Stamp::now();
        let keys: Vec<PublicKey> = (0..REJECTED_SLOTS + 1)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        // One source each (over the limit, one source would be refused): distinct buckets
        // are not needed, a shared one only refuses more.
        for (i, k) in keys.iter().enumerate() {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            if !r.note(k, src, t0) {
                // Two of these sources share a bucket: try the key from a source of its own.
                let other = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i as u32));
                assert!(r.note(k, other, t0));
            }
        }
        assert!(!r.take(&keys[0], t0), "overwritten by the last one");
        assert!(r.take(&keys[1], t0));
        assert!(r.take(&keys[REJECTED_SLOTS], t0));
    }

    /// A stranger who knows our key sends initiations from fresh keys, as fast as the node
    /// takes them, from one address: it gets a few slots, and a member's refusal noted before
    /// the flood is still there after it.
    #[test]
    fn a_flood_from_one_source_evicts_nobody() {
        let r = RejectedInitiators::default();
        let t0 = Stamp::now();
        let member = PrivateKey::generate().public_key();
        assert!(r.note(&member, source(2), t0));
        let stranger = source(200);
        let mut kept = 0;
        for i in 0..2 * REJECTED_SLOTS as u64 {
            // 100 a second (the node's handshake limit) for five seconds.
            let at = later(t0, Duration::from_millis(10 * i));
            kept += usize::from(r.note(&PrivateKey::generate().public_key(), stranger, at));
        }
        assert!(
            kept <= NOTE_BURST as usize + 1,
            "the stranger kept {kept} slots"
        );
        assert_eq!(r.limited(), 2 * REJECTED_SLOTS as u64 - kept as u64);
        assert!(r.take(&member, later(t0, Duration::from_secs(5))));
    }
}
