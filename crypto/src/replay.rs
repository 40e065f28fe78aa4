//! A sliding anti-replay window over 64-bit counters (the bitmap scheme of RFC 6479, which
//! WireGuard also uses): constant memory, no allocation, checked before the AEAD and marked
//! only after it.

/// Words in the bitmap.
const WORDS: usize = 16;
const BITS: u64 = (WORDS as u64) * 64;
/// How far behind the highest counter a datagram may arrive and still be accepted. One word
/// less than the bitmap, because the window advances a whole word at a time.
pub const REPLAY_WINDOW: u64 = BITS - 64;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Seen before.
    Duplicate,
    /// Further behind the highest counter than the window reaches.
    TooOld,
}

#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    /// Highest counter marked; meaningless while `empty`.
    top: u64,
    empty: bool,
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        Self {
            top: 0,
            empty: true,
            bitmap: [0; WORDS],
        }
    }

    /// Would `counter` be accepted? Does not change the window.
    pub(crate) fn check(&self, counter: u64) -> Result<(), Replay> {
        if self.empty || counter > self.top {
            return Ok(());
        }
        if self.top - counter >= REPLAY_WINDOW {
            return Err(Replay::TooOld);
        }
        let (word, bit) = position(counter);
        if self.bitmap[word] & bit != 0 {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Marks `counter` as received; fails, changing nothing, if `check` would.
    pub(crate) fn mark(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        if self.empty || counter > self.top {
            let new_word = counter / 64;
            // Clear the words the window slides over; all of them if it jumps past the bitmap.
            let steps = if self.empty {
                WORDS as u64
            } else {
                (new_word - self.top / 64).min(WORDS as u64)
            };
            for i in 0..steps {
                let w = new_word.wrapping_sub(i) % WORDS as u64;
                self.bitmap[w as usize] = 0;
            }
            self.top = counter;
            self.empty = false;
        }
        let (word, bit) = position(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }
}

fn position(counter: u64) -> (usize, u64) {
    (
        ((counter / 64) % WORDS as u64) as usize,
        1 << (counter % 64),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_out_of_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for c in [0, 1, 5, 3, 2, 4, 64, 63, 900] {
            assert_eq!(w.mark(c), Ok(()), "{c}");
        }
        for c in [0, 5, 64, 900] {
            assert_eq!(w.mark(c), Err(Replay::Duplicate), "{c}");
        }
        assert_eq!(w.mark(1000), Ok(()));
        assert_eq!(w.check(1000 - REPLAY_WINDOW), Err(Replay::TooOld));
        assert_eq!(w.mark(1000 - REPLAY_WINDOW + 1), Ok(()));
        assert_eq!(w.mark(u64::MAX), Ok(()));
        assert_eq!(w.mark(u64::MAX), Err(Replay::Duplicate));
        assert_eq!(w.mark(1000), Err(Replay::TooOld));
    }

    #[test]
    fn big_jump_clears_the_bitmap() {
        let mut w = ReplayWindow::new();
        for c in 0..BITS {
            w.mark(c).unwrap();
        }
        let far = 10 * BITS + 7;
        w.mark(far).unwrap();
        // Everything recent that was never sent is accepted once.
        for c in far - REPLAY_WINDOW + 1..far {
            assert_eq!(w.mark(c), Ok(()), "{c}");
            assert_eq!(w.mark(c), Err(Replay::Duplicate), "{c}");
        }
    }

    proptest! {
        /// Against a model: a counter is accepted iff it is new and within the window of the
        /// highest accepted so far.
        #[test]
        fn matches_a_set_model(counters in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut top: Option<u64> = None;
            for c in counters {
                let fresh = !seen.contains(&c);
                let in_window = top.is_none_or(|t| c > t || t - c < REPLAY_WINDOW);
                let got = w.mark(c);
                prop_assert_eq!(got.is_ok(), fresh && in_window, "counter {}", c);
                if got.is_ok() {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
