//! The reconcile step's registry of links: one [`PeerLink`] per peer, created, updated in place
//! and retired by [`Links::reconcile`], by diff. A pass is O(N) with hashed lookups, and a peer
//! whose record and keyring epoch did not change costs one comparison: no key derivation, no
//! allocation beyond the list handed on.
//!
//! What changes in place: a new endpoint moves the endpoint in use, unless authenticated
//! traffic holds the one in use (`endpoint.rs`); a new public key gives the
//! link a new session; new secret ids (or new cluster secrets) move the session to the pair key
//! they give, without losing traffic; a new subnet is handed on in the next snapshot. Counters,
//! the endpoint and the path manager's state stay with the link.
//!
//! A peer that leaves and comes back within [`SESSION_GRACE`] gets its WireGuard session back,
//! index and keys included: a member that one node briefly held down (a one-sided gossip flap)
//! kept sending on that session all along, and would otherwise be refused (`unknown-index`)
//! until its own timers gave up on it, 15 s later. A handshake starts at once all the same, in
//! case the peer restarted meanwhile: the old session carries traffic until it completes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_crypto::{PairKey, PublicKey};

use super::{Local, PeerLink};
use crate::peers::wireguard::{NodeCrypto, WgPeer};
use crate::peers::Peer;
use crate::stats::Stamp;

/// How long a removed peer's session is kept for its return: WireGuard's reject-after-time,
/// past which its keys are refused anyway.
pub(crate) const SESSION_GRACE: Duration = Duration::from_secs(180);
/// Removed peers' sessions kept at most (the oldest goes first): a bound on memory for a
/// cluster that loses many members at once, not a number a flap should reach.
pub(crate) const SESSION_GRACE_MAX: usize = 256;

/// Every peer's link, and the sessions of peers that left recently.
pub struct Links {
    local: Local,
    crypto: Option<Arc<NodeCrypto>>,
    mtu: u16,
    live: HashMap<String, Arc<PeerLink>>,
    /// Sessions of removed peers, with when they were removed.
    retired: HashMap<PublicKey, (Arc<WgPeer>, Instant)>,
}

/// What one pass made of the peer set.
pub struct Pass {
    /// A link per peer, in the peer set's order.
    pub links: Vec<Arc<PeerLink>>,
    /// Whether any link came, went or changed (the snapshot needs rebuilding).
    pub(crate) changed: bool,
}

impl Links {
    /// Links whose VXLAN headers come from `local`; with `crypto`, every peer with a key gets a
    /// WireGuard session; `mtu` is every link's MTU until path-MTU discovery sets its own.
    pub fn new(local: Local, crypto: Option<Arc<NodeCrypto>>, mtu: u16) -> Self {
        Links {
            local,
            crypto,
            mtu,
            live: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn crypto(&self) -> Option<&Arc<NodeCrypto>> {
        self.crypto.as_ref()
    }

    /// Brings the links in step with `peers`, under the cluster secrets of `keyring_epoch`.
    pub fn reconcile<'p>(
        &mut self,
        peers: impl IntoIterator<Item = &'p Peer>,
        keyring_epoch: u64,
    ) -> Pass {
        let peers: Vec<&Peer> = peers.into_iter().collect();
        self.reconcile_at(&peers, keyring_epoch, Instant::now(), Stamp::now())
    }

    pub(crate) fn reconcile_at(
        &mut self,
        peers: &[&Peer],
        epoch: u64,
        now: Instant,
        stamp: Stamp,
    ) -> Pass {
        let mut changed = false;
        // Names are unique in a resolved peer set: if every live link is among the peers,
        // none went, and no set of names is needed.
        let kept = peers
            .iter()
            .filter(|p| self.live.contains_key(&p.name))
            .count();
        let gone: Vec<String> = if kept == self.live.len() {
            Vec::new()
        } else {
            let wanted: HashSet<&str> = peers.iter().map(|p| p.name.as_str()).collect();
            self.live
                .keys()
                .filter(|n| !wanted.contains(n.as_str()))
                .cloned()
                .collect()
        };
        for name in gone {
            if let Some(link) = self.live.remove(&name) {
                changed = true;
                if let Some(w) = link.applied().wg.take() {
                    self.retired.insert(w.key, (w, now));
                }
            }
        }
        self.expire(now);
        let mut links = Vec::with_capacity(peers.len());
        for &p in peers {
            let link = match self.live.get(&p.name).cloned() {
                Some(link) => {
                    changed |= self.update(&link, p, epoch, now, stamp);
                    link
                }
                None => {
                    changed = true;
                    let wg = self.session(p, None, now, stamp);
                    let link = Arc::new(PeerLink::new(&self.local, p.clone(), wg, self.mtu, epoch));
                    self.live.insert(p.name.clone(), link.clone());
                    link
                }
            };
            links.push(link);
        }
        Pass { links, changed }
    }

    /// Updates `link` in place to `p`; true when anything changed.
    fn update(
        &mut self,
        link: &PeerLink,
        p: &Peer,
        epoch: u64,
        now: Instant,
        stamp: Stamp,
    ) -> bool {
        let mut a = link.applied();
        if a.peer == *p && a.keyring_epoch == epoch {
            return false;
        }
        let old_key = a.peer.key.as_ref().map(|k| k.public);
        let new_key = p.key.as_ref().map(|k| k.public);
        if old_key != new_key {
            let old = a.wg.take();
            a.wg = self.session(p, old, now, stamp);
        } else if let (Some(w), Some(k), Some(c)) = (&a.wg, &p.key, &self.crypto) {
            if a.peer.key != p.key || a.keyring_epoch != epoch {
                rekey(&p.name, w, c.pair_key(&k.public, k.secret_ids.as_deref()));
            }
        }
        // The record's best candidate, unless authenticated traffic holds the endpoint in use.
        if let Some(e) = p.endpoints.first() {
            link.ep.pick(e, stamp);
        }
        a.peer = p.clone();
        a.keyring_epoch = epoch;
        true
    }

    /// The session for `p`: none without a key (or crypto); a retired one it left within the
    /// grace; else a new one. `replaced` (a session under a key the peer no longer has) retires.
    fn session(
        &mut self,
        p: &Peer,
        replaced: Option<Arc<WgPeer>>,
        now: Instant,
        stamp: Stamp,
    ) -> Option<Arc<WgPeer>> {
        if let Some(w) = replaced {
            self.retired.insert(w.key, (w, now));
        }
        let (c, k) = (self.crypto.as_ref()?, p.key.as_ref()?);
        let pair = c.pair_key(&k.public, k.secret_ids.as_deref());
        let w = match self.retired.remove(&k.public) {
            Some((w, since)) => {
                tracing::debug!(
                    peer = %p.name, away_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "peer is back: its WireGuard session resumes"
                );
                rekey(&p.name, &w, pair);
                // It may have restarted meanwhile and lost its end of the session: a handshake
                // now costs nothing if not, and saves waiting to be told.
                w.want_handshake();
                w
            }
            None => match c.new_peer(&p.name, k.public, k.secret_ids.as_deref()) {
                Ok(w) => {
                    warn_if_no_common_secret(&p.name, &w.pair());
                    w
                }
                Err(e) => {
                    tracing::warn!(peer = %p.name, error = %e, "cannot create a WireGuard session");
                    return None;
                }
            },
        };
        if c.rejected.take(&k.public, stamp) {
            tracing::debug!(peer = %p.name, "we refused this peer's handshake moments ago: starting one");
            w.want_handshake();
        }
        Some(w)
    }

    /// Forgets retired sessions past their grace, and the oldest beyond the bound.
    fn expire(&mut self, now: Instant) {
        self.retired
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < SESSION_GRACE);
        while self.retired.len() > SESSION_GRACE_MAX {
            let oldest = self
                .retired
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.retired.remove(&k),
                None => break,
            };
        }
    }
}

/// Moves a kept session to the pair key the secrets give now (logged when it changes).
fn rekey(peer: &str, w: &WgPeer, pair: PairKey) {
    let before = w.pair();
    if w.set_pair(pair) {
        tracing::info!(
            peer, from = %before.secret, to = %pair.secret,
            "WireGuard preshared key changes with the shared cluster secret; the current session carries traffic until the new handshake completes"
        );
    }
    if before.agreed {
        warn_if_no_common_secret(peer, &pair);
    }
}

/// Logs, at error, a peer that holds none of our cluster secrets.
fn warn_if_no_common_secret(peer: &str, pair: &PairKey) {
    if !pair.agreed {
        tracing::error!(
            peer,
            "no cluster secret in common with this peer: handshakes with it will fail (was a rotation step skipped?)"
        );
    }
}

#[cfg(test)]
mod tests;
