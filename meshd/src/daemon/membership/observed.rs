//! What members observe, read from their signed path summaries every
//! [`super::summary::PATHS_EVERY`] and as soon as one arrives (`react.rs`; encrypted mode):
//! - **this node's public endpoints.** Where members see this node's authenticated traffic
//!   come from, when that is no endpoint it advertises, is where its NAT maps it: published in
//!   its own record ([`meshd_gossip::NodeRecord::learned`], most reported first), unless
//!   `address` is configured (a configured address wins). The pair with each such member is
//!   behind a NAT: keepalives and one flow ([`crate::link::endpoint`]); so is the pair with
//!   each member that has not reported seeing this node at an address it advertises (the
//!   first keepalive, a handshake, makes the mapping that member's answers need).
//! - **other peers' candidates.** Where a member sees a third node's traffic come from is a
//!   candidate to try for that node, shown as `observed by NODE`, never more.
//!
//! Every report is its member's signed word and is used as such: what one member says of this
//! node decides only what this node advertises (others then try it, and authenticated traffic
//! decides), and what it says of others only adds addresses to try.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::Membership;
use crate::config::Encryption;
use crate::link::endpoint::Seen;
use crate::peers::{Endpoint, EndpointSource};
use crate::routes::RouteTable;

/// Candidates one peer gets from other members' observations, at most.
const MAX_OBSERVED: usize = 2;

impl Membership {
    /// Reads the members' summaries for what they observe of this node and of each other.
    pub(super) fn learn_from_summaries(&self, table: &RouteTable) {
        if self.encryption != Encryption::Wireguard {
            return;
        }
        let me = self.cfg.node_name.as_str();
        let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut seen_by: HashMap<String, Seen> = HashMap::new();
        let mut others: HashMap<String, Vec<Endpoint>> = HashMap::new();
        {
            let mut shared = self.lock();
            let own = shared.gossip.local_record().endpoints.clone();
            let own_gossip = shared.gossip.local_record().gossip_addr;
            for s in shared.gossip.summaries() {
                for r in s.reports {
                    if r.peer == me {
                        let seen = match (r.observed, r.observed_gossip) {
                            (Some(x), _) if !own.contains(&x) => {
                                *counts.entry(x).or_default() += 1;
                                Seen::Elsewhere(x)
                            }
                            (Some(_), _) => Seen::Direct,
                            (None, Some(g)) if g != own_gossip => Seen::Elsewhere(g),
                            (None, _) => Seen::Nothing,
                        };
                        seen_by.insert(s.reporter.to_string(), seen);
                    } else if let Some(x) = r.observed.filter(|_| r.peer != s.reporter) {
                        let list = others.entry(r.peer.clone()).or_default();
                        if list.len() < MAX_OBSERVED && !list.iter().any(|e| e.addr == x) {
                            list.push(Endpoint {
                                addr: x,
                                source: EndpointSource::ObservedBy(Arc::from(s.reporter)),
                            });
                        }
                    }
                }
            }
            if !self.address_configured {
                let mut learned: Vec<(usize, SocketAddr)> =
                    counts.into_iter().map(|(a, n)| (n, a)).collect();
                learned.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                let learned: Vec<SocketAddr> = learned.into_iter().map(|(_, a)| a).collect();
                if shared.gossip.local_record().learned.as_slice()
                    != &learned[..learned.len().min(meshd_gossip::MAX_LEARNED)]
                {
                    tracing::info!(
                        endpoints = ?learned,
                        "other members see this node at these endpoints (a NAT's): advertised"
                    );
                }
                shared.gossip.set_learned(learned);
            }
        }
        // Behind a NAT as some member sees it: presumed so towards those that said nothing.
        let behind = seen_by.values().find_map(|s| match s {
            Seen::Elsewhere(at) => Some(*at),
            _ => None,
        });
        for p in table.peers() {
            let seen = seen_by.get(&p.name).copied().unwrap_or(Seen::Nothing);
            p.ep.set_seen(seen, behind);
            p.set_observed(others.remove(&p.name).unwrap_or_default());
        }
    }
}
