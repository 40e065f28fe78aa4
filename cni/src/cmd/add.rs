//! ADD: a veth pair from the node bridge into the pod, an address, a default route.
//!
//! Order matters for rollback: allocate the address, create the veth pair (one atomic netlink
//! request that also places the peer in the pod), attach the host end, configure the pod end.
//! If anything after the allocation fails, [`Undo`] deletes the host end (which takes the peer
//! with it) and releases the address, so a failed ADD leaves nothing behind.
//!
//! A pod that already has a default route (a second interface, or meshd-cni as a secondary
//! network behind another plugin) keeps it: the new interface gets its address and the subnet's
//! connected route only, and the result reports no route, because none was installed.

use std::net::Ipv4Addr;

use serde_json::Value;

use super::{host_link_alias, host_link_name};
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{Error, Result};
use crate::ipam::{Allocation, Store};
use crate::link::{Link, Nl};
use crate::netns::Netns;
use crate::node::{self, NodeNetwork};
use crate::result::{CniResult, Interface, IpConfig, Route};

pub(super) fn add(env: &Env, conf: &NetConf) -> Result<Value> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_prev)
        .transpose()?;
    let net = node::require_ready(&conf.runtime_dir)?;
    let ns = Netns::open(netns_path)?;
    let host = Nl::new()?;
    let bridge = host
        .link(&net.bridge)?
        .ok_or_else(|| Error::TryAgainLater(format!("bridge {} does not exist yet", net.bridge)))?;
    let host_name = host_link_name(&conf.name, container_id, ifname);

    let store = Store::open(&conf.data_dir)?;
    if let Some(held) = store.find(&conf.name, container_id, ifname)? {
        return Err(Error::AlreadyAttached(format!(
            "{container_id}/{ifname} already holds {} in network {}",
            held.ip, conf.name
        )));
    }
    if host.link(&host_name)?.is_some() {
        return Err(Error::AlreadyAttached(format!(
            "host link {host_name} for {container_id}/{ifname} already exists"
        )));
    }
    let alloc = store.allocate(net.subnet, net.gateway, &conf.name, container_id, ifname)?;
    let ip = alloc.ip;
    let mut undo = Undo {
        store: &store,
        host: &host,
        alloc,
        host_link: None,
    };
    let ends = Ends {
        host_name: &host_name,
        alias: host_link_alias(&conf.name),
        ifname,
        ip,
    };
    let wired = wire(&host, &ns, &net, bridge.index, &ends, &mut undo);
    let (host_link, pod_link, default_route) = match wired {
        Ok(links) => links,
        Err(e) => {
            undo.run();
            return Err(e);
        }
    };

    let gateway = net.gateway.to_string();
    let ours = CniResult {
        interfaces: vec![
            Interface {
                name: host_link.name,
                mac: host_link.mac,
                ..Default::default()
            },
            Interface {
                name: pod_link.name,
                mac: pod_link.mac,
                mtu: pod_link.mtu,
                sandbox: Some(ns.path().to_owned()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: format!("{ip}/{}", net.subnet.prefix_len()),
            gateway: Some(gateway.clone()),
            interface: Some(1),
            ..Default::default()
        }],
        routes: default_route
            .then(|| Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(gateway),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        dns: conf.dns.clone(),
    };
    let result = match prev {
        Some(mut prev) => {
            prev.append(ours);
            prev
        }
        None => ours,
    };
    Ok(result.to_json(conf.version))
}

/// The two ends of one attachment, by name.
struct Ends<'a> {
    host_name: &'a str,
    alias: Option<String>,
    ifname: &'a str,
    ip: Ipv4Addr,
}

/// Creates and configures both ends; records in `undo` what exists so far. Returns the host
/// and pod links, and whether the pod's default route is ours.
fn wire(
    host: &Nl,
    ns: &Netns,
    net: &NodeNetwork,
    bridge_index: u32,
    ends: &Ends<'_>,
    undo: &mut Undo<'_>,
) -> Result<(Link, Link, bool)> {
    let Ends {
        host_name,
        ifname,
        ip,
        ..
    } = *ends;
    host.create_veth(host_name, ifname, ns.raw_fd(), net.mtu)?;
    undo.host_link = Some(host_name.to_owned());
    let host_link = host
        .link(host_name)?
        .ok_or_else(|| Error::vanished(format!("veth {host_name} after creating it")))?;
    host.enslave_up(host_link.index, bridge_index, ends.alias.as_deref())?;
    let prefix = net.subnet.prefix_len();
    let gateway = net.gateway;
    let (pod_link, default_route) = ns.run(|| {
        let nl = Nl::new()?;
        let link = nl.link(ifname)?.ok_or_else(|| {
            Error::vanished(format!("{ifname} in the pod namespace after creating it"))
        })?;
        nl.add_address(link.index, ip, prefix)?;
        nl.set_up(link.index)?;
        // A second attachment in the same pod keeps the first one's default route.
        let ours = nl.default_routes()?.is_empty();
        if ours {
            nl.add_default_route(gateway, link.index)?;
        }
        Ok((link, ours))
    })?;
    Ok((host_link, pod_link, default_route))
}

/// What a failed ADD must take back.
struct Undo<'a> {
    store: &'a Store,
    host: &'a Nl,
    alloc: Allocation,
    host_link: Option<String>,
}

impl Undo<'_> {
    /// Best effort: report but do not stop on a failing step, so every step is tried.
    fn run(self) {
        if let Some(name) = &self.host_link {
            match self.host.link(name) {
                Ok(Some(l)) => {
                    if let Err(e) = self.host.delete(l.index) {
                        eprintln!("meshd-cni: rollback: deleting {name}: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => eprintln!("meshd-cni: rollback: looking up {name}: {e}"),
            }
        }
        if let Err(e) = self.store.release(&self.alloc) {
            eprintln!("meshd-cni: rollback: releasing {}: {e}", self.alloc.ip);
        }
    }
}
