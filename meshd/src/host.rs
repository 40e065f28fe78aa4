//! Host networking through netlink: the pod bridge, the TUN device's link state and the cluster
//! route, and forwarding. Every step is idempotent, so a restarted meshd reconciles what it finds
//! instead of failing on it, and everything meshd creates carries an alias that marks it as ours
//! so `meshd cleanup` never removes what it did not make.

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};

use crate::wire::{derived_mac, MacAddr};

/// The alias meshd puts on links it creates.
pub(crate) const OWNER_ALIAS: &str = "meshd";
const ENODEV: i32 = 19;

pub(crate) struct Host {
    handle: Handle,
}

impl Host {
    /// Open a netlink connection in the current network namespace. Needs a tokio runtime.
    pub(crate) fn connect() -> Result<Host> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Host { handle })
    }

    /// The netlink handle, for the kernel fast path's own requests ([`crate::kernel`]).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, if there is one.
    pub(crate) async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up link `{name}`")),
        }
    }

    /// The link with index `index`, if there is one (and netlink answers).
    pub(crate) async fn link_by_index(&self, index: u32) -> Option<LinkMessage> {
        let mut links = self.handle.link().get().match_index(index).execute();
        links.try_next().await.ok().flatten()
    }

    /// Make `name` a bridge, up, holding the gateway address (`.1`) of `subnet` and nothing
    /// else from the cluster. Returns true when this call created it.
    pub(crate) async fn ensure_bridge(
        &self,
        name: &str,
        node: &str,
        subnet: Ipv4Net,
        cluster: Ipv4Net,
        mtu: u16,
    ) -> Result<bool> {
        let created = match self.link(name).await? {
            Some(link) => {
                if kind(&link) != Some(InfoKind::Bridge) {
                    bail!("link `{name}` exists and is not a bridge; choose another `bridge` name or remove it");
                }
                false
            }
            None => {
                // A fixed MAC: left to itself a bridge takes the lowest MAC among its ports, so the
                // pods' gateway would change MAC whenever a pod comes or goes.
                let mac = bridge_mac(node).0.to_vec();
                let msg = LinkBridge::new(name)
                    .mtu(u32::from(mtu))
                    .address(mac)
                    .up()
                    .build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .with_context(|| format!("creating bridge `{name}`"))?;
                true
            }
        };
        let index = self.index(name).await?;
        // The kernel ignores an alias given at creation: set it with the first change.
        let mut msg = LinkUnspec::new_with_index(index).up();
        if created {
            msg = msg.alias(OWNER_ALIAS);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .with_context(|| format!("bringing `{name}` up"))?;
        let gateway = gateway(subnet);
        // A subnet that changed (a new lease) leaves an old cluster address behind: remove it.
        let stale = self
            .v4_addresses(index)
            .await?
            .into_iter()
            .filter(|(a, v4)| {
                let same = *v4 == gateway && a.header.prefix_len == subnet.prefix_len();
                !same && cluster.contains(v4)
            });
        for (a, _) in stale {
            self.handle
                .address()
                .del(a)
                .execute()
                .await
                .context("removing a stale bridge address")?;
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(gateway), subnet.prefix_len())
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {gateway}/{} to `{name}`", subnet.prefix_len()))?;
        Ok(created)
    }

    /// The subnet of `name`'s first IPv4 address inside `cluster` (what a previous run left on
    /// the bridge), if the link exists and has one.
    pub(crate) async fn cluster_subnet_on(
        &self,
        name: &str,
        cluster: Ipv4Net,
    ) -> Result<Option<Ipv4Net>> {
        let Some(link) = self.link(name).await? else {
            return Ok(None);
        };
        let addrs = self.v4_addresses(link.header.index).await?;
        Ok(addrs.into_iter().find_map(|(a, v4)| {
            let net = Ipv4Net::new(v4, a.header.prefix_len).ok()?.trunc();
            cluster.contains(&net).then_some(net)
        }))
    }

    /// Bring the TUN device up and route the cluster CIDR into it. The node's own subnet stays
    /// on the bridge: its connected route is more specific.
    ///
    /// `source` (the bridge address, once the subnet is known) is the route's preferred source:
    /// without it the kernel gives packets the host itself sends to a remote pod (a ping, a
    /// kubelet probe, a node-local agent) the underlay address, which lies outside this node's
    /// subnet, and the peer drops them as `spoofed-source`.
    pub(crate) async fn route_cluster(
        &self,
        tun: &str,
        cluster: Ipv4Net,
        source: Option<Ipv4Addr>,
    ) -> Result<()> {
        let index = self.index(tun).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .up()
                    .alias(OWNER_ALIAS)
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("bringing `{tun}` up"))?;
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cluster.network(), cluster.prefix_len())
            .output_interface(index);
        if let Some(source) = source {
            route = route.pref_source(source);
        }
        let route = route.build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("routing {cluster} to `{tun}`"))?;
        Ok(())
    }

    /// Whether `addr` is assigned to an interface in this network namespace (its local
    /// address: on a point-to-point link, not the far end's).
    pub(crate) async fn has_address(&self, addr: IpAddr) -> Result<bool> {
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .context("listing the host's addresses")?
        {
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if local.or(address) == Some(addr) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Delete `name` if it exists and meshd made it. Returns whether it was deleted.
    pub(crate) async fn remove_owned(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        if !owned(&link) {
            bail!("link `{name}` was not created by meshd (no `{OWNER_ALIAS}` alias); leaving it alone");
        }
        self.handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .with_context(|| format!("deleting `{name}`"))?;
        Ok(true)
    }

    /// The IPv4 addresses on link `index`.
    pub(crate) async fn v4_addresses(&self, index: u32) -> Result<Vec<(AddressMessage, Ipv4Addr)>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        while let Some(a) = addrs.try_next().await.context("listing link addresses")? {
            let v4 = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v4))
                | AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            if let Some(v4) = v4 {
                found.push((a, v4));
            }
        }
        Ok(found)
    }

    pub(crate) async fn index(&self, name: &str) -> Result<u32> {
        Ok(self
            .link(name)
            .await?
            .with_context(|| format!("link `{name}` disappeared"))?
            .header
            .index)
    }
}

/// Whether meshd made `link` (it carries the owner alias).
pub(crate) fn owned(link: &LinkMessage) -> bool {
    link.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::IfAlias(s) if s == OWNER_ALIAS))
}

/// The bridge's MAC: stable per node, distinct from the VTEP MAC.
pub fn bridge_mac(node: &str) -> MacAddr {
    derived_mac("meshd v1 bridge mac", node)
}

/// The bridge's address: the first host of the subnet, the pods' default gateway.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The kind of a link (bridge, vxlan, veth, …), when the kernel says.
pub(crate) fn kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// Let the host route between the bridge and the TUN device.
pub(crate) fn enable_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    // In a container /proc/sys is read-only; the runtime sets the sysctl (compose `sysctls`).
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(PATH, "1")
        .context("enabling IPv4 forwarding (in a container, set the sysctl net.ipv4.ip_forward=1)")
}
