//! Sealing gossip datagrams: XChaCha20-Poly1305 under the gossip key derived from the cluster
//! secret, with unique nonces, bounded replay, and every secret of the [`Keyring`] accepted at
//! once, so the secret can be rotated without downtime.
//!
//! Datagram layout (integers little endian):
//! ```text
//!  0      1        4        8               16              24              32        n-16     n
//!  | ver  | zero 3 | key id | sender u64     | counter u64   | unix ms u64   | ciphertext | tag |
//!  '---------------- nonce (24 bytes) ----------------------'
//!  '-------------------------- associated data (32 bytes) ---------------'
//! ```
//! The nonce is unique because each sealer draws a random 64-bit sender id when built and
//! counts its datagrams; the same sender id with a new key is harmless. The receiver keeps a
//! replay window per sender id, and refuses datagrams stamped more than `max_age` from its
//! own clock, so a sender's window can be forgotten once it has been quiet that long, and a
//! restarted receiver accepts no replay older than `max_age`. Node clocks must therefore agree
//! to within `max_age` (NTP does it).

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};

use crate::kdf::gossip_key;
use crate::keyring::{Keyring, SecretId};
use crate::replay::ReplayWindow;
use crate::secret::ClusterSecret;

/// Format version byte.
pub const VERSION: Range<usize> = 0..1;
/// Reserved, zero.
pub const RESERVED: Range<usize> = 1..4;
/// Which key sealed the datagram ([`crate::kdf::gossip_key_id`]).
pub const KEY_ID: Range<usize> = 4..8;
/// The sender's random id, fixed for the sealer's life.
pub const SENDER: Range<usize> = 8..16;
/// The sender's datagram counter.
pub const COUNTER: Range<usize> = 16..24;
/// When the datagram was sealed, milliseconds since the Unix epoch.
pub const TIMESTAMP: Range<usize> = 24..32;
/// The AEAD nonce: version to counter.
pub const NONCE: Range<usize> = 0..24;
/// Everything before the ciphertext, authenticated as associated data.
pub const HEADER_LEN: usize = 32;
/// Length of the Poly1305 tag that ends the datagram.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The current format.
pub const FORMAT_VERSION: u8 = 1;

/// Replay and age limits of a [`GossipSealer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealerConfig {
    /// Oldest (and furthest in the future) a datagram's timestamp may be. Bounds replays after
    /// a restart, and how far node clocks may disagree.
    pub max_age: Duration,
    /// Senders whose replay windows are kept (about 150 bytes each, allocated up front).
    /// Past this, the one heard from least recently is forgotten.
    pub max_senders: usize,
}

impl Default for SealerConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(60),
            max_senders: 4096,
        }
    }
}

/// Why a plaintext could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// `out` is shorter than the plaintext plus [`OVERHEAD`].
    #[error("output buffer too small")]
    BufferTooSmall,
    /// 2^64 datagrams sealed: build a new sealer (a new sender id).
    #[error("datagram counter exhausted")]
    CounterExhausted,
}

/// Why a datagram was dropped. A plain enum: count it, don't format it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header and a tag.
    #[error("datagram too short")]
    TooShort,
    /// Unknown version or non-zero reserved bytes.
    #[error("unknown format version")]
    BadVersion,
    /// Sealed with a secret that is not in our keyring.
    #[error("unknown key")]
    UnknownKey,
    /// Our own sender id: a reflected datagram.
    #[error("datagram from ourselves")]
    Reflected,
    /// Timestamp older than `max_age`.
    #[error("datagram too old")]
    Expired,
    /// Timestamp more than `max_age` ahead of our clock.
    #[error("datagram from the future")]
    FromFuture,
    /// Counter already seen from this sender, or behind its window.
    #[error("replayed datagram")]
    Replayed,
    /// `out` is shorter than the plaintext.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// Authentication failed: tampered, or sealed with another secret under a colliding id.
    #[error("authentication failed")]
    Forged,
}

/// Seals and opens gossip datagrams. One per node; not `Sync` (wrap it in a lock or give each
/// socket task its own sender via [`GossipSealer::with_sender_id`]).
pub struct GossipSealer {
    /// One per secret of the keyring, the sealing (primary) one first.
    keys: Vec<SealingKey>,
    sender: u64,
    counter: u64,
    config: SealerConfig,
    senders: HashMap<u64, SenderState>,
}

struct SealingKey {
    id: SecretId,
    cipher: XChaCha20Poly1305,
    /// Datagrams this key opened: tells an operator when a retired secret is no longer in use.
    opened: u64,
}

struct SenderState {
    window: ReplayWindow,
    /// Newest timestamp authenticated from this sender, in Unix ms.
    last_heard_ms: u64,
}

impl GossipSealer {
    /// A sealer that seals with the ring's primary secret and opens datagrams sealed with any
    /// of its secrets, with a random sender id.
    pub fn new(ring: &Keyring, config: SealerConfig) -> Self {
        Self::with_sender_id(ring, config, OsRng.next_u64())
    }

    /// As [`GossipSealer::new`] with a chosen sender id, for deterministic simulations. Two
    /// live sealers with the same secret must never share an id: their nonces would repeat.
    pub fn with_sender_id(ring: &Keyring, config: SealerConfig, sender: u64) -> Self {
        Self {
            keys: ring.secrets().map(SealingKey::from_secret).collect(),
            sender,
            counter: 0,
            config,
            senders: HashMap::with_capacity(config.max_senders),
        }
    }

    /// Seals with `ring`'s primary from now on and opens under its secrets only. Sender id,
    /// counter and replay windows carry on (the nonce stays unique: it includes the key id),
    /// and so do the counts of the secrets that stay.
    pub fn set_keyring(&mut self, ring: &Keyring) {
        let mut keys: Vec<SealingKey> = ring.secrets().map(SealingKey::from_secret).collect();
        for key in &mut keys {
            if let Some(old) = self.keys.iter().find(|k| k.id == key.id) {
                key.opened = old.opened;
            }
        }
        self.keys = keys;
    }

    /// The id of the secret that seals.
    pub fn sealing_id(&self) -> SecretId {
        self.keys[0].id
    }

    /// Each secret's id and how many datagrams it opened, the sealing one first.
    pub fn opened(&self) -> impl Iterator<Item = (SecretId, u64)> + '_ {
        self.keys.iter().map(|k| (k.id, k.opened))
    }

    /// This sealer's sender id.
    pub fn sender_id(&self) -> u64 {
        self.sender
    }

    /// Seals `plaintext` into `out`, returning the datagram length (plaintext + [`OVERHEAD`]).
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
        now: SystemTime,
    ) -> Result<usize, SealError> {
        let len = plaintext.len() + OVERHEAD;
        if out.len() < len {
            return Err(SealError::BufferTooSmall);
        }
        let counter = self.counter;
        self.counter = counter.checked_add(1).ok_or(SealError::CounterExhausted)?;

        let (header, rest) = out.split_at_mut(HEADER_LEN);
        header[VERSION].fill(FORMAT_VERSION);
        header[RESERVED].fill(0);
        header[KEY_ID].copy_from_slice(&self.keys[0].id.0);
        header[SENDER].copy_from_slice(&self.sender.to_le_bytes());
        header[COUNTER].copy_from_slice(&counter.to_le_bytes());
        header[TIMESTAMP].copy_from_slice(&unix_ms(now).to_le_bytes());

        let (body, tag_out) = rest[..plaintext.len() + TAG_LEN].split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let nonce = XNonce::from_slice(&header[NONCE]);
        let tag = self.keys[0]
            .cipher
            .encrypt_in_place_detached(nonce, header, body)
            .map_err(|_| SealError::BufferTooSmall)?;
        tag_out.copy_from_slice(&tag);
        Ok(len)
    }

    /// Authenticates and decrypts `datagram` into `out`, returning the plaintext length. The
    /// checks that need no cryptography (format, key id, age, replay window) come first.
    pub fn open(
        &mut self,
        datagram: &[u8],
        out: &mut [u8],
        now: SystemTime,
    ) -> Result<usize, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::TooShort);
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        if header[VERSION] != [FORMAT_VERSION] || header[RESERVED] != [0, 0, 0] {
            return Err(OpenError::BadVersion);
        }
        let Some(key) = self.keys.iter().position(|k| header[KEY_ID] == k.id.0) else {
            return Err(OpenError::UnknownKey);
        };
        let sender = read_u64(header, SENDER);
        let counter = read_u64(header, COUNTER);
        let stamp = read_u64(header, TIMESTAMP);
        if sender == self.sender {
            return Err(OpenError::Reflected);
        }
        let now_ms = unix_ms(now);
        let max_age_ms = u64::try_from(self.config.max_age.as_millis()).unwrap_or(u64::MAX);
        if stamp.saturating_add(max_age_ms) < now_ms {
            return Err(OpenError::Expired);
        }
        if stamp > now_ms.saturating_add(max_age_ms) {
            return Err(OpenError::FromFuture);
        }
        if let Some(state) = self.senders.get(&sender) {
            state
                .window
                .check(counter)
                .map_err(|_| OpenError::Replayed)?;
        }
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let plain = out
            .get_mut(..ciphertext.len())
            .ok_or(OpenError::BufferTooSmall)?;
        plain.copy_from_slice(ciphertext);
        let nonce = XNonce::from_slice(&header[NONCE]);
        if self.keys[key]
            .cipher
            .decrypt_in_place_detached(nonce, header, plain, Tag::from_slice(tag))
            .is_err()
        {
            // Don't hand back unauthenticated bytes.
            plain.fill(0);
            return Err(OpenError::Forged);
        }
        self.remember(sender, counter, stamp, now_ms.saturating_sub(max_age_ms))?;
        self.keys[key].opened += 1;
        Ok(ciphertext.len())
    }

    /// Marks an authenticated counter in its sender's window, making room if needed.
    fn remember(
        &mut self,
        sender: u64,
        counter: u64,
        stamp: u64,
        stale_before: u64,
    ) -> Result<(), OpenError> {
        if !self.senders.contains_key(&sender) && self.senders.len() >= self.config.max_senders {
            // Senders quiet for max_age can be forgotten safely: all they ever sent is now
            // refused as expired. Only if none is that quiet do we lose a live window.
            self.senders.retain(|_, s| s.last_heard_ms >= stale_before);
            if self.senders.len() >= self.config.max_senders {
                let oldest = self
                    .senders
                    .iter()
                    .min_by_key(|(_, s)| s.last_heard_ms)
                    .map(|(id, _)| *id);
                if let Some(oldest) = oldest {
                    self.senders.remove(&oldest);
                }
            }
        }
        let state = self.senders.entry(sender).or_insert_with(|| SenderState {
            window: ReplayWindow::new(),
            last_heard_ms: stamp,
        });
        state.last_heard_ms = state.last_heard_ms.max(stamp);
        state.window.mark(counter).map_err(|_| OpenError::Replayed)
    }
}

impl std::fmt::Debug for GossipSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSealer")
            .field("sender", &self.sender)
            .field("counter", &self.counter)
            .field("keys", &self.keys.iter().map(|k| k.id).collect::<Vec<_>>())
            .field("senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    fn from_secret((id, secret): (SecretId, &ClusterSecret)) -> Self {
        let mut key = gossip_key(secret);
        let cipher = XChaCha20Poly1305::new(&key.into());
        zeroize::Zeroize::zeroize(&mut key);
        Self {
            id,
            cipher,
            opened: 0,
        }
    }
}

fn read_u64(header: &[u8], range: Range<usize>) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[range]);
    u64::from_le_bytes(b)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "sealer_tests.rs"]
mod tests;
