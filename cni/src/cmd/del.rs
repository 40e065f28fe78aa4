//! DEL and GC: taking attachments apart.
//!
//! DEL never needs meshd: it works from our own state and the deterministic host link name, so
//! it succeeds with meshd stopped, with the pod's namespace gone or given as an empty string,
//! and when called twice; it creates no state of its own.
//!
//! GC reclaims only what its own network holds: records are keyed by network name, and host
//! veths carry their network in their alias, so GC of one network never touches another's pods
//! on the same bridge. With `cni.dev/valid-attachments` it releases every attachment of the
//! network not in the list. Without the list (libcni's `cnitool gc` sends none: it DELs each
//! attachment in its own cache first, then calls GC) it releases only attachments that are dead
//! whoever made them, see [`gc`].

use std::collections::HashSet;
use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;

use super::{host_link_alias, host_link_name, HOST_PREFIX};
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
    let store = Store::open_existing(&conf.data_dir, &conf.name)?;
    let host = Nl::new()?;
    let host_name = host_link_name(&conf.name, container_id, ifname);
    // Deleting the host end deletes the pod end with it, wherever that is.
    if let Some(link) = host.link(&host_name)? {
        host.delete(link.index)?;
    }
    let Some(store) = store else {
        return Ok(());
    };
    if let Some(alloc) = store.find(&conf.name, container_id, ifname)? {
        if let Some(ns) = netns.map(Netns::open_if_exists).transpose()?.flatten() {
            remove_pod_end(&ns, ifname, alloc.ip)?;
        }
        store.release(&alloc)?;
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

/// GC of this network.
///
/// With `cni.dev/valid-attachments`: every record of this network not in the list is released
/// and its host veth deleted, and so is any veth whose alias names this network and that is not
/// in the list (say, one whose record was lost).
///
/// Without it (or with `null`), only attachments of this network whose host veth is gone are
/// released, and no link is touched. Releasing everything instead would be wrong whenever more
/// than one runtime uses the network on this node (containerd and podman, or `cnitool` beside
/// a kubelet): a runtime's GC speaks only for its own attachments, and one that sends no list
/// cannot speak for the others'. A record without its veth is dead whoever made it: the veth
/// pair dies with the pod's namespace, and ADD holds the store lock from allocating until its
/// veth exists, so no ADD in progress looks dead. Such records are taken only from the node's
/// current subnet, so a data directory shared by mistake between two nodes' namespaces (each
/// sees only its own veths) cannot lose the other node's records.
pub(super) fn gc(conf: &NetConf) -> Result<()> {
    conf.version
        .require("GC", conf.version.has_gc_and_status(), "1.1.0")?;
    let store = Store::open_existing(&conf.data_dir, &conf.name)?;
    let host = Nl::new()?;
    let links = host.links()?;
    let link = |name: &str| links.iter().find(|l| l.name == name);
    let mut errors = Vec::new();

    match &conf.valid_attachments {
        Some(valid) => {
            let valid: HashSet<(&str, &str)> = valid
                .iter()
                .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
                .collect();
            let keep: HashSet<String> = valid
                .iter()
                .map(|(cid, ifname)| host_link_name(&conf.name, cid, ifname))
                .collect();
            if let Some(store) = &store {
                for alloc in store.list()?.into_iter().filter(|a| a.network == conf.name) {
                    if valid.contains(&(alloc.container_id.as_str(), alloc.ifname.as_str())) {
                        continue;
                    }
                    let name = host_link_name(&conf.name, &alloc.container_id, &alloc.ifname);
                    if let Some(l) = link(&name) {
                        note(&mut errors, host.delete(l.index));
                    }
                    note(&mut errors, store.release(&alloc));
                }
            }
            let alias = host_link_alias(&conf.name);
            for l in &links {
                let stray = alias.is_some()
                    && l.alias == alias
                    && l.name.starts_with(HOST_PREFIX)
                    && l.kind == Some(InfoKind::Veth)
                    && !keep.contains(&l.name);
                if stray {
                    note(&mut errors, host.delete(l.index));
                }
            }
        }
        None => {
            let subnet = match node::read(&conf.runtime_dir) {
                Ok(NodeState::Ready(net)) => Some(net.subnet),
                _ => None,
            };
            if let (Some(store), Some(subnet)) = (&store, subnet) {
                for alloc in store.list()?.into_iter().filter(|a| a.network == conf.name) {
                    let name = host_link_name(&conf.name, &alloc.container_id, &alloc.ifname);
                    if subnet.contains(&alloc.ip) && link(&name).is_none() {
                        note(&mut errors, store.release(&alloc));
                    }
                }
            }
        }
    }
    // The spec asks GC to go on past a failure and report what failed at the end.
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Io {
            what: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            source: std::io::Error::other(format!("{} GC steps failed", errors.len())),
        }),
    }
}

fn note(errors: &mut Vec<Error>, r: Result<()>) {
    if let Err(e) = r {
        errors.push(e);
    }
}
