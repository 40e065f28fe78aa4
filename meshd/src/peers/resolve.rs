//! The rule that merges static peers, gossip members and this node's own subnet into the
//! peers to route, so that no two routed subnets share an address (the data path's lookup
//! relies on it: no longest-prefix match).
//!
//! 1. Each subnet is checked on its own ([`Guard`]): inside the cluster, of a size gossip
//!    counts, clear of this node's networks and of the underlay endpoints. A failure refuses
//!    it.
//! 2. The rest are settled by overlap, in the order every node computes the same way
//!    ([`Precedence`], the gossip crate's, so this node routes what gossip's settling keeps):
//!    this node's own subnet first; then the narrower subnet, so a static `/17` or an explicit
//!    `/23` never displaces the node subnets inside it; at equal size a static peer's, then an
//!    explicit claim, then a picked one; then the older stamp; then the lower name. A subnet
//!    that overlaps one already kept is refused, naming the winner and why.
//!
//! 3. In cleartext, where a datagram's sender is known by its underlay address alone, of two
//!    kept peers at one address the one with the lower subnet stays (the kernel path's source
//!    check keeps the same one, see `kernel::source_check`) and the other is refused.
//!
//! O(N log N): a sort, and overlap look-ups in ordered ranges.

use ipnet::Ipv4Net;
use meshd_gossip::{Precedence, Ranges};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::claims::{bounds, to_subnet, Guard, Why};
use super::refused::{Refused, Source};
use super::{Member, Peer};

/// Who holds a range already kept.
#[derive(Debug, Clone, Copy)]
enum Holder {
    Own,
    Candidate(usize),
}

struct Candidate<'a> {
    peer: &'a Peer,
    source: Source,
    rank: Precedence<'a>,
}

/// The peers to route (static peers first, then members by name) and those refused.
pub(super) fn settle<'a>(
    statics: &'a [Peer],
    members: &'a BTreeMap<String, Member>,
    own: Option<Ipv4Net>,
    guard: &Guard,
) -> (Vec<&'a Peer>, Vec<Refused>) {
    let mut refused = Vec::new();
    let mut refuse = |p: &Peer, source, why| {
        refused.push(Refused {
            name: p.name.clone(),
            source,
            subnet: p.subnet,
            why,
        })
    };
    let names: HashSet<&str> = statics.iter().map(|p| p.name.as_str()).collect();
    let mut candidates: Vec<Candidate<'a>> = Vec::with_capacity(statics.len() + members.len());
    for p in statics {
        match (guard.check_static(p, statics), to_subnet(p.subnet)) {
            (Err(why), _) => refuse(p, Source::Static, why),
            (Ok(()), Some(s)) => candidates.push(Candidate {
                peer: p,
                source: Source::Static,
                rank: Precedence::reserved(&s, &p.name),
            }),
            (Ok(()), None) => {}
        }
    }
    for m in members.values() {
        let p = &m.peer;
        // Not routable yet (it publishes no endpoint): not a refusal.
        if p.endpoints.is_empty() {
            continue;
        }
        if names.contains(p.name.as_str()) {
            refuse(p, Source::Member, Why::Name);
            continue;
        }
        match (guard.check_member(p, m.claim, statics), to_subnet(p.subnet)) {
            (Err(why), _) => refuse(p, Source::Member, why),
            (Ok(()), Some(subnet)) => {
                let claim = meshd_gossip::SubnetClaim {
                    subnet,
                    stamp: m.claim.stamp,
                    explicit: m.claim.explicit,
                };
                candidates.push(Candidate {
                    peer: p,
                    source: Source::Member,
                    rank: Precedence::claim(&claim, &p.name),
                });
            }
            (Ok(()), None) => {}
        }
    }

    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[a].rank.cmp(&candidates[b].rank));
    let mut taken: Ranges<Holder> = Ranges::default();
    if let Some(own) = own {
        let (first, last) = bounds(&own);
        taken.insert(first, last, Holder::Own);
    }
    let mut kept = vec![false; candidates.len()];
    for i in order {
        let c = &candidates[i];
        let (first, last) = bounds(&c.peer.subnet);
        match taken.find(first, last) {
            None => {
                taken.insert(first, last, Holder::Candidate(i));
                kept[i] = true;
            }
            Some(Holder::Own) => {
                let own = own.unwrap_or(c.peer.subnet);
                refuse(c.peer, c.source, Why::Own { own })
            }
            Some(Holder::Candidate(j)) => {
                let w = &candidates[j];
                let why = Why::Lost {
                    to: w.peer.name.clone(),
                    theirs: w.peer.subnet,
                    settled: w.rank.settled(&c.rank),
                };
                refuse(c.peer, c.source, why)
            }
        }
    }
    if guard.by_address {
        let mut by_subnet: Vec<usize> = (0..candidates.len()).filter(|&i| kept[i]).collect();
        by_subnet.sort_by_key(|&i| candidates[i].peer.subnet);
        let mut at: HashMap<IpAddr, usize> = HashMap::with_capacity(by_subnet.len());
        for i in by_subnet {
            let c = &candidates[i];
            let Some(addr) = c.peer.address() else {
                continue;
            };
            if let Some(&j) = at.get(&addr) {
                kept[i] = false;
                let with = candidates[j].peer.name.clone();
                refuse(c.peer, c.source, Why::SharedAddress { addr, with });
            } else {
                at.insert(addr, i);
            }
        }
    }
    let routed = candidates
        .iter()
        .zip(kept)
        .filter(|(_, k)| *k)
        .map(|(c, _)| c.peer)
        .collect();
    (routed, refused)
}
