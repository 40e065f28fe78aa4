//! Data messages of one session in flight from several senders, kept inside the receiver's
//! replay window by construction.
//!
//! A node encrypts for one peer on several threads (one per queue), each holding what it
//! encrypted until it sends its batch in one system call. Counters are taken in the order the
//! session's lock is taken, but datagrams leave in the order batches are sent: a thread that
//! took counter `c` and was preempted before sending lets others send `c + 1`, `c + 2`, …
//! first. The receiver refuses any counter more than [`REPLAY_WINDOW`] behind the highest it
//! has seen, so without a bound the late batch is lost as replays (with 8 queues of 256-packet
//! batches, 2,048 counters can be claimed while one batch waits).
//!
//! [`InFlight`] is that bound. Each sender owns a slot that names the oldest data message it
//! holds unsent (its place in [`crate::Session::data_sent`], the count every counter follows);
//! before encrypting message `next`, a sender asks [`InFlight::admit`] whether `next` is within
//! [`IN_FLIGHT_LIMIT`] of the oldest message any sender holds. If not, it must send what it
//! holds (any peer's: so that no sender waits while holding, and no two wait on each other)
//! and, if still refused, wait for the others to send theirs. Whatever the scheduling, no two
//! data messages the peer receives out of order are further apart than the limit.
//!
//! `admit` and [`InFlight::held`] run under the session's lock (which orders them with the
//! counters); [`InFlight::release`] runs after the send, without it. The fast path is one
//! relaxed load: the oldest held message can only move forward, so a cached value of it is a
//! safe bound, and the slots are read again only when `next` nears the limit.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::REPLAY_WINDOW;

/// Senders (queues) one session can have; meshd runs at most 64 queues.
pub const MAX_SENDERS: usize = 64;
/// Data messages that may separate the oldest one held unsent from the next one encrypted: three
/// quarters of the receiver's window, leaving the rest for reordering on the way (two UDP flows
/// into one socket) and for boringtun's window moving a 64-bit word at a time.
pub const IN_FLIGHT_LIMIT: u64 = REPLAY_WINDOW / 4 * 3;

/// Why [`InFlight::admit`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// This sender holds messages of this session: send them (and everything else it holds).
    Holding,
    /// Others hold the oldest messages: send what this sender holds of any session, then wait.
    Others,
}

/// The oldest unsent data message of each sender of one session (see the module docs).
pub struct InFlight {
    /// Per sender: 1 + the place (in `data_sent`) of the oldest message it holds; 0 for none.
    slots: Box<[AtomicU64]>,
    /// A lower bound of the oldest message held by anyone (or of `next` when none is): written
    /// under the session's lock.
    low: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            slots: (0..MAX_SENDERS).map(|_| AtomicU64::new(0)).collect(),
            low: AtomicU64::new(0),
        }
    }
}

impl InFlight {
    /// May `sender` encrypt data message number `next` (the session's `data_sent()`)? Call
    /// under the session's lock, before `encapsulate`.
    #[inline]
    pub fn admit(&self, sender: usize, next: u64) -> Result<(), Blocked> {
        if next.saturating_sub(self.low.load(Ordering::Relaxed)) < IN_FLIGHT_LIMIT {
            return Ok(());
        }
        let low = self
            .slots
            .iter()
            .filter_map(|s| s.load(Ordering::Acquire).checked_sub(1))
            .fold(next, u64::min);
        self.low.store(low, Ordering::Relaxed);
        if next - low < IN_FLIGHT_LIMIT {
            return Ok(());
        }
        match self.slot(sender).map(|s| s.load(Ordering::Relaxed)) {
            Some(held) if held != 0 => Err(Blocked::Holding),
            _ => Err(Blocked::Others),
        }
    }

    /// `sender` now holds data message number `seq` unsent (`encapsulate` made it after
    /// [`InFlight::admit`]). Call under the session's lock.
    #[inline]
    pub fn held(&self, sender: usize, seq: u64) {
        if let Some(slot) = self.slot(sender) {
            if slot.load(Ordering::Relaxed) == 0 {
                slot.store(seq + 1, Ordering::Relaxed);
            }
        }
    }

    /// `sender` has sent every message of this session it held.
    #[inline]
    pub fn release(&self, sender: usize) {
        if let Some(slot) = self.slot(sender) {
            slot.store(0, Ordering::Release);
        }
    }

    /// Whether `sender` holds anything unsent.
    pub fn holds(&self, sender: usize) -> bool {
        self.slot(sender)
            .is_some_and(|s| s.load(Ordering::Relaxed) != 0)
    }

    /// A sender beyond [`MAX_SENDERS`] has no slot and holds nothing by this count: meshd's
    /// configuration refuses more queues than that.
    fn slot(&self, sender: usize) -> Option<&AtomicU64> {
        self.slots.get(sender)
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<(usize, u64)> = (0..self.slots.len())
            .filter_map(|i| Some((i, self.slots[i].load(Ordering::Relaxed).checked_sub(1)?)))
            .collect();
        f.debug_struct("InFlight").field("held", &held).finish()
    }
}

#[cfg(test)]
#[path = "in_flight_tests.rs"]
mod tests;
