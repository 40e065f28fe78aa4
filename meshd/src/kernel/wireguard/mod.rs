//! Kernel WireGuard: a `wireguard` link configured over generic netlink with the node's key,
//! listen port and, per peer, its public key, the pair's preshared key (the one the userspace
//! sessions use, cluster-secret rotation included), its endpoint and its subnet as allowed IPs.
//! The bytes on the wire are the same as meshd's userspace WireGuard, so nodes of either kind
//! talk to each other.
//!
//! Driving it: [`detect`] once at start-up (a printable [`Unavailable`] when the kernel cannot),
//! [`KernelWireguard::open`] to make or adopt the device, then on every peer-set change
//! [`device_config`] from the peer set and [`KernelWireguard::sync`], which makes the device
//! hold exactly that state without resetting the sessions of peers that stay. [`remove_device`]
//! is for `meshd cleanup`.
//!
//! It is a whole-node choice: the device owns the WireGuard port and every session, so either
//! all peers go through it or none do. It does not route (the caller points peer subnets at the
//! device) and does not probe.

pub(crate) mod diff;
mod error;
mod genl;
mod link;
pub(crate) mod message;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::{Mutex, MutexGuard};

use ipnet::Ipv4Net;
use meshd_crypto::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

pub(crate) use error::{Error, Unavailable};
pub(crate) use link::{detect, remove_device};

use crate::peers::wireguard::NodeCrypto;
use crate::peers::Peer;
use genl::Genl;

/// Linux's `IFNAMSIZ` less the terminating NUL.
pub(crate) const MAX_IFNAME: usize = 15;

/// The whole desired state of a kernel WireGuard device.
#[derive(Clone)]
pub(crate) struct DeviceConfig {
    pub(crate) ifname: String,
    pub(crate) private_key: PrivateKey,
    pub(crate) listen_port: u16,
    /// The mark on the device's own datagrams; `None` sets none (0).
    pub(crate) fwmark: Option<NonZeroU32>,
    pub(crate) peers: Vec<PeerConfig>,
}

/// One peer of the device.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PeerConfig {
    pub(crate) public_key: PublicKey,
    /// Zeroed on drop; not in `Debug`.
    pub(crate) preshared_key: Zeroizing<[u8; 32]>,
    pub(crate) endpoint: SocketAddr,
    pub(crate) allowed_ips: Vec<Ipv4Net>,
    /// `None` sends no keepalives (0), as meshd's userspace sessions do.
    pub(crate) persistent_keepalive: Option<NonZeroU16>,
}

impl PartialEq for DeviceConfig {
    fn eq(&self, other: &Self) -> bool {
        self.ifname == other.ifname
            && self.private_key.as_bytes() == other.private_key.as_bytes()
            && self.listen_port == other.listen_port
            && self.fwmark == other.fwmark
            && self.peers == other.peers
    }
}

impl Eq for DeviceConfig {}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key's Debug shows only its public half.
        f.debug_struct("DeviceConfig")
            .field("ifname", &self.ifname)
            .field("private_key", &self.private_key)
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .field("allowed_ips", &self.allowed_ips)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish_non_exhaustive()
    }
}

/// The device's configuration for this node (`crypto`) and `peers`: every peer with a key,
/// reached at its underlay address on `port` (the WireGuard port is the same on every node),
/// its subnet as allowed IPs. Peers without a key (cleartext) are left out.
pub(crate) fn device_config(
    ifname: &str,
    crypto: &NodeCrypto,
    port: u16,
    fwmark: Option<NonZeroU32>,
    peers: &[Peer],
) -> DeviceConfig {
    DeviceConfig {
        ifname: ifname.to_string(),
        private_key: crypto.private.clone(),
        listen_port: port,
        fwmark,
        peers: peers
            .iter()
            .filter_map(|p| peer_config(p, crypto))
            .collect(),
    }
}

/// `peer` as a device peer, `None` without a key. Its preshared key comes from the same
/// [`NodeCrypto::pair_key`] the userspace sessions use, so a rotation of the cluster secrets
/// moves both to the same key.
pub(crate) fn peer_config(peer: &Peer, crypto: &NodeCrypto) -> Option<PeerConfig> {
    let key = peer.key.as_ref()?;
    let pair = crypto.pair_key(&key.public, key.secret_ids.as_deref());
    Some(PeerConfig {
        public_key: key.public,
        preshared_key: Zeroizing::new(pair.psk),
        endpoint: peer.endpoint()?,
        allowed_ips: vec![peer.subnet.trunc()],
        persistent_keepalive: None,
    })
}

/// A kernel WireGuard device meshd made or adopted, and the generic netlink socket that
/// configures it. Configuration calls block briefly (a netlink round trip per message).
pub(crate) struct KernelWireguard {
    ifname: String,
    index: u32,
    adopted: bool,
    genl: Mutex<Genl>,
}

impl KernelWireguard {
    /// Makes device `ifname` (up, `mtu`, meshd's alias) or adopts the one a previous run left,
    /// in the current network namespace. Needs a tokio runtime. On a kernel without WireGuard
    /// this is [`Error::Unavailable`] and leaves nothing behind. An adopted device keeps its
    /// peers (and their sessions) until the first [`KernelWireguard::sync`].
    pub(crate) async fn open(ifname: &str, mtu: u16) -> Result<KernelWireguard, Error> {
        check_name(ifname)?;
        let handle = link::connect()?;
        let (index, adopted) = link::create_or_adopt(&handle, ifname, mtu).await?;
        match Genl::connect() {
            Ok(genl) => Ok(KernelWireguard {
                ifname: ifname.to_string(),
                index,
                adopted,
                genl: Mutex::new(genl),
            }),
            Err(e) => {
                if !adopted {
                    let _ = link::delete(&handle, ifname).await;
                }
                Err(e)
            }
        }
    }

    pub(crate) fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The link's interface index (for routes through it).
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// Whether a previous run left the device and this one took it over.
    pub(crate) fn adopted(&self) -> bool {
        self.adopted
    }

    /// Makes the device exactly `desired`: key, port, fwmark and peer set. Only what differs
    /// from what the device holds is sent ([`diff::sync_device`]), so peers that stay keep
    /// their sessions; a changed preshared key applies from the next handshake. A device
    /// holding peers meshd cannot read is replaced wholesale ([`message::set_device`]).
    pub(crate) fn sync(&self, desired: &DeviceConfig) -> Result<(), Error> {
        self.check(desired)?;
        let mut genl = self.lock();
        let replies = genl.dump(
            &format!("reading `{}`", self.ifname),
            message::get_device(&self.ifname),
        )?;
        let msgs = match message::parse_peers(&replies) {
            Ok(current) => diff::sync_device(desired, &current),
            Err(error) => {
                tracing::warn!(device = %self.ifname, %error, "the device holds peers meshd cannot read: replacing them all");
                message::set_device(desired)
            }
        };
        genl.set(&format!("configuring `{}`", self.ifname), msgs)
    }

    /// Makes the device exactly `desired` with `WGDEVICE_F_REPLACE_PEERS`: every peer is
    /// dropped and written again, so every session starts over. For a device whose state is
    /// unknown; [`KernelWireguard::sync`] is the reconcile step.
    #[cfg(test)]
    pub(crate) fn replace(&self, desired: &DeviceConfig) -> Result<(), Error> {
        self.check(desired)?;
        let what = format!("configuring `{}`", self.ifname);
        self.lock().set(&what, message::set_device(desired))
    }

    /// Removes the peers with `keys` (one that is not there is no error).
    #[cfg(test)]
    pub(crate) fn remove_peers(&self, keys: &[PublicKey]) -> Result<(), Error> {
        let what = format!("removing peers of `{}`", self.ifname);
        self.lock()
            .set(&what, message::remove_peers(&self.ifname, keys))
    }

    /// The device's configuration as the kernel holds it.
    #[cfg(test)]
    pub(crate) fn device(&self) -> Result<DeviceConfig, Error> {
        let what = format!("reading `{}`", self.ifname);
        let replies = self.lock().dump(&what, message::get_device(&self.ifname))?;
        Ok(message::parse_device(&replies)?)
    }

    fn check(&self, desired: &DeviceConfig) -> Result<(), Error> {
        if desired.ifname != self.ifname {
            return Err(Error::OtherDevice {
                device: self.ifname.clone(),
                given: desired.ifname.clone(),
            });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Genl> {
        // A panic mid-request leaves at worst an unread answer, which the next request skips.
        self.genl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for KernelWireguard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelWireguard")
            .field("ifname", &self.ifname)
            .field("index", &self.index)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

fn check_name(ifname: &str) -> Result<(), Error> {
    let bad = ifname.is_empty()
        || ifname.len() > MAX_IFNAME
        || ifname
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(Error::BadName(ifname.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
