//! Peers whose subnets this node refuses to route, and why: what the last resolve refused,
//! logged once per change (and at most [`LOG_BURST`] lines a minute, so a member that flips
//! its claim cannot flood the log), counted, and shown in `meshd status`.
//!
//! Not [`super::rejected`]: that is the data path's lock-free memory of refused WireGuard
//! initiators; this is the control plane's account of refused subnets, written only by the
//! reconcile step (under the backend's lock).

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::claims::Why;

/// Refusal log lines allowed in a burst; one more comes back every [`LOG_REFILL`]. A mistyped
/// config or a restart refuses a handful of subnets at once, all logged; a member changing its
/// claim every moment is logged ten times a minute, the rest counted.
pub(crate) const LOG_BURST: u32 = 10;
/// See [`LOG_BURST`].
pub(crate) const LOG_REFILL: Duration = Duration::from_secs(6);

/// Whether the refused subnet came from this node's config or from a member's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Static,
    Member,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static peer",
            Source::Member => "member",
        }
    }
}

/// One refused peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) name: String,
    pub(crate) source: Source,
    pub(crate) subnet: Ipv4Net,
    pub(crate) why: Why,
}

/// What the last resolve refused, and how many refusals there were since start.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    current: BTreeMap<String, Refused>,
    /// Refusals since start: each new one, and each change of a standing one.
    total: u64,
    /// Log lines left in the current burst, and when the next comes back.
    tokens: u32,
    refill_at: Option<Instant>,
    /// Refusals not logged for want of a token, reported with the next line logged.
    unlogged: u64,
}

impl Refusals {
    /// The refusals of a new resolve: each new or changed one is counted and logged; one that
    /// is gone is logged at info (the peer is routed now, or gone).
    pub(crate) fn update(&mut self, refused: Vec<Refused>, now: Instant) {
        let mut next = BTreeMap::new();
        for r in refused {
            if self.current.get(&r.name) != Some(&r) {
                self.total += 1;
                self.log(&r, now);
            }
            next.insert(r.name.clone(), r);
        }
        for (name, r) in &self.current {
            if !next.contains_key(name) {
                tracing::info!(peer = %name, subnet = %r.subnet, "a subnet refused before is refused no longer (routed now, or its peer is gone)");
            }
        }
        self.current = next;
    }

    /// The peers refused now, by name, and the refusals since start.
    pub(crate) fn snapshot(&self) -> (Vec<Refused>, u64) {
        (self.current.values().cloned().collect(), self.total)
    }

    fn log(&mut self, r: &Refused, now: Instant) {
        match self.refill_at {
            None => {
                self.tokens = LOG_BURST;
                self.refill_at = Some(now + LOG_REFILL);
            }
            Some(at) if now >= at => {
                let due = 1 + now.duration_since(at).as_secs() / LOG_REFILL.as_secs();
                let due = u32::try_from(due).unwrap_or(LOG_BURST);
                self.tokens = self.tokens.saturating_add(due).min(LOG_BURST);
                self.refill_at = Some(now + LOG_REFILL);
            }
            Some(_) => {}
        }
        if self.tokens == 0 {
            self.unlogged += 1;
            return;
        }
        self.tokens -= 1;
        let unlogged = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            peer = %r.name, source = r.source.as_str(), subnet = %r.subnet, reason = %r.why,
            unlogged_before = unlogged,
            "refusing to route a peer's subnet"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn refused(name: &str, subnet: &str, own: &str) -> Refused {
        Refused {
            name: name.into(),
            source: Source::Member,
            subnet: subnet.parse().unwrap(),
            why: Why::Own {
                own: own.parse().unwrap(),
            },
        }
    }

    /// A refusal is counted and logged when it appears or changes, not on every resolve; at
    /// most a burst of lines, then one per refill, the rest counted.
    #[test]
    fn each_change_is_counted_and_logged_once_within_a_budget() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let a = refused("a", "10.244.1.0/24", "10.244.1.0/24");
        let ((), logs) = crate::testlog::capture(tracing::Level::INFO, || {
            r.update(vec![a.clone()], t0);
            r.update(vec![a.clone()], t0);
        });
        assert_eq!(logs.matches("refusing").count(), 1, "{logs}");
        assert!(
            logs.contains("peer=a") && logs.contains("this node's subnet"),
            "{logs}"
        );
        assert_eq!(r.snapshot().1, 1);
        let ((), logs) = crate::testlog::capture(tracing::Level::INFO, || r.update(vec![], t0));
        assert!(logs.contains("refused no longer"), "{logs}");
        assert_eq!(r.snapshot(), (vec![], 1));

        // A member flipping its claim: counted every time, logged within the budget.
        let ((), logs) = crate::testlog::capture(tracing::Level::INFO, || {
            for i in 0..30u8 {
                let s = format!("10.244.{i}.0/24");
                r.update(vec![refused("f", &s, &s)], t0);
            }
        });
        assert_eq!(logs.matches("refusing").count(), LOG_BURST as usize - 1);
        assert_eq!(r.snapshot().1, 31);
        let later = t0 + LOG_REFILL;
        let ((), logs) = crate::testlog::capture(tracing::Level::INFO, || {
            r.update(
                vec![refused("f", "10.244.99.0/24", "10.244.99.0/24")],
                later,
            )
        });
        assert!(logs.contains("unlogged_before=21"), "{logs}");
    }
}
