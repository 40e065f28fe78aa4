//! The encrypted data path: standard WireGuard between nodes, through `meshd_crypto`.
//!
//! Each queue runs a TX worker ([`tx::tx_loop`]: TUN batch → route → encrypt into one buffer →
//! GSO runs) and an RX worker ([`rx::rx_loop`]: recvmmsg/GRO → demultiplex → decrypt →
//! cryptokey-routing check → `send_multiple` to TUN). A control-plane thread ([`timers`])
//! drives every session's timers and resets the shared handshake rate limiter once a second.
//!
//! Each peer's [`Session`] sits behind its own `Mutex` in a [`WgPeer`], held by the route
//! table; a snapshot swap keeps the same `WgPeer` for a peer whose key did not change. Nothing
//! here parses packets beyond routing hints: `meshd_crypto` checks and decrypts.

pub mod rx;
pub mod tx;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshd_crypto::session::MAX_LOCAL_INDEX;
use meshd_crypto::{
    Action, Keyring, PairKey, PrivateKey, PublicKey, RateLimiter, SecretId, Session, SessionError,
};
use quinn_udp::UdpSocketState;

use crate::routes::Routes;
use crate::stats::DropReason;

/// A buffer any session call accepts whatever it returns: the largest IP packet plus
/// WireGuard's data overhead (see `meshd_crypto::session`).
pub const SCRATCH_LEN: usize = 65_535 + meshd_crypto::wire::DATA_OVERHEAD;
/// How often the control plane runs every session's timers. boringtun's timers have a
/// resolution of 250 ms; running them a bit more often keeps retries and keepalives on time.
pub const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often the shared handshake rate limiter's count is cleared (WireGuard's one second).
pub const LIMITER_RESET: Duration = Duration::from_secs(1);

/// What every encrypted worker shares.
pub struct Shared {
    pub routes: Arc<Routes>,
    pub crypto: Arc<NodeCrypto>,
    pub stop: Arc<AtomicBool>,
    /// MTU of the TUN device: the largest packet a worker reads or writes.
    pub mtu: usize,
}

/// One TUN queue and its UDP socket, shared by the queue's TX and RX workers.
pub struct Queue {
    pub tun: Arc<tun_rs::SyncDevice>,
    pub socket: Arc<(UdpSocket, UdpSocketState)>,
    pub gro: bool,
    pub gso_segments: usize,
}

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

    /// Replaces the cluster secrets; the caller then refreshes the peers' keys
    /// ([`crate::routes::Routes::refresh`]).
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

    /// A fresh session with the node whose key is `key`, under a new local index.
    pub fn new_peer(
        &self,
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
        }))
    }
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

/// Run every session's timers and reset the rate limiter until `stop` is set. Sends whatever
/// the timers produce (handshake retries, rekeys, keepalives) from `socket`.
pub fn timers(routes: &Routes, socket: &UdpSocket, stop: &AtomicBool) {
    let Some(crypto) = routes.crypto() else {
        return;
    };
    let mut out = vec![0u8; SCRATCH_LEN];
    let mut last_reset = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TIMER_TICK);
        if last_reset.elapsed() >= LIMITER_RESET {
            crypto.limiter.reset_count();
            last_reset = Instant::now();
        }
        let table = routes.load();
        for peer in table.peers() {
            let Some(wg) = &peer.wg else { continue };
            let action = wg.lock().update_timers(&mut out);
            match action {
                Action::WriteToNetwork(n) => {
                    if let Err(e) = socket.send_to(&out[..n], peer.endpoint) {
                        tracing::trace!(error = %e, peer = %peer.name, "timer send");
                        peer.stats.count_drop(DropReason::SendError, 1);
                    }
                }
                // Repeats every tick while the peer stays idle: trace, not debug.
                Action::Error(SessionError::Expired) => {
                    tracing::trace!(peer = %peer.name, "WireGuard session expired");
                }
                _ => {}
            }
        }
    }
}

/// Send one control datagram (handshake, cookie reply, keepalive, flushed packet).
fn send_one(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
    sock.send_to(bytes, to).map(|_| ())
}
