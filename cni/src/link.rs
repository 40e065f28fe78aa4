//! Synchronous wrappers around the few rtnetlink requests the plugin makes.
//!
//! A netlink socket talks to the namespace it was created in, so an [`Nl`] is created on the
//! thread (and in the namespace) where it is used, with its own single-threaded tokio runtime.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

/// What we need to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub master: Option<u32>,
    pub kind: Option<InfoKind>,
    pub alias: Option<String>,
}

/// A default route, as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// An rtnetlink connection bound to the calling thread's network namespace.
pub struct Nl {
    rt: Runtime,
    handle: Handle,
}

impl Nl {
    /// Connects in the current thread's namespace.
    pub fn new() -> Result<Nl> {
        let io = |what: &str, e| Error::Io {
            what: what.into(),
            source: e,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| io("starting netlink runtime", e))?;
        let (conn, handle, _) = rt
            .block_on(async { rtnetlink::new_connection() })
            .map_err(|e| io("opening netlink socket", e))?;
        rt.spawn(conn);
        Ok(Nl { rt, handle })
    }

    /// The link named `name`, or `None`.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut req = Box::pin(
            self.handle
                .link()
                .get()
                .match_name(name.to_owned())
                .execute(),
        );
        match self.rt.block_on(req.try_next()) {
            Ok(Some(msg)) => Ok(Some(to_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, enodev()) => Ok(None),
            Err(e) => Err(Error::netlink(format!("looking up link {name}"), e)),
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| Error::netlink("listing links", e))?;
        Ok(msgs.iter().map(to_link).collect())
    }

    /// Creates a veth pair: `host` here, `peer` inside the namespace `peer_ns`, both with `mtu`.
    pub fn create_veth(&self, host: &str, peer: &str, peer_ns: RawFd, mtu: u32) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(peer_ns)
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| Error::netlink(format!("creating veth {host} <-> {peer}"), e))
    }

    /// Attaches link `index` to bridge `master`, labels it with `alias` and sets it up.
    pub fn enslave_up(&self, index: u32, master: u32, alias: Option<&str>) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).controller(master).up();
        if let Some(alias) = alias {
            msg = msg.alias(alias);
        }
        let msg = msg.build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| Error::netlink("attaching veth to the bridge", e))
    }

    /// Sets link `index` up.
    pub fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| Error::netlink("setting link up", e))
    }

    /// Deletes link `index`; a link already gone is not an error.
    pub fn delete(&self, index: u32) -> Result<()> {
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Err(e) if !is_errno(&e, enodev()) => Err(Error::netlink("deleting link", e)),
            _ => Ok(()),
        }
    }

    /// Adds `ip/prefix` to link `index`.
    pub fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(index, IpAddr::V4(ip), prefix)
                    .execute(),
            )
            .map_err(|e| Error::netlink(format!("adding {ip}/{prefix}"), e))
    }

    /// The IPv4 addresses on link `index`, with prefix lengths.
    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let msgs: Vec<_> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| Error::netlink("listing addresses", e))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == index) {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds a default route via `gateway` out of link `index`.
    pub fn add_default_route(&self, gateway: Ipv4Addr, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).execute())
            .map_err(|e| Error::netlink(format!("adding default route via {gateway}"), e))
    }

    /// IPv4 default routes of the main table.
    pub fn default_routes(&self) -> Result<Vec<DefaultRoute>> {
        let req = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let msgs: Vec<_> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| Error::netlink("listing routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.destination_prefix_length == 0
                    && m.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .map(|m| {
                let mut r = DefaultRoute {
                    gateway: None,
                    oif: None,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
                        RouteAttribute::Oif(i) => r.oif = Some(*i),
                        _ => {}
                    }
                }
                r
            })
            .collect())
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = Some(format_mac(a)),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.clone());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// `aa:bb:cc:dd:ee:ff`, as CNI results spell MACs.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

/// True if `e` is the kernel's answer `errno`.
pub fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn macs_are_lowercase_colon_separated() {
        assert_eq!(
            format_mac(&[0x0a, 0xff, 0, 1, 2, 0x3c]),
            "0a:ff:00:01:02:3c"
        );
    }

    #[test]
    fn loopback_is_visible() {
        // Every namespace has lo; reading it needs no privilege.
        let nl = Nl::new().unwrap();
        let lo = nl.link("lo").unwrap().unwrap();
        assert_eq!(lo.index, 1);
        assert!(nl.link("does-not-exist0").unwrap().is_none());
    }
}
