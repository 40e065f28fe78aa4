//! Whether a peer receives VXLAN in its kernel or in userspace, as this node learns it, and
//! why that decides its path on a veth underlay.
//!
//! A veth hands on checksums the sender left for the hardware to finish (`CHECKSUM_PARTIAL`)
//! as they are. A kernel VXLAN receiver copes: the packet stays "partial" up to the pod. A
//! userspace receiver reads the datagram as bytes, and its pods would get packets with
//! unfinished checksums, which they drop. So on a veth underlay the kernel VXLAN path suits
//! only a peer that receives in its kernel; for any other, the device would have to checksum
//! in software, for every peer, at the cost of its segmentation offload, which costs more than
//! the userspace path (issue 25: 4.08 against 7.64 Gbit/s). Hence, with `datapath = "auto"`,
//! such a peer stays on the userspace path until it is known to receive in its kernel.
//!
//! How it is known: the manager sends, beside a peer's kernel VXLAN probes, small checks whose
//! ICMP checksum is left unfinished for the offload (`kernel::probe`, `partial`), through the
//! same device, while the device keeps its checksum offload. The peer answers one only if its
//! receiver hands the packet on as the kernel does: a check answered says the peer receives in
//! its kernel; [`LOSSES_FOR_USERSPACE`] lost in a row while the path's own probes are answered
//! say it receives in userspace. Before the first verdict a gossip member's record (which says
//! whether it has a kernel VXLAN device), or the kernel path a previous meshd left the peer on,
//! stands in; a static peer is unknown. Checks go on at a lower rate after a verdict, so a peer
//! that restarts in the other mode is followed.

use super::FULL_PROBE_EVERY;

/// Checks lost in a row, while the path's probes pass, that say a peer receives in userspace.
pub const LOSSES_FOR_USERSPACE: u32 = 3;

/// Where a peer receives VXLAN, as far as this node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receives {
    Unknown,
    Kernel(Evidence),
    Userspace(Evidence),
}

/// What a verdict rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// This node's checks.
    Checks,
    /// The peer's gossip record.
    Gossip,
    /// A previous meshd left the peer on the kernel VXLAN path (it had checked).
    Adopted,
}

/// One peer's receiver, and the checks that find it out.
#[derive(Debug, Clone)]
pub struct ReceiveCheck {
    receives: Receives,
    lost_in_row: u32,
    since_check: u32,
    answered: u64,
    lost: u64,
}

impl ReceiveCheck {
    /// `prior`: what is believed before any check (a member's record, an adopted path).
    pub fn new(prior: Receives) -> ReceiveCheck {
        ReceiveCheck {
            receives: prior,
            lost_in_row: 0,
            since_check: 0,
            answered: 0,
            lost: 0,
        }
    }

    pub fn receives(&self) -> Receives {
        self.receives
    }

    /// The peer receives in its kernel, as far as is known.
    pub fn kernel(&self) -> bool {
        matches!(self.receives, Receives::Kernel(_))
    }

    /// Whether this probe round carries a check (counted as sent when it does): every round
    /// until a check has decided, and after a kernel receiver's check was lost; every [`FULL_PROBE_EVERY`]th otherwise.
    pub fn due(&mut self) -> bool {
        let settled = match self.receives {
            Receives::Kernel(Evidence::Checks) => self.lost_in_row == 0,
            Receives::Userspace(Evidence::Checks) => true,
            _ => false,
        };
        let every = if settled { FULL_PROBE_EVERY } else { 1 };
        self.since_check += 1;
        if self.since_check >= every {
            self.since_check = 0;
            true
        } else {
            false
        }
    }

    /// A check was answered, or lost while (`path_ok`) the kernel path's own probes were
    /// answered; a loss on a failing path says nothing about the receiver. True when the
    /// verdict changed.
    pub fn record(&mut self, answered: bool, path_ok: bool) -> bool {
        let before = self.receives;
        if answered {
            self.answered += 1;
            self.lost_in_row = 0;
            self.receives = Receives::Kernel(Evidence::Checks);
        } else if path_ok {
            self.lost += 1;
            self.lost_in_row += 1;
            if self.lost_in_row >= LOSSES_FOR_USERSPACE {
                self.receives = Receives::Userspace(Evidence::Checks);
            }
        }
        self.receives != before
    }

    /// What `meshd status` says of it: where, and on what evidence.
    pub fn text(&self) -> String {
        let counts = format!(
            "{} of {} checks with unfinished checksums answered",
            self.answered,
            self.answered + self.lost
        );
        match self.receives {
            Receives::Unknown => format!("not known yet ({counts})"),
            Receives::Kernel(Evidence::Checks) => format!("kernel ({counts})"),
            Receives::Kernel(Evidence::Gossip) => {
                format!("kernel (its gossip record says so; {counts})")
            }
            Receives::Kernel(Evidence::Adopted) => {
                format!("kernel (a previous meshd left it on the kernel vxlan path; {counts})")
            }
            Receives::Userspace(Evidence::Checks) => {
                format!("userspace ({counts}, while the kernel vxlan path answers its probes)")
            }
            Receives::Userspace(_) => {
                format!("userspace (its gossip record says so; {counts})")
            }
        }
    }

    /// Why the kernel VXLAN path is not taken for it (it is held on the path below).
    pub fn held_text(&self) -> String {
        match self.receives {
            Receives::Userspace(_) => "the peer receives in userspace: kernel vxlan on this veth \
                underlay would need checksums in software, which cost more than the userspace \
                path"
                .into(),
            _ => "checking whether the peer receives in its kernel (kernel vxlan on this veth \
                underlay hands on unfinished checksums)"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_says_kernel_three_losses_on_a_live_path_say_userspace() {
        let mut r = ReceiveCheck::new(Receives::Unknown);
        assert!(r.due() && r.due(), "every round while unknown");
        // Losses while the path itself fails say nothing.
        for _ in 0..5 {
            assert!(!r.record(false, false));
        }
        assert_eq!(r.receives(), Receives::Unknown);
        assert!(!r.record(false, true));
        assert!(!r.record(false, true));
        assert!(r.record(false, true));
        assert_eq!(r.receives(), Receives::Userspace(Evidence::Checks));
        assert!(
            r.text().starts_with("userspace (0 of 3 checks"),
            "{}",
            r.text()
        );
        assert!(r.held_text().contains("receives in userspace"));
        // Decided: a check every FULL_PROBE_EVERY rounds.
        let due: Vec<bool> = (0..2 * FULL_PROBE_EVERY).map(|_| r.due()).collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 2, "{due:?}");
        // The peer restarted with a kernel receiver: one answer is enough.
        assert!(r.record(true, true));
        assert!(r.kernel());
        assert_eq!(
            r.text(),
            "kernel (1 of 4 checks with unfinished checksums answered)"
        );
        // One loss is not a verdict, but checks come every round until it is resolved.
        assert!(!r.record(false, true));
        assert!(r.kernel());
        assert!(r.due() && r.due());
    }

    #[test]
    fn a_prior_stands_until_the_checks_say_otherwise() {
        let mut r = ReceiveCheck::new(Receives::Kernel(Evidence::Gossip));
        assert!(r.kernel());
        assert!(r.text().contains("gossip record"), "{}", r.text());
        assert!(
            r.due() && r.due(),
            "checked every round until a check decides"
        );
        for _ in 0..LOSSES_FOR_USERSPACE {
            r.record(false, true);
        }
        assert_eq!(r.receives(), Receives::Userspace(Evidence::Checks));
        let adopted = ReceiveCheck::new(Receives::Kernel(Evidence::Adopted));
        assert!(adopted.kernel() && adopted.text().contains("previous meshd"));
    }

    /// The decision's side: held on the floor until the peer is known to receive in its
    /// kernel, left when it turns out not to, and never held where the kernel path is the floor.
    #[test]
    fn the_kernel_vxlan_path_waits_for_a_kernel_receiver() {
        use crate::paths::{Offer, PathKind, PeerPath};
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let offers = || {
            vec![Offer {
                kind: PathKind::KernelVxlan,
                available: Ok(()),
            }]
        };
        let mut p = PeerPath::new(offers(), PathKind::Userspace, None, None, 1450, t0);
        p.check_receiver(ReceiveCheck::new(Receives::Unknown));
        p.record(PathKind::KernelVxlan, true, at(1));
        assert_eq!(
            p.decide(at(1)),
            None,
            "passing, but the receiver is unknown"
        );
        assert!(p
            .reason(at(1))
            .unwrap_or_default()
            .starts_with("checking whether"));
        assert_eq!(p.reason_kind(), "probing");
        p.receiver_mut().map(|r| r.record(true, true));
        let m = p.decide(at(2)).map(|m| m.to);
        assert_eq!(m, Some(PathKind::KernelVxlan));
        assert_eq!(p.reason(at(2)), None);
        for _ in 0..LOSSES_FOR_USERSPACE {
            p.receiver_mut().map(|r| r.record(false, true));
        }
        let m = p.decide(at(3)).map(|m| (m.to, m.demotion));
        assert_eq!(m, Some((PathKind::Userspace, false)), "left, not failed");
        assert!(p
            .reason(at(3))
            .unwrap_or_default()
            .contains("receives in userspace"));
        assert_eq!(p.reason_kind(), "receives-in-userspace");
        // `datapath = "kernel"`: the kernel path is the floor, and stays.
        let mut k = PeerPath::new(offers(), PathKind::KernelVxlan, None, None, 1450, t0);
        k.check_receiver(ReceiveCheck::new(Receives::Unknown));
        k.record(PathKind::KernelVxlan, true, at(1));
        assert_eq!(k.decide(at(1)), None);
        assert_eq!(k.current(), PathKind::KernelVxlan);
    }
}
