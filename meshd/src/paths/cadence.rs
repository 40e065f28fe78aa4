//! How often each path of each peer is probed, and how big the probes are.
//!
//! Every node probes every peer, so what probing costs grows with the cluster twice over: a
//! 100-node lab probing each peer every 500 ms with pod-sized probes spent a core on probes and
//! their replies, and the replies of a node's 99 peers, arriving in one burst, overflowed the
//! probe socket's buffer, so the same peers' replies were lost round after round and their
//! paths flapped. Hence:
//! - a node sends at most [`MAX_PROBE_RATE`] probes a second whatever the cluster's size: the
//!   interval per peer grows instead ([`probe_interval`]), and detection with it (three
//!   intervals and a timeout: 2.5 s with a few peers, about 7 s with 100);
//! - each interval is jittered, so a node's probes spread over it instead of leaving, and their
//!   replies arriving, together;
//! - most probes are small ([`SMALL_PROBE`]): they show that the path carries packets. What
//!   finds an MTU black hole is a pod-sized probe, sent every [`FULL_PROBE_EVERY`]th probe of a
//!   passing path, and every probe after a loss until one passes, so a black hole is still
//!   three pod-sized losses in a row.

use std::time::{Duration, SystemTime};

/// The shortest interval between two probes of one path of one peer (a node with few peers).
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Probes a node sends a second, at most, on average: with more peers than this rate allows at
/// [`MIN_PROBE_INTERVAL`], each peer is probed less often.
pub const MAX_PROBE_RATE: u32 = 50;
/// The IPv4 total length of a liveness probe: an echo request with a 36-byte payload.
pub const SMALL_PROBE: u16 = 64;
/// One probe in this many of a passing path is pod-sized.
pub const FULL_PROBE_EVERY: u32 = 4;

/// How long until a peer's next probe, for a node that sends `probes_per_round` probes each
/// round (its peers times the paths it probes to each): [`MIN_PROBE_INTERVAL`], or longer so the
/// node keeps to [`MAX_PROBE_RATE`]; times a random factor of 0.5 to 1.5, so the peers' probes
/// spread over the interval instead of leaving (and their replies arriving) together.
pub fn probe_interval(probes_per_round: usize) -> Duration {
    let base = MIN_PROBE_INTERVAL.max(Duration::from_secs_f64(
        probes_per_round as f64 / f64::from(MAX_PROBE_RATE),
    ));
    base.mul_f64(0.5 + unit_random())
}

/// A number in [0, 1) from a xorshift generator seeded from the clock: for jitter only.
fn unit_random() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_peers_get_the_shortest_interval_many_share_the_rate() {
        let ms = |n| {
            (0..200)
                .map(|_| probe_interval(n).as_millis())
                .collect::<Vec<_>>()
        };
        let two = ms(2);
        assert!(two.iter().all(|t| (250..=750).contains(t)), "{two:?}");
        // 100 probes a round at 50 a second: every 2 s on average, jittered by half.
        let hundred = ms(100);
        assert!(
            hundred.iter().all(|t| (1000..=3000).contains(t)),
            "{hundred:?}"
        );
        assert!(
            hundred.iter().any(|t| *t != hundred[0]),
            "the interval is jittered"
        );
    }
}
