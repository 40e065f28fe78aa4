//! The WireGuard half of the peer set: the node's keys and cluster secrets ([`NodeCrypto`]), one
//! [`WgPeer`] per peer key, and the registry ([`Sessions`]) that keeps a peer's session across
//! peer-set changes and moves it to a new preshared key when the secrets the pair shares change.
//!
//! The data path reads sessions through the route table; only [`Sessions::sync`], called from
//! the backend's reconcile step, creates or re-keys them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use meshd_crypto::session::MAX_LOCAL_INDEX;
use meshd_crypto::{
    Keyring, PairKey, PrivateKey, PublicKey, RateLimiter, SecretId, Session, SessionError,
};

use super::Peer;

/// The node's keys, the cluster secrets the pair keys come from, and the shared rate limiter.
pub struct NodeCrypto {
    pub private: PrivateKey,
    pub public: PublicKey,
    /// Control plane only (new peers, reloads): the data path never takes this lock.
    keyring: Mutex<Keyring>,
    pub limiter: RateLimiter,
    next_index: AtomicU32,
    /// Cookie replies the shared rate limiter sent before an initiator was identified.
    pub cookie_replies: AtomicU64,
}

impl NodeCrypto {
    pub fn new(private: PrivateKey, keyring: Keyring, handshakes_per_second: u64) -> Self {
        let public = private.public_key();
        let limiter = RateLimiter::new(&public, handshakes_per_second);
        NodeCrypto {
            private,
            public,
            keyring: Mutex::new(keyring),
            limiter,
            // Start somewhere that depends on the start time, so that a restarted node does not
            // hand out the indices its previous run used (stale datagrams then miss).
            next_index: AtomicU32::new(start_index()),
            cookie_replies: AtomicU64::new(0),
        }
    }

    /// The cluster secrets in use.
    pub fn keyring(&self) -> Keyring {
        self.keyring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the cluster secrets; the caller then re-applies the peer set
    /// ([`crate::backend::Backend::set_keyring`] does both).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.lock().unwrap_or_else(|p| p.into_inner()) = keyring;
    }

    /// The preshared key for `peer`, from the secret we share with it (see
    /// [`Keyring::pair_key`]).
    pub fn pair_key(&self, peer: &PublicKey, peer_ids: Option<&[SecretId]>) -> PairKey {
        self.keyring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pair_key(&self.public, peer, peer_ids)
    }

    /// A fresh session with the node called `name` whose key is `key`, under a new local
    /// index.
    pub(crate) fn new_peer(
        &self,
        name: &str,
        key: PublicKey,
        peer_ids: Option<&[SecretId]>,
    ) -> Result<Arc<WgPeer>, SessionError> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & MAX_LOCAL_INDEX;
        let pair = self.pair_key(&key, peer_ids);
        let session = Session::new(&self.private, index, key, pair.psk, &self.limiter)?;
        Ok(Arc::new(WgPeer {
            key,
            index,
            session: Mutex::new(session),
            pair: Mutex::new(pair),
            // At error level so that it is on whenever any of boringtun's events are.
            span: tracing::error_span!("wireguard", peer = %name),
        }))
    }
}

/// The preshared key this node (`local`) uses with the static peer whose key is `peer`, the
/// one `meshd psk` prints for a host without meshd: a static peer publishes no secret ids,
/// so the pair's key comes from the first secret of the ring (see [`Keyring::pair_key`]).
pub fn static_pair_key(ring: &Keyring, local: &PublicKey, peer: &PublicKey) -> PairKey {
    ring.pair_key(local, peer, None)
}

fn start_index() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(13))
        .unwrap_or(1);
    nanos & MAX_LOCAL_INDEX
}

/// One peer's WireGuard state: its key, the local index its datagrams carry, its session.
pub struct WgPeer {
    pub key: PublicKey,
    pub index: u32,
    session: Mutex<Session>,
    /// The preshared key in use and the secret it comes from (control plane and status only).
    pair: Mutex<PairKey>,
    /// Names the peer in what boringtun logs while its timers run (handshake retries, expiry):
    /// its own messages say nothing of which peer. Made once, so a timer tick allocates nothing.
    pub span: tracing::Span,
}

impl WgPeer {
    /// The session, locked. A worker that panicked while holding it left nothing half-done
    /// that matters more than the traffic, so a poisoned lock is taken over.
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The preshared key in use and where it comes from.
    pub fn pair(&self) -> PairKey {
        *self.pair.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the session to `pair`'s preshared key if it differs from the one in use. The
    /// session keeps its current keys until a handshake under the new one completes (see
    /// `meshd_crypto::Session::set_psk`), so nothing is lost while both ends switch.
    pub fn set_pair(&self, pair: PairKey) -> bool {
        let mut current = self.pair.lock().unwrap_or_else(|p| p.into_inner());
        if current.psk == pair.psk {
            *current = pair;
            return false;
        }
        *current = pair;
        self.lock().set_psk(pair.psk)
    }
}

impl std::fmt::Debug for WgPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgPeer")
            .field("key", &self.key)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Sessions by peer key: they survive peer-set changes, as the peer's counters do.
pub struct Sessions {
    crypto: Arc<NodeCrypto>,
    by_key: Mutex<HashMap<PublicKey, Arc<WgPeer>>>,
}

impl Sessions {
    pub fn new(crypto: Arc<NodeCrypto>) -> Self {
        Sessions {
            crypto,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    pub fn crypto(&self) -> &Arc<NodeCrypto> {
        &self.crypto
    }

    /// The session of each of `peers`, in order. A peer keeps its session (and so its keys)
    /// while its key stays the same, and moves to a new preshared key without losing traffic
    /// when the secrets the pair shares change; a peer without a key has none. Sessions of keys
    /// no longer present are dropped.
    pub fn sync(&self, peers: &[Peer]) -> Vec<Option<Arc<WgPeer>>> {
        let mut sessions = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|key, _| {
            peers
                .iter()
                .any(|p| p.key.as_ref().map(|k| &k.public) == Some(key))
        });
        let c = &self.crypto;
        peers
            .iter()
            .map(|p| {
                let k = p.key.as_ref()?;
                if let Some(w) = sessions.get(&k.public) {
                    let pair = c.pair_key(&k.public, k.secret_ids.as_deref());
                    let before = w.pair();
                    if w.set_pair(pair) {
                        tracing::info!(
                            peer = %p.name, from = %before.secret, to = %pair.secret,
                            "WireGuard preshared key changes with the shared cluster secret; the current session carries traffic until the new handshake completes"
                        );
                    }
                    if before.agreed {
                        warn_if_no_common_secret(&p.name, &pair);
                    }
                    return Some(w.clone());
                }
                match c.new_peer(&p.name, k.public, k.secret_ids.as_deref()) {
                    Ok(w) => {
                        warn_if_no_common_secret(&p.name, &w.pair());
                        sessions.insert(k.public, w.clone());
                        Some(w)
                    }
                    Err(e) => {
                        tracing::warn!(peer = %p.name, error = %e, "cannot create a WireGuard session");
                        None
                    }
                }
            })
            .collect()
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::peers::PeerKey;
    use meshd_crypto::ClusterSecret;

    /// `meshd psk` prints the key this node's session with a static peer really uses.
    #[test]
    fn the_static_pair_key_is_the_one_sessions_use() {
        let ring =
            Keyring::new(vec![ClusterSecret::generate(), ClusterSecret::generate()]).unwrap();
        let key = PrivateKey::generate();
        let sessions = Sessions::new(Arc::new(NodeCrypto::new(key.clone(), ring.clone(), 100)));
        let theirs = PrivateKey::generate().public_key();
        let peer = Peer {
            name: "wg-host".into(),
            address: "198.18.0.9".parse().unwrap(),
            subnet: "10.244.9.0/24".parse().unwrap(),
            key: Some(PeerKey::fixed(theirs)),
        };
        let wg = sessions.sync(&[peer]).pop().flatten().unwrap();
        let printed = static_pair_key(&ring, &key.public_key(), &theirs);
        assert_eq!(wg.pair().psk, printed.psk);
        // And the other end derives the same key from its side.
        assert_eq!(
            static_pair_key(&ring, &theirs, &key.public_key()).psk,
            printed.psk
        );
    }
}
