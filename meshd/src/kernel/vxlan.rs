//! The kernel VXLAN device and its per-peer entries, as flannel's vxlan backend makes them
//! (and docs/interop.md's kernel-VXLAN recipe by hand): a device with the node's VTEP MAC, learning
//! off, the underlay MTU − 50; per peer a static FDB entry (its VTEP MAC → its underlay
//! address) and a permanent neighbour (its VTEP address, the subnet's network address → its
//! VTEP MAC). The route that sends a peer's subnet through the device is [`super::routes`].
//!
//! The device owns the VXLAN UDP port: it receives from every peer, kernel or userspace alike,
//! so meshd's own socket only sends (see `daemon::run`). What it receives is held to the
//! userspace path's rule by [`super::source_check`], set up before the device comes up.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

use super::Refusal;
use crate::host::{self, Host, OWNER_ALIAS};
use crate::wire::MacAddr;

/// The device meshd wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VxlanSpec {
    pub(crate) name: String,
    pub(crate) vni: u32,
    pub(crate) port: u16,
    /// The node's underlay address: the datagrams' source.
    pub(crate) local: Ipv4Addr,
    /// The node's VTEP MAC.
    pub(crate) mac: MacAddr,
    pub(crate) mtu: u16,
}

/// Where the device in use came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Origin {
    Created,
    /// A previous meshd made it, with the same settings: kept, with its entries and routes, so
    /// pods on kernel paths never noticed the restart.
    Adopted,
    /// A previous meshd made it with other settings: replaced.
    Recreated {
        why: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Created => f.write_str("created"),
            Origin::Adopted => f.write_str("adopted"),
            Origin::Recreated { why } => write!(f, "recreated: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VxlanDevice {
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) mac: MacAddr,
    pub(crate) origin: Origin,
    /// The underlay is a veth (containers, namespaces): see [`set_software_checksums`].
    pub(crate) veth_underlay: bool,
}

/// Create the device, or adopt the one a previous meshd left; `Err` says why the kernel will
/// not have it (no VXLAN support, the port taken, a foreign link of that name, …) and leaves
/// nothing behind.
pub(crate) async fn ensure(host: &Host, spec: &VxlanSpec) -> Result<VxlanDevice, Refusal> {
    let mut origin = Origin::Created;
    if let Some(link) = host.link(&spec.name).await.map_err(other)? {
        if !host::owned(&link) {
            return Err(Refusal::new(format!(
                "link `{}` exists and was not made by meshd (no `{OWNER_ALIAS}` alias)",
                spec.name
            )));
        }
        match mismatch(&link, spec) {
            None => origin = Origin::Adopted,
            Some(why) => {
                host.handle()
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .map_err(|e| Refusal::from_netlink(&e))?;
                origin = Origin::Recreated { why };
            }
        }
    }
    if origin != Origin::Adopted {
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            // RFC 7348: the UDP checksum SHOULD be zero over IPv4 (the inner packet has its own).
            .udp_csum(false)
            .address(spec.mac.0.to_vec())
            .mtu(u32::from(spec.mtu))
            .build();
        host.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Refusal::from_netlink(&e))?;
    }
    let index = host.index(&spec.name).await.map_err(other)?;
    // Up binds the UDP port: the step that fails when another socket holds it.
    let up = LinkUnspec::new_with_index(index)
        .up()
        .alias(OWNER_ALIAS)
        .build();
    if let Err(e) = host.handle().link().set(up).execute().await {
        let refusal = Refusal::from_netlink(&e);
        let _ = host.handle().link().del(index).execute().await;
        return Err(refusal);
    }
    super::loose_rp_filter(&spec.name);
    let veth_underlay = underlay_kind(host, spec.local).await == Some(InfoKind::Veth);
    Ok(VxlanDevice {
        name: spec.name.clone(),
        index,
        mac: spec.mac,
        origin,
        veth_underlay,
    })
}

/// Checksums in software (transmit checksum offload off) or offloaded. A veth hands partial
/// checksums on as they are: a kernel VXLAN receiver copes (the packet stays partial up to the
/// pod), but a userspace one reads the datagram as bytes and its pods would get packets with
/// unfinished checksums. So on a veth underlay, while the device carries a peer not known to
/// receive in its kernel (only `datapath = "kernel"` puts one there: see
/// [`crate::paths::receiver`]), it checksums in software, at the cost of its segmentation
/// offload.
pub(crate) fn set_software_checksums(dev: &str, on: bool) -> std::io::Result<()> {
    super::ethtool::set_tx_checksum(dev, !on)
}

/// Why an existing device does not match `spec`, if it does not.
fn mismatch(link: &LinkMessage, spec: &VxlanSpec) -> Option<String> {
    if host::kind(link) != Some(InfoKind::Vxlan) {
        return Some("not a VXLAN device".into());
    }
    let mut vni = None;
    let mut port = None;
    let mut local = None;
    let mut learning = None;
    let mut csum = None;
    for a in &link.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                    for x in v {
                        match x {
                            InfoVxlan::Id(n) => vni = Some(*n),
                            InfoVxlan::Port(p) => port = Some(*p),
                            InfoVxlan::Local(l) => local = Some(*l),
                            InfoVxlan::Learning(b) => learning = Some(*b),
                            InfoVxlan::UDPCsum(b) => csum = Some(*b),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let mac = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    });
    let mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    });
    let checks: [(bool, String); 7] = [
        (csum != Some(true), "UDP checksums on".into()),
        (
            vni == Some(spec.vni),
            format!("VNI {vni:?}, want {}", spec.vni),
        ),
        (
            port == Some(spec.port),
            format!("port {port:?}, want {}", spec.port),
        ),
        (
            local == Some(spec.local),
            format!("local {local:?}, want {}", spec.local),
        ),
        (learning == Some(false), "learning on".into()),
        (
            mac.as_deref() == Some(&spec.mac.0[..]),
            format!("MAC differs, want {}", spec.mac),
        ),
        (
            mtu == Some(u32::from(spec.mtu)),
            format!("MTU {mtu:?}, want {}", spec.mtu),
        ),
    ];
    checks.into_iter().find(|(ok, _)| !ok).map(|(_, why)| why)
}

/// The kind of the link that holds `addr` (the underlay device).
async fn underlay_kind(host: &Host, addr: Ipv4Addr) -> Option<InfoKind> {
    let index = underlay_index(host, addr).await?;
    host::kind(&host.link_by_index(index).await?)
}

/// The index of the link that holds `addr`.
pub(crate) async fn underlay_index(host: &Host, addr: Ipv4Addr) -> Option<u32> {
    let mut addrs = host.handle().address().get().execute();
    while let Ok(Some(a)) = addrs.try_next().await {
        let has = a.attributes.iter().any(|at| {
            matches!(at,
                netlink_packet_route::address::AddressAttribute::Local(IpAddr::V4(v))
                | netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(v)) if *v == addr)
        });
        if has {
            return Some(a.header.index);
        }
    }
    None
}

/// One peer's entries on the device: where its VTEP MAC lives, and its VTEP address's MAC.
pub(crate) async fn set_peer(
    host: &Host,
    index: u32,
    mac: MacAddr,
    vtep: Ipv4Addr,
    underlay: IpAddr,
) -> anyhow::Result<()> {
    use anyhow::Context;
    host.handle()
        .neighbours()
        .add_bridge(index, &mac.0)
        .flags(NeighbourFlags::Own)
        .destination(underlay)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding the FDB entry {mac} → {underlay}"))?;
    host.handle()
        .neighbours()
        .add(index, IpAddr::V4(vtep))
        .link_layer_address(&mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding the neighbour {vtep} → {mac}"))?;
    Ok(())
}

/// The permanent entries on the device, as (VTEP MAC, underlay) and (VTEP address, MAC).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Entries {
    pub(crate) fdb: Vec<(MacAddr, IpAddr)>,
    pub(crate) neighbours: Vec<(Ipv4Addr, MacAddr)>,
}

pub(crate) async fn entries(host: &Host, index: u32) -> anyhow::Result<Entries> {
    let mut out = Entries::default();
    for family in [AddressFamily::Bridge, AddressFamily::Inet] {
        let mut dump = host
            .handle()
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(n) = dump.try_next().await? {
            if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let (mac, dst) = parts(&n);
            match (family, mac, dst) {
                (AddressFamily::Bridge, Some(mac), Some(dst)) => out.fdb.push((mac, dst)),
                (AddressFamily::Inet, Some(mac), Some(IpAddr::V4(v4))) => {
                    out.neighbours.push((v4, mac))
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Remove a peer's entries (absent ones are not an error).
pub(crate) async fn remove_peer(host: &Host, index: u32, mac: MacAddr, vtep: Ipv4Addr) {
    let mut fdb = NeighbourMessage::default();
    fdb.header.family = AddressFamily::Bridge;
    fdb.header.ifindex = index;
    fdb.header.flags = NeighbourFlags::Own;
    fdb.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    let mut neigh = NeighbourMessage::default();
    neigh.header.family = AddressFamily::Inet;
    neigh.header.ifindex = index;
    neigh
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            vtep,
        )));
    for m in [fdb, neigh] {
        if let Err(e) = host.handle().neighbours().del(m).execute().await {
            tracing::debug!(error = %e, "removing a peer's VXLAN entry");
        }
    }
}

fn parts(n: &NeighbourMessage) -> (Option<MacAddr>, Option<IpAddr>) {
    let mut mac = None;
    let mut dst = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = MacAddr::from_slice(l),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                dst = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                dst = Some(IpAddr::V6(*v6))
            }
            _ => {}
        }
    }
    (mac, dst)
}

fn other(e: anyhow::Error) -> Refusal {
    Refusal::new(format!("{e:#}"))
}

/// The VXLAN device line of `meshd status`; `checksums` says how it checksums and why, where
/// that was chosen (a veth underlay); `unchecked` says why the inner sources of what it
/// receives are not checked right now (see [`super::source_check`]), when they are not.
pub(crate) fn device_text(
    d: &VxlanDevice,
    checksums: Option<&str>,
    unchecked: Option<&str>,
) -> String {
    let mut s = format!("in use: {} ({}", d.name, d.origin);
    match unchecked {
        None => {
            s += &format!(
                "; inner sources checked: nft table {} {}",
                super::nft::FAMILY,
                super::nft::TABLE
            )
        }
        Some(why) => s += &format!("; inner sources NOT checked: {why}; retrying"),
    }
    if let Some(c) = checksums {
        s += "; ";
        s += c;
    }
    s + ")"
}
