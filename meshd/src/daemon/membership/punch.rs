//! Hole punching's schedule (encrypted mode, every [`super::EVIDENCE_EVERY`] and whenever the
//! driver reacts to a change, `react.rs`): which pairs need it (both ends behind NAT, no
//! working direct endpoint: relayed or nothing), which cannot have it (a NAT that maps
//! each destination anew), the requests this node publishes in its signed record, and those
//! members publish naming this node ([`crate::link::punch`]). The bursts themselves are the
//! WireGuard control thread's (`datapath/wireguard/punch.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use meshd_gossip::{MemberState, PunchRequest, MAX_PUNCH};

use super::Membership;
use crate::config::Encryption;
use crate::link::punch::{now_ms, Mode};
use crate::routes::RouteTable;
use crate::stats::Stamp;
use crate::status::reach::maps_per_destination;

impl Membership {
    /// One step of every peer's punch schedule, and this node's requests published.
    pub(super) fn punch(&self, table: &RouteTable) {
        if self.encryption != Encryption::Wireguard || !self.cfg.wireguard.hole_punching {
            return;
        }
        let (now, stamp) = (now_ms(), Stamp::now());
        let me = self.cfg.node_name.as_str();
        let mut shared = self.lock();
        let own = shared.gossip.local_record().learned.clone();
        let asks: HashMap<String, u64> = shared
            .gossip
            .members()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .flat_map(|m| {
                m.record
                    .punch
                    .iter()
                    .filter(|r| r.peer == me)
                    .map(|r| (m.record.name.clone(), r.at_ms))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut requests = Vec::new();
        for p in table.peers() {
            let public = p.public_candidates();
            let mut st = p.punch.lock();
            // Relayed is working, but not direct: punching goes on (a pair starts relayed).
            if p.ep.working(stamp) && !p.ep.relayed() {
                let ep = p.endpoint();
                // Its NAT's address, at whatever port it mapped for this pair.
                st.reached(ep, public.iter().any(|a| a.ip() == ep.ip()), now);
                continue;
            }
            st.set_mode(mode(&p.name, &own, &public));
            st.endpoints_are(fingerprint(&own, &public));
            if let Some(&at) = asks.get(&p.name) {
                if st.requested(at, now) {
                    tracing::debug!(peer = %p.name, at, "hole punch asked by the peer: burst armed");
                }
            }
            if st.attempt_if_due(now) {
                tracing::debug!(peer = %p.name, attempt = st.attempts, "hole punch: asking the peer");
            }
            if let Some(at) = st.request_ms.filter(|_| st.mode != Mode::Idle) {
                requests.push(PunchRequest {
                    peer: p.name.clone(),
                    at_ms: at,
                });
            }
        }
        // The newest requests first: they are the ones still to come.
        requests.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        requests.truncate(MAX_PUNCH);
        if !shared.gossip.set_punch(requests) {
            tracing::debug!("hole punch requests do not fit this node's record");
        }
    }
}

/// What the pair is to hole punching: `own` and `public` are this node's and the peer's
/// public endpoints (empty: not behind a NAT).
fn mode(peer: &str, own: &[SocketAddr], public: &[SocketAddr]) -> Mode {
    if own.is_empty() || public.is_empty() {
        return Mode::Idle;
    }
    match (maps_per_destination(own), maps_per_destination(public)) {
        (false, false) => Mode::Trying,
        (true, true) => Mode::NotPunchable("both NATs map each destination anew".into()),
        (true, false) => Mode::NotPunchable(
            "this node's NAT maps each destination anew: the peer cannot know the port to send to"
                .into(),
        ),
        (false, true) => Mode::NotPunchable(format!(
            "{peer}'s NAT maps each destination anew: this node cannot know the port to send to"
        )),
    }
}

fn fingerprint(own: &[SocketAddr], public: &[SocketAddr]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (own, public).hash(&mut h);
    h.finish()
}
