//! Gossip events become peer-set changes: a member's record becomes its peer (every endpoint
//! it publishes, its subnet, its key and secret ids), a member that goes down or leaves is
//! withdrawn, and everything one wake-up brings is applied in one reconcile pass.

use anyhow::Result;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_crypto::{PublicKey, SecretId};
use meshd_gossip::{short_key, Capabilities, Event, NodeRecord, Refusal, Refused};

use super::subnet::to_net;
use super::Membership;
use crate::config::Encryption;
use crate::peers::{Claim, Endpoint, EndpointSource, Peer, PeerKey};

impl Membership {
    /// Handles every event gossip has queued. Peer-set changes are gathered and applied in one
    /// reconcile pass (a burst of members joining costs one pass, not one each).
    pub(super) async fn handle_events(&mut self) -> Result<()> {
        let mut batch: Vec<Change> = Vec::new();
        loop {
            let Some(event) = self.lock().gossip.poll_event() else {
                if self.apply(&mut batch) {
                    // New peers, candidates or public endpoints: relays and punches react.
                    self.react.soon();
                }
                return Ok(());
            };
            match event {
                Event::MemberUp(r) => {
                    tracing::info!(member = %r.name, subnet = %claim_text(&r), "member up");
                    batch.push(self.change(&r, false));
                }
                // A live member's record again: gossip hands a record on more than once, so this
                // is news only when the peer changed (its subnet arrived, say).
                Event::MemberUpdated(r) => batch.push(self.change(&r, true)),
                Event::MemberDown(name) => {
                    tracing::warn!(member = %name, "member down: withdrawing its routes");
                    self.rechoose_relays();
                    batch.push(Change::Remove(name));
                }
                Event::MemberLeft(name) => {
                    tracing::info!(member = %name, "member left: withdrawing its routes");
                    batch.push(Change::Remove(name));
                }
                Event::SubnetAssigned(lease) => {
                    if self.apply(&mut batch) {
                        self.react.soon();
                    }
                    self.assigned(lease).await?
                }
                Event::MemberSuspect(name) => {
                    tracing::info!(member = %name, "member suspect");
                    self.rechoose_relays();
                }
                Event::MemberAlive(name) => {
                    tracing::info!(member = %name, "member alive again");
                    self.rechoose_relays();
                }
                Event::MemberHeld(name) => tracing::info!(
                    member = %name,
                    "gossip has this member down but its traffic arrived moments ago: keeping its routes"
                ),
                Event::SubnetConflict(c) => super::subnet::log_conflict(&c),
                Event::SubnetExhausted => {
                    tracing::error!("no free subnet left in the cluster CIDR")
                }
                Event::RecordRefused(r) => self.log_refusal(r),
                Event::KeyForgotten { name, by } => tracing::warn!(
                    member = %name, by = %by,
                    "a member asked to forget the signing key this name is bound to (meshd forget): it binds to a new key unless its owner keeps it"
                ),
                Event::OwnKeyForgotten { by } => tracing::error!(
                    by = %by,
                    "a member asked the cluster to forget this node's signing key: re-announced, so this node keeps its name; unless this name was reinstalled on another host, find out why `by` did that"
                ),
            }
        }
    }

    /// Logs a refused record at warn, once a minute per name and reason (a flood is counted in
    /// the status, not logged line by line).
    fn log_refusal(&mut self, r: Refusal) {
        let now = Instant::now();
        let key = (r.name.clone(), r.why);
        if self
            .refusals_logged
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        if self.refusals_logged.len() >= MAX_REFUSALS_LOGGED {
            self.refusals_logged
                .retain(|_, t| now.duration_since(*t) < REFUSAL_LOG_EVERY);
        }
        if self.refusals_logged.len() < MAX_REFUSALS_LOGGED {
            self.refusals_logged.insert(key, now);
        }
        let from = r.from.map_or_else(|| "-".into(), |a| a.to_string());
        let key = r.key.map_or_else(|| "none".into(), |k| short_key(&k));
        let why = r.why.as_str();
        match r.why {
            Refused::Impostor | Refused::Unsigned => tracing::warn!(
                member = %r.name, %from, %key, reason = why,
                "refused a gossip record under a name bound to another signing key: a member speaks for another, or that node lost its state directory (then run `meshd forget NAME` on one node)"
            ),
            _ => {
                tracing::warn!(member = %r.name, %from, %key, reason = why, "refused a gossip record")
            }
        }
    }

    /// What a member's record asks of the peer set: its peer, or its withdrawal when it
    /// publishes no endpoint or subnet (yet). `updated`: log it only if it changes anything.
    fn change(&self, r: &NodeRecord, updated: bool) -> Change {
        // Where it says it listens, then where others see it from (behind a NAT).
        let canonical = |e: &SocketAddr| SocketAddr::new(e.ip().to_canonical(), e.port());
        let mut endpoints: Vec<Endpoint> = r
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: canonical(e),
                source: EndpointSource::Gossiped,
            })
            .collect();
        for e in r.learned.iter().map(canonical) {
            if !endpoints.iter().any(|x| x.addr == e) {
                endpoints.push(Endpoint {
                    addr: e,
                    source: EndpointSource::Learned,
                });
            }
        }
        let subnet = r.subnet.and_then(|c| to_net(c.subnet));
        // How it holds the subnet: the peer set checks the claim and settles overlaps by it.
        let claim = r.subnet.map_or(Claim::default(), |c| Claim {
            explicit: c.explicit,
            stamp: c.stamp,
        });
        let (false, Some(subnet)) = (endpoints.is_empty(), subnet) else {
            return Change::Remove(r.name.clone());
        };
        let key = match self.encryption {
            Encryption::Wireguard => Some(PeerKey {
                public: PublicKey::from_bytes(r.public_key),
                // An older node publishes none: the pair then uses our primary secret.
                secret_ids: Some(r.secret_ids.iter().map(|id| SecretId(*id)).collect()),
            }),
            Encryption::None => None,
        };
        let peer = Peer {
            name: r.name.clone(),
            endpoints,
            subnet,
            key,
            kernel_vxlan: r.capabilities.has(Capabilities::KERNEL_VXLAN),
        };
        Change::Upsert {
            peer,
            claim,
            updated,
        }
    }

    /// Applies the gathered changes in one reconcile pass; true when the peer set changed.
    fn apply(&self, batch: &mut Vec<Change>) -> bool {
        if batch.is_empty() {
            return false;
        }
        let mut any = false;
        self.backend.update(|set| {
            let mut changed = false;
            for c in batch.drain(..) {
                match c {
                    Change::Upsert {
                        peer,
                        claim,
                        updated,
                    } => {
                        let (name, subnet) = (peer.name.clone(), peer.subnet);
                        let did = set.upsert_claimed(peer, claim);
                        if updated && did {
                            tracing::info!(member = %name, %subnet, "member changed");
                        } else if updated {
                            tracing::debug!(member = %name, "member record unchanged");
                        }
                        changed |= did;
                    }
                    Change::Remove(name) => changed |= set.remove_member(&name),
                }
            }
            any = changed;
            changed
        });
        any
    }
}

/// A refusal of one name, for one reason, is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Names whose refusals are remembered for that; past it, refusals of new names go unlogged
/// until the oldest expire (they are all counted in the status).
const MAX_REFUSALS_LOGGED: usize = 1024;

/// A change of the peer set that a gossip event asks for.
enum Change {
    Upsert {
        peer: Peer,
        claim: Claim,
        updated: bool,
    },
    Remove(String),
}

/// A member's subnet claim as the logs print it.
fn claim_text(r: &NodeRecord) -> String {
    r.subnet
        .map_or_else(|| "none yet".into(), |c| c.subnet.to_string())
}
