//! Traffic the kernel carries that no nftables counter of meshd's counts per peer: the kernel
//! WireGuard device's counters (packets and bytes of pod packets each way), read over netlink on
//! each scrape. Only a device this meshd opened is read, so another program's device of the same
//! name is never counted. (Kernel VXLAN and host-gw traffic is counted per peer in meshd's
//! nftables table: `crate::kernel::traffic`.)

use netlink_packet_route::link::LinkAttribute;

use super::sample::{Traffic, PATH_KINDS};
use crate::host::Host;
use crate::paths::PathKind;

/// The kernel devices in use, by path kind, and a netlink connection to read them.
pub(crate) struct KernelDevices {
    host: Option<Host>,
    devices: Vec<(PathKind, String)>,
}

impl KernelDevices {
    /// `devices`: the kernel devices this node opened (none: nothing to read).
    pub(crate) fn new(devices: Vec<(PathKind, String)>) -> KernelDevices {
        let host = match devices.is_empty() {
            true => None,
            false => Host::connect()
                .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "metrics: no netlink connection; kernel devices are not counted"))
                .ok(),
        };
        KernelDevices { host, devices }
    }

    /// Each kernel device's counters, by path kind ([`PATH_KINDS`] order); `None` where there
    /// is no device (or netlink did not answer).
    pub(crate) async fn traffic(&self) -> [Option<Traffic>; 4] {
        let mut out = [None; 4];
        let Some(host) = &self.host else { return out };
        for (kind, name) in &self.devices {
            let Some(i) = PATH_KINDS.iter().position(|k| k == kind) else {
                continue;
            };
            if let Ok(Some(link)) = host.link(name).await {
                out[i] = stats(&link.attributes);
            }
        }
        out
    }
}

fn stats(attributes: &[LinkAttribute]) -> Option<Traffic> {
    attributes.iter().find_map(|a| match a {
        LinkAttribute::Stats64(s) => Some(Traffic {
            tx_bytes: s.tx_bytes,
            tx_packets: s.tx_packets,
            rx_bytes: s.rx_bytes,
            rx_packets: s.rx_packets,
        }),
        _ => None,
    })
}
