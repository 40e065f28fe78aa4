//! VTEP MAC addresses derived from the node identity.
//!
//! A node's VTEP MAC must be the same on every node that computes it and across restarts, because
//! a kernel VXLAN peer drops frames whose destination MAC is not its own device's. We hash the node
//! name with SHA-256 (stable across platforms and versions) and force the locally-administered,
//! unicast bits so the address can never collide with a vendor-assigned one.

use sha2::{Digest, Sha256};
use std::fmt;

/// Domain separation: the same name hashed for another purpose must give unrelated bytes.
const VTEP_LABEL: &str = "meshd v1 vtep mac";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// The MAC in `bytes`, when they are six (a netlink link-layer address).
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The VTEP MAC of the node called `node_name`.
pub fn vtep_mac(node_name: &str) -> MacAddr {
    derived_mac(VTEP_LABEL, node_name)
}

/// A stable, unicast, locally administered MAC for `(label, name)`.
pub fn derived_mac(label: &str, name: &str) -> MacAddr {
    let mut hasher = Sha256::new();
    hasher.update(label.as_bytes());
    hasher.update([0u8]);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    // Unicast (bit 0 clear), locally administered (bit 1 set).
    mac[0] = (mac[0] & 0xfc) | 0x02;
    MacAddr(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_is_unicast_and_locally_administered() {
        for name in [
            "node-a",
            "node-b",
            "",
            "a-very-long-node-name.example.internal",
        ] {
            let mac = vtep_mac(name);
            assert!(mac.is_locally_administered(), "{name}: {mac}");
            assert!(!mac.is_multicast(), "{name}: {mac}");
        }
    }

    #[test]
    fn derived_mac_is_stable_and_distinct() {
        assert_eq!(vtep_mac("node-a"), vtep_mac("node-a"));
        assert_ne!(vtep_mac("node-a"), vtep_mac("node-b"));
        // Pinned: a change here breaks interop with running clusters and kernel VXLAN peers.
        assert_eq!(vtep_mac("node-a").to_string(), PINNED_NODE_A);
    }

    const PINNED_NODE_A: &str = include_str!("testdata/node-a.mac");
}
