//! What `meshd ping` aims at, the path it takes, and why nothing came back: all read off the
//! node's status, so the words are the ones `meshd status` uses.

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use crate::host::gateway;
use crate::paths::clock;
use crate::status::health::{assess, path_code};
use crate::status::{MemberStatus, PeerStatus, Status};

/// A destination and the node that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dst: Ipv4Addr,
    /// The peer or member whose subnet holds `dst`, when one does.
    pub owner: Option<String>,
    /// How the output names it.
    pub what: String,
}

fn net(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

fn owner_of(s: &Status, dst: Ipv4Addr) -> Option<String> {
    let peer = s
        .peers
        .iter()
        .find(|p| net(&p.subnet).is_some_and(|n| n.contains(&dst)));
    let member = || {
        s.members.as_deref().unwrap_or_default().iter().find(|m| {
            m.subnet
                .as_deref()
                .and_then(net)
                .is_some_and(|n| n.contains(&dst))
        })
    };
    peer.map(|p| p.name.clone())
        .or_else(|| member().map(|m| m.name.clone()))
}

/// The node name or pod address `target` as this node `s` would reach it; an error says why
/// it is not meshd's to reach (nothing is sent then).
pub fn resolve(s: &Status, target: &str) -> Result<Target, String> {
    let own = net(&s.subnet);
    if let Ok(dst) = target.parse::<Ipv4Addr>() {
        if let Some(cluster) = s.cluster.as_deref().and_then(net) {
            if !cluster.contains(&dst) {
                return Err(format!(
                    "{dst} is outside the cluster CIDR {cluster}: meshd does not carry it"
                ));
            }
        }
        if let Some(own) = own.filter(|n| n.contains(&dst)) {
            return Err(format!(
                "{dst} is in this node's own subnet {own}: its packets do not cross the overlay"
            ));
        }
        let owner = owner_of(s, dst);
        if s.cluster.is_none() && owner.is_none() {
            return Err(format!("{dst} is in no subnet this node knows"));
        }
        let what = match &owner {
            Some(o) if Some(dst) == bridge_of(s, o) => format!("{o}'s bridge"),
            Some(o) => format!("an address of {o}"),
            None => "no known node".to_owned(),
        };
        return Ok(Target { dst, owner, what });
    }
    if !meshd_gossip::is_valid_name(target) {
        return Err(format!(
            "`{}` is neither an IPv4 address nor a node name",
            target.escape_default()
        ));
    }
    if target == s.node {
        return Err(format!("{target} is this node"));
    }
    let Some(dst) = bridge_of(s, target) else {
        let member = s
            .members
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| m.name == target);
        return Err(if member {
            format!("{target} holds no subnet yet")
        } else {
            format!("no node named {target}: neither a member nor a peer of this node (`meshd status` lists them)")
        });
    };
    Ok(Target {
        dst,
        owner: Some(target.to_owned()),
        what: format!("{target}'s bridge"),
    })
}

/// The bridge address (the subnet's first) of the peer or member called `name`.
fn bridge_of(s: &Status, name: &str) -> Option<Ipv4Addr> {
    let peer = s
        .peers
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.subnet.as_str());
    let member = || {
        s.members
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.subnet.as_deref())
    };
    peer.or_else(member).and_then(net).map(gateway)
}

/// The peer that routes `t` now, if any.
pub fn peer<'a>(s: &'a Status, t: &Target) -> Option<&'a PeerStatus> {
    s.peers
        .iter()
        .find(|p| net(&p.subnet).is_some_and(|n| n.contains(&t.dst)))
}

/// How the output names a peer's path: the kernel's devices by name, the userspace path with
/// its encapsulation (`userspace wireguard`).
pub fn label(s: &Status, p: &PeerStatus) -> String {
    let kind = p.path.as_ref().map_or("userspace", |x| x.path.as_str());
    match path_code(p).as_str() {
        "userspace" if s.encryption.starts_with("wireguard") => "userspace wireguard".into(),
        "userspace" => "userspace vxlan".into(),
        "unknown" => kind.to_owned(),
        known => known.to_owned(),
    }
}

/// Whether the path to `p` goes straight to it. Every path is direct until relaying lands: a
/// relayed path will name its relay (`relayed via pub1`).
pub fn is_direct(p: &PeerStatus) -> bool {
    !p.path
        .as_ref()
        .is_some_and(|x| x.path.starts_with("relayed"))
}

/// The likeliest reason nothing came back from `t`, from the status `s` taken after trying;
/// `size` the probes' size, `since` when the first went out.
pub fn why_silent(s: &Status, t: &Target, size: u16, since: SystemTime) -> String {
    let members = s.members.as_deref().unwrap_or_default();
    let member = |name: &str| members.iter().find(|m| m.name == name);
    if let Some(p) = peer(s, t) {
        let suspect = member(&p.name).is_some_and(|m| m.state == "suspect");
        let a = assess(p, suspect);
        if usize::from(size) > usize::from(p.mtu) && p.mtu > 0 {
            return format!(
                "packets of {size} B are larger than the MTU of {} B towards {}",
                p.mtu, p.name
            );
        }
        if a.health != meshd_gossip::Health::Ok && a.reason != meshd_gossip::Reason::None {
            if let Some(text) = a.text {
                return text;
            }
        }
        return format!(
            "probes at {size} B lost since {} (path {}; {}'s node does not answer)",
            clock(since),
            label(s, p),
            p.name
        );
    }
    if let Some(m) = t.owner.as_deref().and_then(member) {
        return gone(s, m);
    }
    let prefix = net(&s.subnet).map_or(24, |n| n.prefix_len());
    let block = Ipv4Net::new(t.dst, prefix).map(|n| n.trunc().to_string());
    format!(
        "no route: no member owns {}",
        block.unwrap_or_else(|_| t.dst.to_string())
    )
}

/// Why member `m`, which owns the destination, is not routed here.
fn gone(s: &Status, m: &MemberStatus) -> String {
    let at = SystemTime::now()
        .checked_sub(Duration::from_secs(m.since_secs))
        .map(clock)
        .unwrap_or_else(|| "?".into());
    match m.state.as_str() {
        "down" => format!("peer {} down since {at}", m.name),
        "left" => format!("peer {} left at {at}", m.name),
        _ => match s.refused.iter().find(|r| r.name == m.name) {
            Some(r) => format!(
                "no route: {}'s subnet {} is refused here: {}",
                m.name, r.subnet, r.reason
            ),
            None => format!("no route yet: {} is a member but not routed here", m.name),
        },
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
