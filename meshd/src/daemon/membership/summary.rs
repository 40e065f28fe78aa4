//! This node's path summary, made from its links every [`PATHS_EVERY`] (and whenever the
//! driver reacts to a change, `react.rs`) and handed to gossip
//! (which publishes a new version only on a change, within its rate: `meshd_gossip::summary`),
//! and the members' summaries this node holds, for the picture, `meshd status --all` and the
//! control socket.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use meshd_gossip::{Gossip, MemberState, PathReport, Route};

use super::{Membership, Shared};
use crate::daemon::report::peer_status;
use crate::status::health::{assess, path_code, rtt};
use crate::status::{PeerStatus, SummaryStatus};

/// How often this node's reports are gathered: cheap (one pass over the links), and what
/// changed reaches gossip within this; gossip decides whether it is news.
pub(super) const PATHS_EVERY: Duration = Duration::from_secs(2);

impl Membership {
    /// Hands gossip this node's path to each of its peers as of now.
    pub(super) fn publish_paths(&self) {
        let table = self.backend.routes().load();
        let now = Instant::now();
        let keepalive = self.cfg.nat_keepalive();
        let peers: Vec<PeerStatus> = table
            .peers()
            .iter()
            .map(|p| peer_status(p, now, keepalive))
            .collect();
        {
            let mut shared = self.lock();
            if self.encryption == crate::config::Encryption::Wireguard {
                // A relay by default while behind no NAT (no member sees it elsewhere).
                let public = shared.gossip.local_record().learned.is_empty();
                let on = self.cfg.relay.unwrap_or(public);
                let behind: HashMap<&str, IpAddr> = (table.peers().iter())
                    .filter(|p| on && p.ep.nat() & crate::link::endpoint::PEER_NAT != 0)
                    .map(|p| (p.name.as_str(), p.endpoint().ip()))
                    .collect();
                let direct = direct_pairs(&shared.gossip, &behind);
                let known = |a: &str, b: &str| direct.contains(&(a.min(b), a.max(b)));
                shared
                    .relay
                    .update(&table, on, self.cfg.bind_address(), known);
                crate::relay::choose::choose(&shared.gossip, &table, &self.cfg.node_name);
            }
            let reports = reports(&peers, &shared.gossip, &shared.relay);
            shared.gossip.set_paths(reports, now);
        }
        self.learn_from_summaries(&table);
    }
}

impl Membership {
    /// Each pair's relay chosen again now (a member's state changed: a relay in use may have
    /// died), not at the next tick: the sides move to the next relay within the suspicion.
    pub(super) fn rechoose_relays(&self) {
        if self.encryption != crate::config::Encryption::Wireguard {
            return;
        }
        let table = self.backend.routes().load();
        let shared = self.lock();
        crate::relay::choose::choose(&shared.gossip, &table, &self.cfg.node_name);
    }
}

/// What this node says of each peer in its summary.
pub(crate) fn reports(
    peers: &[PeerStatus],
    gossip: &Gossip,
    relay: &crate::relay::Relay,
) -> Vec<PathReport> {
    peers
        .iter()
        .map(|p| {
            let suspect = gossip
                .member(&p.name)
                .is_some_and(|m| m.state == MemberState::Suspect);
            let a = assess(p, suspect);
            PathReport {
                peer: p.name.clone(),
                path: path_code(p),
                route: if p
                    .reach
                    .as_ref()
                    .is_some_and(|r| r.route.starts_with("relayed"))
                {
                    Route::Relayed
                } else {
                    Route::Direct
                },
                health: a.health,
                reason: a.reason,
                rtt: rtt(p),
                mtu: p.mtu,
                observed: observed(p),
                observed_gossip: gossip.observed_gossip(&p.name),
                relays: relay.offers(&p.name),
            }
        })
        .collect()
}

/// The pairs of `behind` (names in order, each with its NAT's address as this node sees it) a
/// side reports a working direct path for in its summary: the peer's authenticated traffic
/// observed lately from that very address (not from a relay's port). A relay keeps no port for
/// them. Only pairs of peers behind NATs count (the relay's candidates), so a cluster of public
/// nodes costs one look per summary.
fn direct_pairs<'a>(
    gossip: &'a Gossip,
    behind: &HashMap<&str, IpAddr>,
) -> HashSet<(&'a str, &'a str)> {
    let mut out = HashSet::new();
    for s in gossip
        .summaries()
        .filter(|s| behind.contains_key(s.reporter))
    {
        for r in s.reports {
            let Some(at) = behind.get(r.peer.as_str()) else {
                continue;
            };
            let direct = matches!(r.route, Route::Direct | Route::Punched);
            if direct && r.observed.is_some_and(|o| o.ip() == *at) {
                let (a, b) = (s.reporter, r.peer.as_str());
                out.insert((a.min(b), a.max(b)));
            }
        }
    }
    out
}

/// Where `p`'s authenticated traffic comes from, if its endpoint in use authenticated
/// something lately and is not a relay's port: what this node reports as observed.
fn observed(p: &PeerStatus) -> Option<std::net::SocketAddr> {
    let r = p
        .reach
        .as_ref()
        .filter(|r| !r.route.starts_with("relayed"))?;
    r.heard_secs
        .filter(|s| *s < crate::link::endpoint::WORKING.as_secs_f64())?;
    r.endpoint.parse().ok()
}

/// The members' summaries this node holds, each its reporter's word.
pub(crate) fn held(shared: &Shared) -> Vec<SummaryStatus> {
    let now = Instant::now();
    let mut out: Vec<SummaryStatus> = shared
        .gossip
        .summaries()
        .map(|s| SummaryStatus::of(&s, now))
        .collect();
    out.sort_by(|a, b| a.reporter.cmp(&b.reporter));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::mesh::tests::named;
    use meshd_gossip::{Health, PathCode, Reason};

    #[test]
    fn reports_name_each_peer_its_path_and_health() {
        let g = Gossip::new(
            meshd_gossip::Config::default(),
            meshd_gossip::sim::Sim::local_node(0, meshd_gossip::SubnetRequest::Auto),
            1,
            Instant::now(),
        )
        .unwrap();
        let mut b = named("b", "userspace");
        b.wireguard = Some(crate::status::WireguardStatus {
            psk_agreed: true,
            last_handshake_secs: Some(3.0),
            handshake_rtt_ms: Some(2),
            ..Default::default()
        });
        let r = reports(
            &[named("a", "kernel-vxlan"), b],
            &g,
            &crate::relay::Relay::default(),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].path, r[0].health, r[0].reason, r[0].rtt, r[0].mtu),
            (PathCode::KernelVxlan, Health::Ok, Reason::None, None, 1450)
        );
        assert_eq!(r[1].rtt, Some(Duration::from_millis(2)));
        assert_eq!(r[1].path, PathCode::Userspace);
    }
}
