//! Per-source admission for work that anyone who knows a node's public key can ask of it: a
//! token bucket per source address, so that one source cannot take what is meant for all.
//!
//! WireGuard's answer to a handshake flood is the cookie (the node's [`crate::RateLimiter`]:
//! over a node-wide rate, an initiator must prove it receives at its address), and the
//! kernel's implementation adds a rate per source address on top. This is that second half,
//! for state a refused handshake leaves behind: the daemon remembers initiators it refused in
//! a small ring (so that a member it learns moments later gets a handshake at once), and
//! without a limit per source a single stranger replaying initiations from fresh keys would
//! turn that ring over every few seconds.
//!
//! The buckets are a fixed table indexed by a keyed hash of the address (SipHash with a key
//! drawn per limiter), so the table costs the same whatever the number of sources, a stranger
//! cannot aim at a member's bucket, and [`SourceLimiter::allow`] neither locks nor allocates.
//! Each bucket is one atomic word holding the GCRA's "theoretical arrival time": a source may
//! pass [`SourceLimiter::new`]'s `burst` times at once, then once every `every`.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Compare-and-swap attempts on a contended bucket before the request is refused: two threads
/// racing on one source's bucket is itself a burst from that source.
const CAS_TRIES: usize = 4;

/// A token bucket per source address (see the module docs). Time is a parameter: the caller's
/// monotonic milliseconds.
pub struct SourceLimiter {
    /// Per bucket: the time (caller's ms) at which it is full again; 0 for never used.
    buckets: Box<[AtomicU64]>,
    hasher: RandomState,
    every_ms: u64,
    /// How far ahead of now a bucket's time may run: `(burst - 1) × every`.
    tolerance_ms: u64,
    refused: AtomicU64,
}

impl SourceLimiter {
    /// A limiter of `buckets` buckets (at least one) in which each source passes `burst` times
    /// (at least once) in a row, then once every `every`.
    pub fn new(buckets: usize, every: Duration, burst: u32) -> Self {
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            buckets: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            every_ms,
            tolerance_ms: every_ms.saturating_mul(u64::from(burst.max(1) - 1)),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether `src` may pass at `now_ms` (milliseconds on any monotonic clock the caller
    /// keeps, the same one every call); a refusal is counted ([`SourceLimiter::refused`]).
    pub fn allow(&self, src: IpAddr, now_ms: u64) -> bool {
        let bucket = &self.buckets[self.bucket(src)];
        for _ in 0..CAS_TRIES {
            let full_at = bucket.load(Ordering::Relaxed);
            if full_at > now_ms.saturating_add(self.tolerance_ms) {
                break;
            }
            let next = full_at.max(now_ms).saturating_add(self.every_ms);
            if bucket
                .compare_exchange(full_at, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Which bucket `src` counts against.
    pub fn bucket(&self, src: IpAddr) -> usize {
        (self.hasher.hash_one(src) % self.buckets.len() as u64) as usize
    }
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter")
            .field("buckets", &self.buckets.len())
            .field("every_ms", &self.every_ms)
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    fn addr(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + n))
    }

    /// A source whose bucket is not `of`'s: the hash key is random, so look for one.
    fn elsewhere(l: &SourceLimiter, of: IpAddr) -> IpAddr {
        (1..)
            .map(addr)
            .find(|a| l.bucket(*a) != l.bucket(of))
            .unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_one_per_interval() {
        let l = SourceLimiter::new(1024, EVERY, 3);
        let (x, t0) = (addr(200), 1_000_000);
        assert!((0..3).all(|_| l.allow(x, t0)), "the burst");
        assert!(!l.allow(x, t0));
        assert!(!l.allow(x, t0 + 4_999));
        assert!(l.allow(x, t0 + 5_000), "one more after an interval");
        assert!(!l.allow(x, t0 + 5_000));
        assert_eq!(l.refused(), 3);
        // Quiet for long enough, the whole burst is back (and no more).
        let later = t0 + 60_000;
        assert_eq!((0..10).filter(|_| l.allow(x, later)).count(), 3);
    }

    #[test]
    fn a_flood_from_one_source_leaves_the_others_alone() {
        let l = SourceLimiter::new(1024, EVERY, 2);
        let flooder = addr(200);
        let t0 = 7;
        let passed = (0..100_000)
            .filter(|i| l.allow(flooder, t0 + i / 100))
            .count();
        // 1,000 ms of flood: the burst of two, and nothing more within the first interval.
        assert_eq!(passed, 2);
        assert_eq!(l.refused(), 100_000 - 2);
        let member = elsewhere(&l, flooder);
        assert!(l.allow(member, t0 + 1_000) && l.allow(member, t0 + 1_000));
        // IPv6 sources are buckets of their own too.
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let v6 = if l.bucket(v6) == l.bucket(flooder) {
            elsewhere(&l, flooder)
        } else {
            v6
        };
        assert!(l.allow(v6, t0));
    }

    #[test]
    fn racing_threads_never_pass_more_than_the_burst() {
        let l = std::sync::Arc::new(SourceLimiter::new(16, EVERY, 4));
        let x = addr(9);
        let passed: usize = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..1000).filter(|_| l.allow(x, 50)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(passed, 4);
        assert_eq!(l.refused(), 4000 - 4);
    }

    #[test]
    fn degenerate_sizes_still_limit() {
        let l = SourceLimiter::new(0, Duration::ZERO, 0);
        assert!(l.allow(addr(1), 10));
        assert!(!l.allow(addr(2), 10), "one bucket for all, one pass per ms");
        assert!(l.allow(addr(2), 11));
    }
}
