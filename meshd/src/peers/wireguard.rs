//! The WireGuard half of the peer set: the node's keys and cluster secrets ([`NodeCrypto`]) and
//! one peer's session ([`WgPeer`]). A peer's link ([`crate::link::PeerLink`]) holds its session;
//! only the reconcile step ([`crate::link::registry::Links`]) creates, re-keys or retires one.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshd_crypto::session::MAX_LOCAL_INDEX;
use meshd_crypto::{
    InFlight, Keyring, PairKey, PrivateKey, PublicKey, RateLimiter, SecretId, Session, SessionError,
};

use super::rejected::RejectedInitiators;
use crate::stats::Stamp;

/// Handshakes started on the data path's say-so ([`WgPeer::want_handshake`]) at most this
/// often per peer: a peer that keeps sending on a lost session costs one initiation a second,
/// whatever its packet rate (or a spoofer's).
pub(crate) const FORCED_HANDSHAKE_EVERY: Duration = Duration::from_secs(1);
/// Data on a receiver index we do not know, from a peer's address, asks for a handshake only
/// if nothing from that peer authenticated on its session for this long: WireGuard's
/// REJECT_AFTER_TIME, the longest a session's keys are used.
///
/// Why the data path may ignore it for that long: such data means the peer holds a session
/// on an index of ours that no longer exists, so we replaced or lost that session (a restart,
/// a new key, a peer that left for longer than its session is kept). A session of ours that
/// authenticated the peer since it was made is newer than any the peer could still send on:
/// the peer's own handshake with it made that session its current one. So a stale index
/// beside recent authenticated traffic is a reordered straggler or, more likely, a datagram
/// anyone can forge (the header is not authenticated), and one would otherwise cost a
/// Diffie-Hellman a second on both nodes. Should the rule ever be wrong, the peer's own timers
/// start a handshake within 15 s of hearing nothing back.
pub(crate) const AUTHENTICATED_RECENTLY: Duration = Duration::from_secs(180);

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
            forced: AtomicU64::new(0),
            authenticated_at: AtomicU64::new(0),
            unknown_index_ignored: AtomicU64::new(0),
            in_flight: InFlight::default(),
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
    /// Handshakes the data path asked for that the control thread acted on.
    forced: AtomicU64,
    /// When a data message from the peer last authenticated on this session (the RX batch's
    /// [`Stamp`] ms, 0 for never).
    authenticated_at: AtomicU64,
    /// Data on an unknown index from the peer's address that asked for no handshake, since
    /// this session authenticated the peer within [`AUTHENTICATED_RECENTLY`].
    unknown_index_ignored: AtomicU64,
    /// The data messages each TX queue holds unsent, kept within the peer's replay window.
    pub(crate) in_flight: InFlight,
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

    /// A data message from the peer authenticated on this session, in the batch read at
    /// `now`. One relaxed load per packet, a store per batch.
    #[inline]
    pub(crate) fn authenticated(&self, now: Stamp) {
        if self.authenticated_at.load(Ordering::Relaxed) != now.raw() {
            self.authenticated_at.store(now.raw(), Ordering::Relaxed);
        }
    }

    /// Data on a receiver index we do not know came from the peer's address at `now`: ask for
    /// a handshake, unless this session authenticated the peer within
    /// [`AUTHENTICATED_RECENTLY`] (then it is counted, see there). Whether one was asked for.
    #[inline]
    pub(crate) fn unknown_index(&self, now: Stamp) -> bool {
        let heard = Stamp::from_raw(self.authenticated_at.load(Ordering::Relaxed));
        if heard.is_some_and(|t| t.age(now) < AUTHENTICATED_RECENTLY) {
            self.unknown_index_ignored.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.want_handshake();
        true
    }

    /// Handshakes started on the data path's say-so, and unknown-index data that asked for
    /// none (see [`WgPeer::unknown_index`]).
    pub(crate) fn forced_counts(&self) -> (u64, u64) {
        (
            self.forced.load(Ordering::Relaxed),
            self.unknown_index_ignored.load(Ordering::Relaxed),
        )
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
        self.forced.fetch_add(1, Ordering::Relaxed);
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
