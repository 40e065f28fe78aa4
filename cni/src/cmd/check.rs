//! CHECK: compare the attachment with what ADD reported and made, and list every difference.
//!
//! What is expected comes from `prevResult`, as the spec asks: the pod interface, its address,
//! and the default route only if the result lists one via our gateway (ADD reports it only when
//! it installed it, so a secondary interface in a pod that had a default route is not held to
//! one). Routes other plugins added or changed are theirs to check.

use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;

use super::host_link_name;
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::ipam::Store;
use crate::link::Nl;
use crate::netns::Netns;
use crate::node;
use crate::result::CniResult;

pub(super) fn check(env: &Env, conf: &NetConf) -> Result<()> {
    conf.version
        .require("CHECK", conf.version.has_check(), "0.4.0")?;
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig("CHECK needs prevResult, the result of ADD".into()))?;
    let prev = CniResult::from_prev(prev)?;
    let net = node::require_ready(&conf.runtime_dir)?;
    let ns = Netns::open(netns_path)?;
    let mut problems = Vec::new();

    // What ADD said: our pod interface in this sandbox, and its address.
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns_path));
    if pod_index.is_none() {
        problems.push(format!(
            "prevResult has no interface {ifname} in sandbox {netns_path}"
        ));
    }
    let reported_ip = pod_index.and_then(|idx| {
        prev.ips
            .iter()
            .find(|ip| ip.interface == Some(idx))
            .and_then(|ip| {
                let (addr, prefix) = ip.address.split_once('/')?;
                Some((addr.parse::<Ipv4Addr>().ok()?, prefix.parse::<u8>().ok()?))
            })
    });
    let reported_mac = pod_index.and_then(|i| prev.interfaces[i].mac.clone());
    let gateway = net.gateway;
    let want_default = prev.routes.iter().any(|r| {
        r.dst == "0.0.0.0/0" && r.gw.as_deref().and_then(|g| g.parse().ok()) == Some(gateway)
    });

    // Our allocation.
    let allocated = match Store::open_existing(&conf.data_dir, &conf.name)? {
        Some(store) => store.find(&conf.name, container_id, ifname)?.map(|a| a.ip),
        None => None,
    };
    match (allocated, reported_ip) {
        (None, _) => problems.push(format!(
            "no address is allocated to {container_id}/{ifname}"
        )),
        (Some(a), Some((r, _))) if a != r => {
            problems.push(format!("allocated address {a} differs from reported {r}"))
        }
        (Some(_), None) => {
            problems.push(format!("prevResult reports no IPv4 address for {ifname}"))
        }
        _ => {}
    }
    let want_prefix = net.subnet.prefix_len();
    let want_ip = allocated.or(reported_ip.map(|(a, _)| a));
    // meshd restarted with another subnet: the pod's address is no longer routed here and its
    // gateway is gone, so nothing else about it matters (the pod must be made again).
    if let Some(ip) = want_ip.filter(|ip| !net.subnet.contains(ip)) {
        problems.push(format!(
            "address {ip} lies outside this node's pod subnet {} (meshd now runs with another \
             subnet: this pod's traffic is not routed and its gateway is gone; recreate the pod)",
            net.subnet
        ));
    }
    // The gateway ADD reported for our interface (another plugin's entries are its own).
    let prev_gateway = pod_index.and_then(|idx| {
        prev.ips
            .iter()
            .filter(|ip| ip.interface == Some(idx))
            .find_map(|ip| ip.gateway.as_deref()?.parse::<Ipv4Addr>().ok())
    });
    if let Some(g) = prev_gateway.filter(|g| *g != gateway) {
        problems.push(format!(
            "ADD reported gateway {g}, but this node's gateway is now {gateway}"
        ));
    }

    // The host end.
    let host = Nl::new()?;
    let host_name = host_link_name(&conf.name, container_id, ifname);
    match host.link(&host_name)? {
        None => problems.push(format!("host veth {host_name} does not exist")),
        Some(l) => {
            let bridge = host.link(&net.bridge)?.map(|b| b.index);
            if l.kind != Some(InfoKind::Veth) {
                problems.push(format!("host link {host_name} is not a veth"));
            }
            if bridge.is_none() || l.master != bridge {
                problems.push(format!(
                    "host veth {host_name} is not attached to bridge {}",
                    net.bridge
                ));
            }
            if !l.up {
                problems.push(format!("host veth {host_name} is down"));
            }
            if l.mtu != Some(net.mtu) {
                problems.push(format!(
                    "host veth {host_name} has MTU {:?}, want {}",
                    l.mtu, net.mtu
                ));
            }
        }
    }

    // The pod end.
    let mtu = net.mtu;
    let pod_problems = ns.run(|| {
        let mut p = Vec::new();
        let nl = Nl::new()?;
        let Some(link) = nl.link(ifname)? else {
            p.push(format!("{ifname} does not exist in {netns_path}"));
            return Ok(p);
        };
        if link.kind != Some(InfoKind::Veth) {
            p.push(format!("{ifname} is not a veth"));
        }
        if !link.up {
            p.push(format!("{ifname} is down"));
        }
        if link.mtu != Some(mtu) {
            p.push(format!("{ifname} has MTU {:?}, want {mtu}", link.mtu));
        }
        if reported_mac.is_some() && link.mac != reported_mac {
            p.push(format!(
                "{ifname} has MAC {:?}, ADD reported {:?}",
                link.mac, reported_mac
            ));
        }
        if let Some(ip) = want_ip {
            let addrs = nl.addresses(link.index)?;
            if !addrs.contains(&(ip, want_prefix)) {
                p.push(format!(
                    "{ifname} lacks address {ip}/{want_prefix} (has {addrs:?})"
                ));
            }
        }
        let routes = nl.default_routes()?;
        let have_default = routes
            .iter()
            .any(|r| r.gateway == Some(gateway) && r.oif == Some(link.index));
        if want_default && !have_default {
            p.push(format!("no default route via {gateway} on {ifname}"));
        }
        Ok(p)
    })?;
    problems.extend(pod_problems);

    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed(problems))
    }
}
