//! Why a peer is on its path, as one of a few fixed kinds: what metrics count peers by. The
//! sentence for a person is [`PeerPath::reason`]; this follows the same branches, in the same
//! order, and names the branch instead of describing it, so a label's values stay bounded
//! whatever the addresses, sizes and times in the sentence.

use std::time::SystemTime;

use super::{NotOffered, PathKind, PeerPath};

/// Every kind [`PeerPath::reason_kind`] returns, in a fixed order.
pub const REASON_KINDS: [&str; 8] = [
    "best",
    "config",
    "kernel-refused",
    "not-on-segment",
    "probing",
    "probes-failing",
    "quiet-period",
    "no-fallback",
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
                    if t.failing || (!t.ever_passed && t.lost_in_row > 0) {
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
