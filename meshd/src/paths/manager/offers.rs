//! What a peer could have: the paths on offer to it and its floor, and the route each path
//! needs.

use std::net::IpAddr;

use super::Manager;
use crate::config::{Datapath, Encryption};
use crate::kernel::routes::{self, Via};
use crate::paths::cell::PathCell;
use crate::paths::{NotOffered, Offer, PathKind};
use crate::peers::Peer;

impl Manager {
    /// The paths a peer could take, and the floor.
    pub(super) async fn offers(&self, peer: &Peer) -> (Vec<Offer>, PathKind, Option<String>) {
        if self.s.encryption == Encryption::Wireguard {
            if self.s.wireguard.is_ok() {
                // The whole node: no probes, no fallback per peer.
                return (Vec::new(), PathKind::KernelWireguard, None);
            }
            let why = match (&self.s.wireguard, self.s.mode) {
                (_, Datapath::Userspace) => NotOffered::Config("datapath = \"userspace\"".into()),
                (Err(n), _) => n.clone(),
                (Ok(_), _) => NotOffered::Config(String::new()),
            };
            let offer = Offer {
                kind: PathKind::KernelWireguard,
                available: Err(why),
            };
            return (vec![offer], PathKind::Userspace, None);
        }
        if self.s.mode == Datapath::Userspace {
            return (
                Vec::new(),
                PathKind::Userspace,
                Some("datapath = \"userspace\"".into()),
            );
        }
        let mut offers = Vec::new();
        if self.s.host_gw {
            let on_segment = match self.s.underlay_index {
                Some(i) => match peer.address() {
                    Some(a) => routes::same_segment(&self.s.host, i, self.s.local, a).await,
                    None => false,
                },
                None => false,
            };
            offers.push(Offer {
                kind: PathKind::HostGw,
                available: if on_segment {
                    Ok(())
                } else {
                    Err(NotOffered::NotOnSegment)
                },
            });
        }
        offers.push(Offer {
            kind: PathKind::KernelVxlan,
            available: self.s.vxlan.as_ref().map(|_| ()).map_err(Clone::clone),
        });
        let floor = match self.s.mode {
            Datapath::Kernel => PathKind::KernelVxlan,
            _ => PathKind::Userspace,
        };
        (offers, floor, None)
    }

    pub(super) fn via(&self, c: &PathCell, kind: PathKind) -> Option<Via> {
        match kind {
            PathKind::Userspace => self.tun_index.map(|index| Via::Device { index }),
            PathKind::KernelVxlan => self.s.vxlan.as_ref().ok().map(|d| Via::Vxlan {
                index: d.index,
                vtep: c.vtep,
            }),
            PathKind::HostGw => match c.address? {
                IpAddr::V4(address) => Some(Via::Gateway { address }),
                IpAddr::V6(_) => None,
            },
            PathKind::KernelWireguard => self
                .s
                .wireguard
                .as_ref()
                .ok()
                .map(|d| Via::Device { index: d.index() }),
        }
    }
}
