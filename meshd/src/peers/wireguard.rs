//! The WireGuard half of the peer set: the node's keys and cluster secrets ([`NodeCrypto`]), one
//! [`WgPeer`] per peer key, and the registry ([`Sessions`]) that keeps a peer's session across
//! peer-set changes and moves it to a new preshared key when the secrets the pair shares change.
//!
//! The data path reads sessions through the route table; only [`Sessions::sync`], called from
//! the backend's reconcile step, creates or re-keys them.
//!
//! A peer that leaves the peer set and comes back within [`SESSION_GRACE`] gets its session
//! back, index and keys included: a member that one node briefly held down (a one-sided
//! gossip flap) kept sending on that session all along, and would otherwise be refused
//! (`unknown-index`) until its own timers gave up on it, 15 s later. A handshake starts at
//! once all the same, in case the peer restarted meanwhile: the old session carries traffic
//! until it completes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshd_crypto::session::MAX_LOCAL_INDEX;
use meshd_crypto::{
    Keyring, PairKey, PrivateKey, PublicKey, RateLimiter, SecretId, Session, SessionError,
};

use super::rejected::RejectedInitiators;
use super::Peer;
use crate::stats::Stamp;

/// How long a removed peer's session is kept for its return: WireGuard's reject-after-time,
/// past which its keys are refused anyway.
pub const SESSION_GRACE: Duration = Duration::from_secs(180);
/// Removed peers' sessions kept at most (the oldest goes first): a bound on memory for a
/// cluster that loses many members at once, not a number a flap should reach.
pub const SESSION_GRACE_MAX: usize = 256;
/// Handshakes started on the data path's say-so ([`WgPeer::want_handshake`]) at most this
/// often per peer: a peer that keeps sending on a lost session costs one initiation a second,
/// whatever its packet rate (or a spoofer's).
pub const FORCED_HANDSHAKE_EVERY: Duration = Duration::from_secs(1);

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
    /// Initiators refused because they were no peer of ours (yet).
    pub rejected: RejectedInitiators,
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
            rejected: RejectedInitiators::default(),
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
            handshake_wanted: AtomicBool::new(false),
            forced_at: AtomicU64::new(0),
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
    /// Set when a handshake should start now rather than on the session's timers: the peer
    /// sends on a session we no longer have, or we refused its initiation moments before it
    /// became a peer. The control thread acts on it ([`WgPeer::take_handshake_wanted`]).
    handshake_wanted: AtomicBool,
    /// When the control thread last started such a handshake ([`Stamp`] ms, 0 for never).
    forced_at: AtomicU64,
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

    /// Asks the control thread to start a handshake with this peer at once. Cheap enough for
    /// the RX path: one relaxed store.
    #[inline]
    pub fn want_handshake(&self) {
        self.handshake_wanted.store(true, Ordering::Relaxed);
    }

    /// Whether to start a handshake now: one was wanted, and none was forced in the last
    /// [`FORCED_HANDSHAKE_EVERY`] (a wish made sooner waits for that, it is not lost).
    pub fn take_handshake_wanted(&self, now: Stamp) -> bool {
        if !self.handshake_wanted.load(Ordering::Relaxed) {
            return false;
        }
        let last = Stamp::from_raw(self.forced_at.load(Ordering::Relaxed));
        if last.is_some_and(|t| t.age(now) < FORCED_HANDSHAKE_EVERY) {
            return false;
        }
        self.handshake_wanted.store(false, Ordering::Relaxed);
        self.forced_at.store(now.raw(), Ordering::Relaxed);
        true
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

/// Sessions by peer key: they survive peer-set changes, as the peer's counters do, and for
/// [`SESSION_GRACE`] the peer's removal.
pub struct Sessions {
    crypto: Arc<NodeCrypto>,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    live: HashMap<PublicKey, Arc<WgPeer>>,
    /// Sessions of removed peers, with when they were removed.
    retired: HashMap<PublicKey, (Arc<WgPeer>, Instant)>,
}

impl Sessions {
    pub fn new(crypto: Arc<NodeCrypto>) -> Self {
        Sessions {
            crypto,
            registry: Mutex::new(Registry::default()),
        }
    }

    pub fn crypto(&self) -> &Arc<NodeCrypto> {
        &self.crypto
    }

    /// The session of each of `peers`, in order. A peer keeps its session (and so its keys)
    /// while its key stays the same, gets it back if it returns within [`SESSION_GRACE`], and
    /// moves to a new preshared key without losing traffic when the secrets the pair shares
    /// change; a peer without a key has none. A peer that joins the set moments after we
    /// refused its initiation is asked for a handshake at once.
    pub fn sync(&self, peers: &[Peer]) -> Vec<Option<Arc<WgPeer>>> {
        self.sync_at(peers, Instant::now(), Stamp::now())
    }

    pub(crate) fn sync_at(
        &self,
        peers: &[Peer],
        now: Instant,
        stamp: Stamp,
    ) -> Vec<Option<Arc<WgPeer>>> {
        let mut guard = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let reg = &mut *guard;
        let wanted = |key: &PublicKey| {
            peers
                .iter()
                .any(|p| p.key.as_ref().map(|k| &k.public) == Some(key))
        };
        let gone: Vec<PublicKey> = reg.live.keys().copied().filter(|k| !wanted(k)).collect();
        for key in gone {
            if let Some(w) = reg.live.remove(&key) {
                reg.retired.insert(key, (w, now));
            }
        }
        reg.expire(now);
        let c = &self.crypto;
        peers
            .iter()
            .map(|p| {
                let k = p.key.as_ref()?;
                let pair = c.pair_key(&k.public, k.secret_ids.as_deref());
                if let Some(w) = reg.live.get(&k.public) {
                    rekey(&p.name, w, pair);
                    return Some(w.clone());
                }
                let w = match reg.retired.remove(&k.public) {
                    Some((w, since)) => {
                        tracing::debug!(
                            peer = %p.name, away_ms = now.saturating_duration_since(since).as_millis() as u64,
                            "peer is back: its WireGuard session resumes"
                        );
                        rekey(&p.name, &w, pair);
                        // It may have restarted meanwhile and lost its end of the session:
                        // a handshake now costs nothing if not, and saves waiting to be told.
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
                reg.live.insert(k.public, w.clone());
                Some(w)
            })
            .collect()
    }
}

impl Registry {
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
            kernel_vxlan: false,
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

    fn sessions() -> Sessions {
        let ring = Keyring::single(ClusterSecret::generate());
        Sessions::new(Arc::new(NodeCrypto::new(PrivateKey::generate(), ring, 100)))
    }

    fn peer(n: u32, key: PublicKey) -> Peer {
        Peer {
            name: format!("p{n}"),
            address: std::net::IpAddr::from([198, 18, (n >> 8) as u8, n as u8]),
            subnet: format!("10.{}.{}.0/24", n >> 8, n & 0xff).parse().unwrap(),
            key: Some(PeerKey::fixed(key)),
            kernel_vxlan: false,
        }
    }

    fn index(s: &Sessions, p: &Peer, now: Instant) -> u32 {
        s.sync_at(std::slice::from_ref(p), now, Stamp::now())[0]
            .as_ref()
            .unwrap()
            .index
    }

    #[test]
    fn a_removed_peer_gets_its_session_back_within_the_grace_period() {
        let s = sessions();
        let p = peer(1, PrivateKey::generate().public_key());
        let t0 = Instant::now();
        let first = index(&s, &p, t0);
        assert!(s.sync_at(&[], t0, Stamp::now()).is_empty());
        let back = t0 + SESSION_GRACE - Duration::from_secs(1);
        assert_eq!(index(&s, &p, back), first, "the session was not kept");
        // Gone for longer than the grace period: a new session, under a new index.
        s.sync_at(&[], back, Stamp::now());
        assert_ne!(index(&s, &p, back + SESSION_GRACE), first);
    }

    #[test]
    fn retired_sessions_are_bounded_oldest_first() {
        let s = sessions();
        let t0 = Instant::now();
        let peers: Vec<Peer> = (0..SESSION_GRACE_MAX as u32 + 1)
            .map(|n| peer(n, PrivateKey::generate().public_key()))
            .collect();
        let first: Vec<u32> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = t0 + Duration::from_millis(i as u64);
                let i = index(&s, p, at);
                s.sync_at(&[], at, Stamp::now());
                i
            })
            .collect();
        let later = t0 + Duration::from_secs(1);
        assert_eq!(index(&s, &peers[1], later), first[1]);
        assert_ne!(index(&s, &peers[0], later), first[0], "the oldest was kept");
    }
}
