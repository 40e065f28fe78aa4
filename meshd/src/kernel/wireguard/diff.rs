//! Reconciling a live device without resetting its sessions.
//!
//! `WGDEVICE_F_REPLACE_PEERS` makes the kernel drop every peer before it reads the message's
//! (`wg_peer_remove_all` in `drivers/net/wireguard/netlink.c`): each peer's session goes, and
//! the next packet to it waits for a handshake. meshd reconciles on every membership change,
//! so, as `wg syncconf` does, it sends only what differs from what the device holds: the
//! device's own attributes (the kernel skips an unchanged key or port; a fwmark written again
//! only makes each peer look up its source address anew), the peers that are new
//! or changed, and removals for the peers that left. Changed peers are written before stale
//! ones go, so a subnet that moves from a leaving peer to a new one is never unrouted.

use std::collections::HashMap;

use meshd_crypto::PublicKey;
use netlink_packet_wireguard::WireguardMessage;

use super::message::{device_attrs, peer_head, remove_peers, Batcher};
use super::{DeviceConfig, PeerConfig};

/// The messages that take a device holding `current` peers to `desired`.
pub(crate) fn sync_device(desired: &DeviceConfig, current: &[PeerConfig]) -> Vec<WireguardMessage> {
    let held: HashMap<PublicKey, &PeerConfig> = current.iter().map(|p| (p.public_key, p)).collect();
    let mut batch = Batcher::new(&desired.ifname, device_attrs(desired, false));
    for peer in &desired.peers {
        if !held.get(&peer.public_key).is_some_and(|c| same(c, peer)) {
            batch.add_peer(peer.public_key, peer_head(peer), &peer.allowed_ips);
        }
    }
    let mut msgs = batch.finish();
    let wanted: HashMap<PublicKey, ()> = desired.peers.iter().map(|p| (p.public_key, ())).collect();
    let stale: Vec<PublicKey> = current
        .iter()
        .map(|p| p.public_key)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    if !stale.is_empty() {
        msgs.extend(remove_peers(&desired.ifname, &stale));
    }
    msgs
}

/// Whether the device's peer `held` is already `want` (allowed IPs in any order: the kernel
/// reports them in its own).
fn same(held: &PeerConfig, want: &PeerConfig) -> bool {
    let sorted = |p: &PeerConfig| {
        let mut v = p.allowed_ips.clone();
        v.sort();
        v
    };
    held.preshared_key == want.preshared_key
        && held.endpoint == want.endpoint
        && held.persistent_keepalive == want.persistent_keepalive
        && sorted(held) == sorted(want)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use meshd_crypto::PrivateKey;
    use netlink_packet_wireguard::{
        WireguardAttribute, WireguardDeviceFlags, WireguardPeerAttribute, WireguardPeerFlags,
    };
    use zeroize::Zeroizing;

    fn peer(n: u8) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey::from_bytes([n; 32]),
            preshared_key: Zeroizing::new([n ^ 0x3c; 32]),
            endpoint: ([198, 18, 0, n], 51820).into(),
            allowed_ips: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            persistent_keepalive: None,
        }
    }

    fn device(peers: Vec<PeerConfig>) -> DeviceConfig {
        DeviceConfig {
            ifname: "meshwg0".into(),
            private_key: PrivateKey::from_bytes([7; 32]),
            listen_port: 51820,
            fwmark: None,
            peers,
        }
    }

    /// (keys written, keys removed, whether anything asked to replace the peer set).
    fn effect(msgs: &[WireguardMessage]) -> (Vec<u8>, Vec<u8>, bool) {
        let (mut written, mut removed, mut replace) = (Vec::new(), Vec::new(), false);
        for attr in msgs.iter().flat_map(|m| m.attributes.iter()) {
            match attr {
                WireguardAttribute::Flags(f) => {
                    replace |= f.contains(WireguardDeviceFlags::ReplacePeers)
                }
                WireguardAttribute::Peers(peers) => {
                    for p in peers {
                        let WireguardPeerAttribute::PublicKey(k) = p[0] else {
                            panic!("{p:?}")
                        };
                        if p.contains(&WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe))
                        {
                            removed.push(k[0]);
                        } else {
                            written.push(k[0]);
                        }
                    }
                }
                _ => {}
            }
        }
        (written, removed, replace)
    }

    #[test]
    fn only_what_differs_is_sent_and_the_peer_set_is_never_replaced() {
        let mut moved = peer(3);
        moved.endpoint = ([198, 18, 1, 3], 51820).into();
        let mut rotated = peer(4);
        rotated.preshared_key = Zeroizing::new([0xee; 32]);
        let current = vec![peer(1), peer(2), peer(3), peer(4), peer(5)];
        let desired = device(vec![peer(1), moved, rotated, peer(6), peer(2)]);
        let msgs = sync_device(&desired, &current);
        assert_eq!(effect(&msgs), (vec![3, 4, 6], vec![5], false));
        // The device's own attributes lead, without REPLACE_PEERS.
        assert_eq!(msgs[0].attributes[1..4], device_attrs(&desired, false)[..]);
        // Removals come last: a subnet moving between peers stays routed.
        let last = msgs.last().unwrap();
        assert_eq!(effect(std::slice::from_ref(last)).1, [5]);
    }

    #[test]
    fn a_device_that_holds_the_desired_state_gets_only_its_own_attributes() {
        let mut shuffled = peer(1);
        shuffled.allowed_ips = vec![
            "10.9.0.0/16".parse().unwrap(),
            "10.8.0.0/16".parse().unwrap(),
        ];
        let mut held = shuffled.clone();
        held.allowed_ips.reverse();
        let msgs = sync_device(&device(vec![shuffled, peer(2)]), &[peer(2), held]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(effect(&msgs), (vec![], vec![], false));
        // From nothing (a new device), every peer is written.
        let msgs = sync_device(&device(vec![peer(1), peer(2)]), &[]);
        assert_eq!(effect(&msgs), (vec![1, 2], vec![], false));
    }
}
