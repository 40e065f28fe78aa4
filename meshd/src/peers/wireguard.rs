//! The WireGuard half of the peer set: the node's keys and cluster secrets ([`NodeCrypto`]) and
//! one peer's session ([`WgPeer`]). A peer's link ([`crate::link::PeerLink`]) holds its session;
//! only the reconcile step ([`crate::link::registry::Links`]) creates, re-keys or retires one.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshd_crypto::session::MAX_LOCAL_INDEX;
use meshd_crypto::{
    Keyring, PairKey, PrivateKey, PublicKey, RateLimiter, SecretId, Session, SessionError,
};

use super::rejected::RejectedInitiators;
use crate::stats::Stamp;

/// Handshakes started on the data path's say-so ([`WgPeer::want_handshake`]) at most this
/// often per peer: a peer that keeps sending on a lost session costs one initiation a second,
/// whatever its packet rate (or a spoofer's).
pub(crate) const FORCED_HANDSHAKE_EVERY: Duration = Duration::from_secs(1);

/// The node's keys, the cluster secrets the pair keys come from, and the shared rate limiter.
pub struct NodeCrypto {
    pub(crate) private: PrivateKey,
    pub(crate) public: PublicKey,
    /// Control plane only (new peers, reloads): the data path never takes this lock.
    keyring: Mutex<Keyring>,
    pub(crate) limiter: RateLimiter,
    next_index: AtomicU32,
    /// Cookie replies the shared rate limiter sent before an initiator was identified.
    pub(crate) cookie_replies: AtomicU64,
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
    pub(crate) fn keyring(&self) -> Keyring {
        self.keyring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the cluster secrets; the caller then re-applies the peer set
    /// ([`crate::backend::Backend::set_keyring`] does both).
    pub(crate) fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.lock().unwrap_or_else(|p| p.into_inner()) = keyring;
    }

    /// The preshared key for `peer`, from the secret we share with it (see
    /// [`Keyring::pair_key`]).
    pub(crate) fn pair_key(&self, peer: &PublicKey, peer_ids: Option<&[SecretId]>) -> PairKey {
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
    pub(crate) key: PublicKey,
    pub(crate) index: u32,
    session: Mutex<Session>,
    /// The preshared key in use and the secret it comes from (control plane and status only).
    pair: Mutex<PairKey>,
    /// Names the peer in what boringtun logs while its timers run (handshake retries, expiry):
    /// its own messages say nothing of which peer. Made once, so a timer tick allocates nothing.
    pub(crate) span: tracing::Span,
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The preshared key in use and where it comes from.
    pub(crate) fn pair(&self) -> PairKey {
        *self.pair.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the control thread to start a handshake with this peer at once. Cheap enough for
    /// the RX path: one relaxed store.
    #[inline]
    pub(crate) fn want_handshake(&self) {
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
    pub(crate) fn set_pair(&self, pair: PairKey) -> bool {
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
