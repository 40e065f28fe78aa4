//! The WireGuard generic netlink messages, built and read without I/O: `WG_CMD_SET_DEVICE` for a
//! desired device (full replace, peer updates, peer removals), split so that no message exceeds
//! [`MAX_MESSAGE`], and `WG_CMD_GET_DEVICE` replies merged back into a [`DeviceConfig`].
//!
//! ```text
//!   nlmsghdr (16) │ genlmsghdr (4) │ IFNAME │ [PRIVATE_KEY LISTEN_PORT FWMARK FLAGS=REPLACE_PEERS]
//!                 │ PEERS ─┬─ peer: PUBLIC_KEY PRESHARED_KEY ENDPOINT KEEPALIVE FLAGS=REPLACE_ALLOWEDIPS
//!                 │        │        ALLOWEDIPS ─┬─ { FAMILY IPADDR CIDR_MASK } …
//!                 │        └─ peer: …           (device attributes on the first message only)
//! ```
//!
//! Neither the kernel nor `netlink-packet-wireguard` splits a device that does not fit one
//! message. As `wg setconf` does, a message is closed when the next item would not fit; a peer
//! whose allowed IPs do not fit goes on in the next message as its public key and the rest of its
//! allowed IPs only (no flags: `REPLACE_ALLOWEDIPS` again would drop the first part). Only the
//! first message replaces the peer set; the kernel applies each message as it comes.

use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};

use ipnet::Ipv4Net;
use meshd_crypto::PublicKey;
use netlink_packet_core::Emitable;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};
use zeroize::Zeroizing;

use super::{DeviceConfig, PeerConfig};

/// The largest message built, headers included: one page, where `wg setconf` splits too. The
/// kernel would take more (up to the socket's send buffer), but a page is what every kernel
/// since 5.6 has been exercised with.
pub(crate) const MAX_MESSAGE: usize = 4096;
/// `nlmsghdr` and `genlmsghdr`.
const HEADERS: usize = 16 + 4;
/// The header of a nested attribute (`PEERS`, one peer, `ALLOWEDIPS`).
const NLA_HEADER: usize = 4;

/// The messages that make the device exactly `cfg`: keys, port, fwmark (absent: 0, no mark),
/// and a peer set that replaces whatever the device held, each peer's allowed IPs replaced.
pub(crate) fn set_device(cfg: &DeviceConfig) -> Vec<WireguardMessage> {
    let mut batch = Batcher::new(&cfg.ifname, device_attrs(cfg, true));
    for peer in &cfg.peers {
        batch.add_peer(peer.public_key, peer_head(peer), &peer.allowed_ips);
    }
    batch.finish()
}

/// Messages that add `peers` to device `ifname`, or update them (endpoint, preshared key,
/// keepalive, allowed IPs replaced), leaving the other peers alone.
#[cfg(test)]
pub(crate) fn update_peers(ifname: &str, peers: &[PeerConfig]) -> Vec<WireguardMessage> {
    let mut batch = Batcher::new(ifname, Vec::new());
    for peer in peers {
        batch.add_peer(peer.public_key, peer_head(peer), &peer.allowed_ips);
    }
    batch.finish()
}

/// Messages that remove the peers with `keys` from device `ifname` (`WGPEER_F_REMOVE_ME`).
pub(crate) fn remove_peers(ifname: &str, keys: &[PublicKey]) -> Vec<WireguardMessage> {
    let mut batch = Batcher::new(ifname, Vec::new());
    for key in keys {
        let head = vec![
            WireguardPeerAttribute::PublicKey(*key.as_bytes()),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ];
        batch.add_peer(*key, head, &[]);
    }
    batch.finish()
}

/// The request for device `ifname`'s state (sent as a dump).
pub(crate) fn get_device(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

/// What does not make a [`DeviceConfig`] in a `WG_CMD_GET_DEVICE` reply (or a set of
/// `WG_CMD_SET_DEVICE` messages read back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// No message carried the device's name.
    #[error("no interface name in the reply")]
    #[cfg(test)]
    NoIfName,
    /// The device has no private key (never configured, or read without CAP_NET_ADMIN).
    #[error("the device has no private key")]
    #[cfg(test)]
    NoPrivateKey,
    /// No message carried the listen port.
    #[error("no listen port in the reply")]
    #[cfg(test)]
    NoListenPort,
    /// A peer without its public key.
    #[error("a peer without a public key")]
    PeerWithoutKey,
    /// A peer with no endpoint (meshd always sets one).
    #[error("peer {0} has no endpoint")]
    NoEndpoint(PublicKey),
    /// A peer with no preshared key attribute (the kernel always reports one).
    #[error("peer {0} has no preshared key")]
    NoPresharedKey(PublicKey),
    /// An allowed IP that is not IPv4, or lacks its address or prefix length, or whose prefix
    /// is longer than 32.
    #[error("peer {0} has an allowed IP that is not an IPv4 network")]
    BadAllowedIp(PublicKey),
}

/// The device the replies describe; a peer split across messages is merged back.
#[cfg(test)]
pub(crate) fn parse_device(replies: &[WireguardMessage]) -> Result<DeviceConfig, ParseError> {
    let mut ifname = None;
    let mut private = None;
    let mut port = None;
    let mut fwmark = None;
    for attr in replies.iter().flat_map(|m| m.attributes.iter()) {
        match attr {
            WireguardAttribute::IfName(n) => ifname = Some(n.clone()),
            WireguardAttribute::PrivateKey(k) => {
                private = Some(meshd_crypto::PrivateKey::from_bytes(*k))
            }
            WireguardAttribute::ListenPort(p) => port = Some(*p),
            WireguardAttribute::Fwmark(m) => fwmark = NonZeroU32::new(*m),
            _ => {}
        }
    }
    Ok(DeviceConfig {
        ifname: ifname.ok_or(ParseError::NoIfName)?,
        private_key: private.ok_or(ParseError::NoPrivateKey)?,
        listen_port: port.ok_or(ParseError::NoListenPort)?,
        fwmark,
        peers: parse_peers(replies)?,
    })
}

/// The peers the replies describe, whatever the device's own attributes (a device not yet
/// configured has no private key).
pub(crate) fn parse_peers(replies: &[WireguardMessage]) -> Result<Vec<PeerConfig>, ParseError> {
    let mut peers: Vec<PartialPeer> = Vec::new();
    for attr in replies.iter().flat_map(|m| m.attributes.iter()) {
        if let WireguardAttribute::Peers(list) = attr {
            for p in list {
                merge_peer(&mut peers, p)?;
            }
        }
    }
    peers.into_iter().map(PartialPeer::finish).collect()
}

/// The device's own attributes, for the first message; `replace` drops every peer first.
pub(super) fn device_attrs(cfg: &DeviceConfig, replace: bool) -> Vec<WireguardAttribute> {
    let mut attrs = vec![
        WireguardAttribute::PrivateKey(*cfg.private_key.as_bytes()),
        WireguardAttribute::ListenPort(cfg.listen_port),
        WireguardAttribute::Fwmark(cfg.fwmark.map_or(0, NonZeroU32::get)),
    ];
    if replace {
        attrs.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    attrs
}

/// A peer's attributes but its allowed IPs, for its first (or only) part.
pub(super) fn peer_head(peer: &PeerConfig) -> Vec<WireguardPeerAttribute> {
    vec![
        WireguardPeerAttribute::PublicKey(*peer.public_key.as_bytes()),
        WireguardPeerAttribute::PresharedKey(*peer.preshared_key),
        WireguardPeerAttribute::Endpoint(peer.endpoint),
        WireguardPeerAttribute::PersistentKeepalive(
            peer.persistent_keepalive.map_or(0, NonZeroU16::get),
        ),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
    ]
}

fn allowed_ip(net: &Ipv4Net) -> WireguardAllowedIp {
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
        WireguardAllowedIpAttr::IpAddr(IpAddr::V4(net.network())),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// Fills messages up to [`MAX_MESSAGE`], opening a new one when the next item would not fit.
pub(super) struct Batcher<'a> {
    ifname: &'a str,
    done: Vec<WireguardMessage>,
    attrs: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
    /// Bytes of the message so far, counting the `PEERS` header it may still need.
    len: usize,
}

impl<'a> Batcher<'a> {
    /// A batch whose first message carries `first` after the device's name.
    pub(super) fn new(ifname: &'a str, first: Vec<WireguardAttribute>) -> Self {
        let mut b = Batcher {
            ifname,
            done: Vec::new(),
            attrs: Vec::new(),
            peers: Vec::new(),
            len: 0,
        };
        b.open(first);
        b
    }

    fn open(&mut self, extra: Vec<WireguardAttribute>) {
        self.attrs = vec![WireguardAttribute::IfName(self.ifname.to_string())];
        self.attrs.extend(extra);
        self.len = HEADERS + self.attrs.as_slice().buffer_len() + NLA_HEADER;
    }

    fn room(&self) -> usize {
        MAX_MESSAGE.saturating_sub(self.len)
    }

    /// Adds a peer: `head` and as many of `ips` as fit, the rest in continuation parts.
    pub(super) fn add_peer(
        &mut self,
        key: PublicKey,
        head: Vec<WireguardPeerAttribute>,
        ips: &[Ipv4Net],
    ) {
        let mut head = head;
        let mut ips = ips;
        loop {
            let ip_len = ips.first().map_or(0, |n| allowed_ip(n).buffer_len());
            let ips_header = if ips.is_empty() { 0 } else { NLA_HEADER };
            let head_len = NLA_HEADER + head.as_slice().buffer_len() + ips_header;
            // The head and at least one allowed IP, or the head alone, must fit; a fresh
            // message always has room for that (a head is under 200 bytes).
            if head_len + ip_len > self.room() && !self.peers.is_empty() {
                self.flush();
            }
            // None with no allowed IPs left (`ip_len` 0).
            let fit = (self.room().saturating_sub(head_len))
                .checked_div(ip_len)
                .map_or(0, |n| n.clamp(1, ips.len()));
            let (now, rest) = ips.split_at(fit);
            let mut attrs = head;
            if !now.is_empty() {
                attrs.push(WireguardPeerAttribute::AllowedIps(
                    now.iter().map(allowed_ip).collect(),
                ));
            }
            self.len += head_len + fit * ip_len;
            self.peers.push(WireguardPeer(attrs));
            if rest.is_empty() {
                return;
            }
            self.flush();
            head = vec![WireguardPeerAttribute::PublicKey(*key.as_bytes())];
            ips = rest;
        }
    }

    /// Closes the current message and opens a continuation (the device's name only).
    fn flush(&mut self) {
        let mut attrs = std::mem::take(&mut self.attrs);
        let peers = std::mem::take(&mut self.peers);
        if !peers.is_empty() {
            attrs.push(WireguardAttribute::Peers(peers));
        }
        self.done.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: attrs,
        });
        self.open(Vec::new());
    }

    pub(super) fn finish(mut self) -> Vec<WireguardMessage> {
        // The first message goes out even with no peers: it may replace them all with none.
        if !self.peers.is_empty() || self.done.is_empty() {
            self.flush();
        }
        self.done
    }
}

/// A peer as read so far: a later part may add allowed IPs.
struct PartialPeer {
    key: PublicKey,
    psk: Option<Zeroizing<[u8; 32]>>,
    endpoint: Option<std::net::SocketAddr>,
    keepalive: Option<NonZeroU16>,
    ips: Vec<Ipv4Net>,
}

fn merge_peer(peers: &mut Vec<PartialPeer>, peer: &WireguardPeer) -> Result<(), ParseError> {
    let key = peer
        .iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::PublicKey(k) => Some(PublicKey::from_bytes(*k)),
            _ => None,
        })
        .ok_or(ParseError::PeerWithoutKey)?;
    // A peer goes on only right after its first part (the kernel's dump and our batches
    // both split that way), so only the last peer can be continued.
    let at = match peers.len().checked_sub(1).filter(|&i| peers[i].key == key) {
        Some(at) => at,
        None => {
            peers.push(PartialPeer {
                key,
                psk: None,
                endpoint: None,
                keepalive: None,
                ips: Vec::new(),
            });
            peers.len() - 1
        }
    };
    let p = &mut peers[at];
    for attr in peer.iter() {
        match attr {
            WireguardPeerAttribute::PresharedKey(k) => p.psk = Some(Zeroizing::new(*k)),
            WireguardPeerAttribute::Endpoint(e) => p.endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(k) => p.keepalive = NonZeroU16::new(*k),
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    p.ips.push(parse_allowed_ip(key, ip)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_allowed_ip(key: PublicKey, ip: &WireguardAllowedIp) -> Result<Ipv4Net, ParseError> {
    let mut addr = None;
    let mut cidr = None;
    for a in ip.iter() {
        match a {
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4) => {}
            WireguardAllowedIpAttr::Family(_) => return Err(ParseError::BadAllowedIp(key)),
            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(v4)) => addr = Some(*v4),
            WireguardAllowedIpAttr::IpAddr(IpAddr::V6(_)) => {
                return Err(ParseError::BadAllowedIp(key))
            }
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    match (addr, cidr) {
        (Some(a), Some(c)) => Ipv4Net::new(a, c).map_err(|_| ParseError::BadAllowedIp(key)),
        _ => Err(ParseError::BadAllowedIp(key)),
    }
}

impl PartialPeer {
    fn finish(self) -> Result<PeerConfig, ParseError> {
        Ok(PeerConfig {
            public_key: self.key,
            preshared_key: self.psk.ok_or(ParseError::NoPresharedKey(self.key))?,
            endpoint: self.endpoint.ok_or(ParseError::NoEndpoint(self.key))?,
            allowed_ips: self.ips,
            persistent_keepalive: self.keepalive,
        })
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
