//! DEL and GC: taking attachments apart.
//!
//! DEL never needs meshd: it works from our own state and the deterministic host link name, so
//! it succeeds with meshd stopped, with the pod's namespace gone or given as an empty string,
//! and when called twice. GC releases every allocation and host link of this network that is
//! not in `cni.dev/valid-attachments`.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;

use super::{host_link_name, HOST_PREFIX};
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::ipam::Store;
use crate::link::Nl;
use crate::netns::Netns;
use crate::node::{self, NodeState};

pub(super) fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = env.netns_optional()?;
    let store = Store::open(&conf.data_dir, &conf.name)?;
    let host = Nl::new()?;
    let host_name = host_link_name(&conf.name, container_id, ifname);
    // Deleting the host end deletes the pod end with it, wherever that is.
    if let Some(link) = host.link(&host_name)? {
        host.delete(link.index)?;
    }
    if let Some(ip) = store.find(container_id, ifname)? {
        if let Some(ns) = netns.map(Netns::open_if_exists).transpose()?.flatten() {
            remove_pod_end(&ns, ifname, ip)?;
        }
        store.release(ip)?;
    }
    Ok(())
}

/// If the host end was lost some other way, a pod end carrying our address may remain.
fn remove_pod_end(ns: &Netns, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    ns.run(|| {
        let nl = Nl::new()?;
        if let Some(link) = nl.link(ifname)? {
            let ours = link.kind == Some(InfoKind::Veth)
                && nl.addresses(link.index)?.iter().any(|(a, _)| *a == ip);
            if ours {
                nl.delete(link.index)?;
            }
        }
        Ok(())
    })
}

pub(super) fn gc(conf: &NetConf) -> Result<()> {
    conf.version
        .require("GC", conf.version.has_gc_and_status(), "1.1.0")?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        Error::InvalidConfig(
            "GC needs \"cni.dev/valid-attachments\" (an empty list releases everything)".into(),
        )
    })?;
    let valid_keys: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let keep_links: HashSet<String> = valid
        .iter()
        .map(|a| host_link_name(&conf.name, &a.container_id, &a.ifname))
        .collect();

    let store = Store::open(&conf.data_dir, &conf.name)?;
    let host = Nl::new()?;
    let links = host.links()?;
    for alloc in store.list()? {
        if valid_keys.contains(&(alloc.container_id.as_str(), alloc.ifname.as_str())) {
            continue;
        }
        let name = host_link_name(&conf.name, &alloc.container_id, &alloc.ifname);
        if let Some(l) = links.iter().find(|l| l.name == name) {
            host.delete(l.index)?;
        }
        if let Some(ip) = alloc.ip {
            store.release(ip)?;
        }
    }
    // Host links with no allocation (say, a crash between creating and recording): only ours,
    // i.e. veths with our prefix on this network's bridge, and only when the bridge is known.
    let bridge = match node::read(&conf.runtime_dir) {
        Ok(NodeState::Ready(net)) => links.iter().find(|l| l.name == net.bridge).map(|l| l.index),
        _ => None,
    };
    if let Some(bridge) = bridge {
        for l in &links {
            let stray = l.name.starts_with(HOST_PREFIX)
                && l.kind == Some(InfoKind::Veth)
                && l.master == Some(bridge)
                && !keep_links.contains(&l.name);
            if stray {
                host.delete(l.index)?;
            }
        }
    }
    Ok(())
}
