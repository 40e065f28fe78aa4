//! Where each peer receives VXLAN, and the VXLAN device's checksums that follow from it
//! ([`crate::paths::receiver`]): what a peer is believed to be before any check, the verdicts
//! as checks come back, and the transmit checksum offload on a veth underlay.

use super::Manager;
use crate::config::Encryption;
use crate::kernel::vxlan;
use crate::link::PeerLink;
use crate::paths::receiver::{Evidence, ReceiveCheck, Receives};
use crate::paths::PathKind;
use crate::peers::{EndpointSource, Peer};

/// Peers named in the device's status line, at most.
const NAMED: usize = 3;

impl Manager {
    /// Where a peer receives decides its path here: cleartext, a kernel VXLAN device, a veth
    /// underlay.
    pub(super) fn receivers_matter(&self) -> bool {
        self.s.encryption == Encryption::None
            && self.s.vxlan.as_ref().is_ok_and(|d| d.veth_underlay)
    }

    /// Checks can tell now: the frame socket takes them and the device hands unfinished
    /// checksums on (in software, it would finish them, and every check would pass).
    pub(super) fn checks_possible(&self) -> bool {
        self.software_checksums == Some(false)
            && self.prober.as_ref().is_some_and(|p| p.partial_ok())
    }

    /// What is believed of a new peer before any check: a member's record says whether it has
    /// a kernel VXLAN device; a peer a previous meshd left on the kernel VXLAN path was
    /// checked by it; a static peer is unknown.
    pub(super) fn receiver_prior(peer: &Peer, adopted: Option<PathKind>) -> ReceiveCheck {
        let member = peer
            .endpoints
            .iter()
            .any(|e| e.source == EndpointSource::Gossiped);
        let prior = if member && peer.kernel_vxlan {
            Receives::Kernel(Evidence::Gossip)
        } else if member {
            Receives::Userspace(Evidence::Gossip)
        } else if adopted == Some(PathKind::KernelVxlan) {
            Receives::Kernel(Evidence::Adopted)
        } else {
            Receives::Unknown
        };
        ReceiveCheck::new(prior)
    }

    /// A check of `link` came back (`answered`) or was lost; logged when the verdict changes.
    pub(super) fn record_check(link: &PeerLink, answered: bool) {
        let mut cell = link.path();
        let Some(c) = cell.as_mut() else { return };
        let path_ok = answered || c.path.passing(PathKind::KernelVxlan);
        let Some(r) = c.path.receiver_mut() else {
            return;
        };
        if r.record(answered, path_ok) {
            tracing::info!(peer = %link.name, receives = %r.text(), "where the peer receives VXLAN");
        }
    }

    /// On a veth underlay, checksum in software while the kernel VXLAN path carries a peer not
    /// known to receive in its kernel (`datapath = "kernel"`; `auto` keeps such a peer on the
    /// userspace path), offloaded otherwise; the status line says which and why.
    pub(super) fn checksums(&mut self) {
        let Ok(dev) = &self.s.vxlan else { return };
        if !dev.veth_underlay {
            return;
        }
        let mut unsure: Vec<String> = self
            .links
            .values()
            .filter(|l| {
                l.path().as_ref().is_some_and(|c| {
                    c.path.current() == PathKind::KernelVxlan
                        && !c.path.receiver().is_some_and(|r| r.kernel())
                })
            })
            .map(|l| l.name.clone())
            .collect();
        unsure.sort();
        let want = !unsure.is_empty();
        let note = if want {
            let more = unsure.len().saturating_sub(NAMED);
            unsure.truncate(NAMED);
            let mut names = unsure.join(", ");
            if more > 0 {
                names += &format!(" and {more} more");
            }
            format!(
                "checksums in software: veth underlay, and kernel vxlan carries {names}, not known \
                 to receive in its kernel (datapath = \"kernel\")"
            )
        } else {
            "checksum offload on: veth underlay, and every peer on kernel vxlan receives in its \
             kernel"
                .to_string()
        };
        if self.software_checksums != Some(want) {
            let name = dev.name.clone();
            match vxlan::set_software_checksums(&name, want) {
                Ok(()) => {
                    tracing::info!(device = %name, software = want, "VXLAN device checksums");
                    self.software_checksums = Some(want);
                }
                Err(e) => {
                    tracing::warn!(device = %name, error = %e, "cannot switch the VXLAN device's checksum offload: peers receiving in userspace on a veth underlay may get packets with unfinished checksums");
                    return;
                }
            }
        } else if self.checksum_note.as_deref() == Some(note.as_str()) {
            return;
        }
        self.checksum_note = Some(note);
        self.show_vxlan();
    }
}
