//! The timer queue: foca's timers and our own, in deadline order.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::identity::NodeId;

/// Something to do at a deadline.
#[derive(Debug, Clone)]
pub(crate) enum TimerKind {
    /// A timer foca asked for.
    Swim(foca::Timer<NodeId>),
    /// Our periodic housekeeping (see [`crate::Config::tick`]).
    Tick,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Min-heap of timers; equal deadlines fire in insertion order.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn at(&mut self, at: Instant, kind: TimerKind) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            kind,
        }));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Pops the earliest timer if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerKind> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.at(t0 + Duration::from_millis(5), TimerKind::Tick);
        t.at(
            t0 + Duration::from_millis(1),
            TimerKind::Swim(foca::Timer::ProbeRandomMember(1)),
        );
        t.at(
            t0 + Duration::from_millis(1),
            TimerKind::Swim(foca::Timer::ProbeRandomMember(2)),
        );
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert!(t.pop_due(t0).is_none());
        let now = t0 + Duration::from_millis(1);
        assert!(matches!(
            t.pop_due(now),
            Some(TimerKind::Swim(foca::Timer::ProbeRandomMember(1)))
        ));
        assert!(matches!(
            t.pop_due(now),
            Some(TimerKind::Swim(foca::Timer::ProbeRandomMember(2)))
        ));
        assert!(t.pop_due(now).is_none());
        assert!(matches!(
            t.pop_due(now + Duration::from_millis(4)),
            Some(TimerKind::Tick)
        ));
    }
}
