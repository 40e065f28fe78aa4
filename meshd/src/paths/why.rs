//! Why a peer is on its path: the sentence for a person ([`PeerPath::reason`]), and the same as
//! one of a few fixed kinds, what metrics count peers by ([`PeerPath::reason_kind`]), which
//! follows the same branches, in the same order, and names the branch instead of describing
//! it, so a label's values stay bounded whatever the addresses, sizes and times in the sentence.

use std::time::{Instant, SystemTime};

use super::receiver::Receives;
use super::{quiet, NotOffered, PathKind, PeerPath, Track};

/// Every kind [`PeerPath::reason_kind`] returns, in a fixed order.
pub const REASON_KINDS: [&str; 9] = [
    "best",
    "config",
    "kernel-refused",
    "not-on-segment",
    "probing",
    "probes-failing",
    "quiet-period",
    "no-fallback",
    "receives-in-userspace",
];

impl PeerPath {
    /// The kind of [`PeerPath::reason`]: `best` when it is `None`.
    pub fn reason_kind(&self) -> &'static str {
        if self.track(self.current).is_some_and(|t| t.failing) {
            return "no-fallback";
        }
        for o in self.offers.iter().filter(|o| o.kind < self.current) {
            return match &o.available {
                Err(NotOffered::Config(_)) => "config",
                Err(NotOffered::Refused(_)) => "kernel-refused",
                Err(NotOffered::NotOnSegment) => "not-on-segment",
                Ok(()) => {
                    let Some(t) = self.track(o.kind) else {
                        continue;
                    };
                    let held = self.holding(o.kind).map(|r| r.receives());
                    if matches!(held, Some(Receives::Userspace(_))) {
                        "receives-in-userspace"
                    } else if held.is_some() && !t.failing {
                        "probing"
                    } else if t.failing || (!t.ever_passed && t.lost_in_row > 0) {
                        "probes-failing"
                    } else if t.passing_since.is_some() && t.demotions > 0 {
                        "quiet-period"
                    } else {
                        "probing"
                    }
                }
            };
        }
        if self.current == self.floor && self.floor_reason.is_some() {
            return "config";
        }
        "best"
    }
}

impl PeerPath {
    /// Why the peer is on its path: `None` when it is on the best there is for it.
    pub fn reason(&self, now: Instant) -> Option<String> {
        if let Some(why) = self
            .unprobed
            .as_ref()
            .filter(|_| self.probed().next().is_some())
        {
            return Some(format!(
                "paths not probed, the peer stays where it is: {why}"
            ));
        }
        if let Some(t) = self.track(self.current).filter(|t| t.failing) {
            // Only the floor is kept while failing (datapath = "kernel").
            return Some(format!(
                "{}; datapath = \"kernel\": no fallback",
                self.lost_text(self.current, t)
            ));
        }
        for o in self.offers.iter().filter(|o| o.kind < self.current) {
            let text = match &o.available {
                Err(NotOffered::Config(why)) => why.clone(),
                Err(NotOffered::Refused(r)) => format!("{} unavailable ({r})", describe(o.kind)),
                Err(NotOffered::NotOnSegment) => {
                    format!("{}: not on this node's L2 segment", o.kind)
                }
                Ok(()) => {
                    let Some(t) = self.track(o.kind) else {
                        continue;
                    };
                    let held = self
                        .holding(o.kind)
                        .filter(|r| matches!(r.receives(), Receives::Userspace(_)) || !t.failing);
                    if let Some(r) = held {
                        r.held_text()
                    } else if t.failing {
                        format!(
                            "{}, retry in {} s",
                            self.lost_text(o.kind, t),
                            quiet(t.demotions).as_secs()
                        )
                    } else if let Some(since) = t.passing_since.filter(|_| t.demotions > 0) {
                        let left =
                            quiet(t.demotions).saturating_sub(now.saturating_duration_since(since));
                        format!(
                            "{} passing probes again, retry in {} s",
                            o.kind,
                            left.as_secs().max(1)
                        )
                    } else if !t.ever_passed && t.lost_in_row > 0 {
                        format!("probes at {} B lost on {}", self.probe_size, o.kind)
                    } else {
                        format!("probing {}", o.kind)
                    }
                }
            };
            return Some(text);
        }
        if self.current == self.floor {
            return self.floor_reason.clone();
        }
        None
    }

    fn lost_text(&self, kind: PathKind, t: &Track) -> String {
        let since = t.failing_since.map(clock).unwrap_or_else(|| "?".into());
        format!(
            "probes at {} B lost on {kind} since {since}",
            self.probe_size
        )
    }
}

/// How a path reads in a "why not" sentence.
pub(super) fn describe(kind: PathKind) -> &'static str {
    match kind {
        PathKind::HostGw => "host-gw",
        PathKind::KernelVxlan => "kernel vxlan",
        PathKind::KernelWireguard => "kernel wireguard",
        PathKind::Userspace => "userspace",
    }
}

/// `HH:MM:SS` (UTC) of `t`.
pub fn clock(t: SystemTime) -> String {
    let s = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{Offer, PathKind};
    use super::*;
    use std::time::{Duration, Instant};

    fn peer(available: Result<(), NotOffered>, now: Instant) -> PeerPath {
        let offers = vec![Offer {
            kind: PathKind::KernelVxlan,
            available,
        }];
        PeerPath::new(offers, PathKind::Userspace, None, None, 1450, now)
    }

    /// Each kind names the branch the sentence takes, and `best` is exactly no sentence.
    #[test]
    fn the_kind_follows_the_sentence() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = peer(Ok(()), t0);
        let check = |p: &PeerPath, now: Instant, kind: &str, says: &str| {
            assert_eq!(p.reason_kind(), kind);
            assert!(REASON_KINDS.contains(&kind));
            let why = p.reason(now);
            assert_eq!(why.is_none(), kind == "best", "{why:?}");
            assert!(why.unwrap_or_default().contains(says));
        };
        check(&p, t0, "probing", "probing kernel-vxlan");
        p.record(PathKind::KernelVxlan, false, at(1));
        check(&p, at(1), "probes-failing", "lost on kernel-vxlan");
        p.record(PathKind::KernelVxlan, true, at(2));
        p.decide(at(2));
        check(&p, at(2), "best", "");
        for s in 3..6 {
            p.record(PathKind::KernelVxlan, false, at(s));
        }
        p.decide(at(6));
        check(&p, at(6), "probes-failing", "retry in");
        p.record(PathKind::KernelVxlan, true, at(7));
        p.decide(at(7));
        check(&p, at(7), "quiet-period", "passing probes again");
        let refused = NotOffered::Config("datapath = \"userspace\"".into());
        check(&peer(Err(refused), t0), t0, "config", "datapath");
        check(
            &peer(Err(NotOffered::NotOnSegment), t0),
            t0,
            "not-on-segment",
            "L2 segment",
        );
    }
}
