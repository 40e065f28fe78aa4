//! Per-peer routes: a peer's subnet goes to the TUN device (userspace), via its VTEP address
//! on the VXLAN device (kernel VXLAN), or via its underlay address (host-gw). Moving a peer
//! between paths is one route replace. Every route meshd makes carries its protocol number,
//! [`PROTOCOL`], so a restarted meshd finds its own routes ([`list`]) and `meshd cleanup`
//! removes only those; and a route meshd did not make is never replaced ([`set`]): a subnet
//! that collides with the host's own routes (a connected underlay network, say) is refused
//! here even if a mistake upstream let it through.

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr};

use crate::host::Host;

/// The route protocol number of meshd's routes (`ip route show proto 109`).
pub(crate) const PROTOCOL: u8 = 109;

/// Where a peer's subnet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A device: the TUN device (meshd's userspace path) or the kernel WireGuard device.
    Device { index: u32 },
    /// The VXLAN device, via the peer's VTEP address (onlink: no subnet of the device covers it).
    Vxlan { index: u32, vtep: Ipv4Addr },
    /// Straight to the peer's underlay address, no encapsulation (host-gw).
    Gateway { address: Ipv4Addr },
}

/// Route `subnet` as `via` says, from `source` (the bridge address: packets the host itself
/// sends to pods need a source inside its subnet), with `mtu` when the peer's path MTU is below
/// the device's: locked (`ip route … mtu lock N`), so the kernel answers larger packets with
/// DF set with "fragmentation needed" itself and no ICMP it receives raises it. A route for
/// `subnet` that meshd made is replaced; one it did not make (another protocol: the kernel's
/// connected route, an operator's static one) is left alone and the call fails, naming it.
pub(crate) async fn set(
    host: &Host,
    subnet: Ipv4Net,
    via: Via,
    source: Ipv4Addr,
    mtu: Option<u16>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .protocol(RouteProtocol::Other(PROTOCOL))
        .pref_source(source);
    b = match via {
        Via::Device { index } => b.output_interface(index),
        Via::Vxlan { index, vtep } => b.output_interface(index).gateway(vtep).onlink(),
        Via::Gateway { address } => b.gateway(address),
    };
    let mut msg = b.build();
    if let Some(mtu) = mtu {
        use netlink_packet_route::route::RouteMetric;
        msg.attributes.push(RouteAttribute::Metrics(vec![
            RouteMetric::Lock(1 << RTAX_MTU),
            RouteMetric::Mtu(u32::from(mtu)),
        ]));
    }
    // Create-only first: the common case (a new peer) needs no look-up.
    match host.handle().route().add(msg.clone()).execute().await {
        Ok(()) => return Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(e).with_context(|| format!("routing {subnet} {via:?}")),
    }
    match holder(host, subnet).await? {
        Some(protocol) if protocol != PROTOCOL => anyhow::bail!(
            "the kernel has a route for {subnet} that meshd did not make ({}): not replaced",
            protocol_name(protocol)
        ),
        _ => host
            .handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("routing {subnet} {via:?}")),
    }
}

/// The protocol of the main-table route a replace of `subnet` would hit (same destination and
/// prefix, metric 0), if there is one. A dump: only paid when a create found a route there.
async fn holder(host: &Host, subnet: Ipv4Net) -> Result<Option<u8>> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut dump = host.handle().route().get(filter).execute();
    while let Some(r) = dump.try_next().await.context("listing routes")? {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let metric = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        });
        let here = dst.unwrap_or(Ipv4Addr::UNSPECIFIED) == subnet.network()
            && r.header.destination_prefix_length == subnet.prefix_len();
        if here && table == MAIN_TABLE && metric.unwrap_or(0) == 0 {
            return Ok(Some(u8::from(r.header.protocol)));
        }
    }
    Ok(None)
}

/// The route metric of the MTU (`RTAX_MTU`), whose bit in `RTAX_LOCK` locks it.
const RTAX_MTU: u32 = 2;

/// The kernel's main routing table (RT_TABLE_MAIN), where meshd's routes go.
const MAIN_TABLE: u32 = 254;

/// A route protocol number as `ip route` names it.
fn protocol_name(p: u8) -> String {
    match p {
        2 => "proto kernel: a connected network of this host".into(),
        3 => "proto boot".into(),
        4 => "proto static".into(),
        16 => "proto dhcp".into(),
        p => format!("proto {p}"),
    }
}

/// Remove meshd's route for `subnet`, if there is one.
pub(crate) async fn remove(host: &Host, subnet: Ipv4Net) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .protocol(RouteProtocol::Other(PROTOCOL))
        .build();
    match host.handle().route().del(msg).execute().await {
        Ok(()) => Ok(()),
        // ESRCH: no such route.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the route for {subnet}")),
    }
}

/// A route meshd made, as found in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) subnet: Ipv4Net,
    pub(crate) oif: Option<u32>,
    pub(crate) gateway: Option<Ipv4Addr>,
    /// The MTU it carries (a peer's path MTU), if any.
    pub(crate) mtu: Option<u16>,
}

/// meshd's routes in the main table.
pub(crate) async fn list(host: &Host) -> Result<Vec<Found>> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut dump = host.handle().route().get(filter).execute();
    let mut out = Vec::new();
    while let Some(r) = dump.try_next().await.context("listing routes")? {
        if let Some(f) = found(&r) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Whether a route the kernel has goes where `via` says.
pub(crate) fn matches(found: &Found, via: Via) -> bool {
    match via {
        Via::Device { index } => found.oif == Some(index) && found.gateway.is_none(),
        Via::Vxlan { index, vtep } => found.oif == Some(index) && found.gateway == Some(vtep),
        Via::Gateway { address } => found.gateway == Some(address),
    }
}

fn found(r: &RouteMessage) -> Option<Found> {
    if u8::from(r.header.protocol) != PROTOCOL {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    let mut gateway = None;
    let mut mtu = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Metrics(m) => {
                mtu = m.iter().find_map(|x| match x {
                    netlink_packet_route::route::RouteMetric::Mtu(v) => u16::try_from(*v).ok(),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    let subnet = Ipv4Net::new(dst?, r.header.destination_prefix_length).ok()?;
    Some(Found {
        subnet,
        oif,
        gateway,
        mtu,
    })
}

/// Whether `peer` is on this node's L2 segment: inside the prefix of the underlay address
/// `local` holds on its link (`index`), so a route via it needs no router.
pub(crate) async fn same_segment(host: &Host, index: u32, local: Ipv4Addr, peer: IpAddr) -> bool {
    let IpAddr::V4(peer) = peer else {
        return false;
    };
    let Ok(addrs) = host.v4_addresses(index).await else {
        return false;
    };
    addrs.iter().any(|(a, v4)| {
        *v4 == local
            && Ipv4Net::new(local, a.header.prefix_len)
                .is_ok_and(|net| net.trunc().contains(&peer) && peer != local)
    })
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
