//! meshd-crypto: the cryptography of a meshd node, as a library with no I/O of its own.
//!
//! It holds the node's X25519 key and its file ([`keys`], [`load_or_create_private_key`]),
//! the cluster secret ([`ClusterSecret`]), the ring of secrets held during a rotation
//! ([`Keyring`]) and what is derived from it with domain separation
//! ([`kdf`]: the WireGuard preshared key of each node pair, the gossip key), the sealing of
//! gossip datagrams ([`GossipSealer`]), a checked view of WireGuard datagrams for
//! demultiplexing ([`wire`]), handshake admission ([`RateLimiter`], [`identify_initiator`], and per source
//! [`SourceLimiter`])
//! the per-peer WireGuard session ([`Session`]) and the bound on its data messages in flight
//! from several senders ([`InFlight`]). Only [`session`] and [`handshake`] see
//! boringtun's API; nothing boringtun-typed is public.
//!
//! It deliberately opens no socket, starts no thread and runs no async runtime; callers own
//! every buffer, and the per-packet calls allocate nothing (`tests/no_alloc.rs`). It reads no
//! clock either (the sealer takes `now`), with one contained exception: boringtun's `Tunn`
//! reads the monotonic clock for its timers, confined to [`session`] and [`handshake`].
//!
//! The `mock-clock` feature puts those reads on a per-thread virtual clock
//! (`mock_clock::advance`) for the timer tests: `cargo test -p meshd-crypto --features
//! mock-clock`. It is not a dev-dependency feature on purpose: cargo would unify it into every
//! crate built alongside the tests (the daemon in `cargo test --workspace`), freezing their
//! timers. [`MOCK_CLOCK`] lets a binary refuse to start if it ever gets built in.

mod action;
mod answer;
pub mod handshake;
pub mod in_flight;
pub mod kdf;
pub mod keyring;
pub mod keys;
mod replay;
pub mod sealer;
pub mod secret;
mod secret_file;
pub mod session;
pub mod source_limit;
pub mod wire;

pub use action::{Action, SessionError, SessionStats};
pub use handshake::{identify_initiator, Admission, Mac1Check, RateLimiter};
pub use in_flight::{Blocked, InFlight};
pub use keyring::{Keyring, KeyringError, PairKey, SecretId, MAX_SECRETS};
pub use keys::{KeyError, PrivateKey, PublicKey};
pub use sealer::{GossipSealer, OpenError, SealError, SealerConfig};
pub use secret::ClusterSecret;
pub use secret_file::{
    load_or_create_private_key, read_private_key, KeyFileStatus, SecretFileError,
};
pub use session::Session;
pub use source_limit::SourceLimiter;
pub use wire::{MessageType, WgDatagram, WireError};

/// True when built with the `mock-clock` feature: boringtun's timers then run on a per-thread
/// virtual clock that only tests advance. A daemon must refuse to start when this is true.
pub const MOCK_CLOCK: bool = cfg!(feature = "mock-clock");

/// The virtual clock behind boringtun's timers, for tests (`mock-clock` feature only).
#[cfg(feature = "mock-clock")]
pub mod mock_clock {
    /// Moves this thread's virtual clock forward.
    pub fn advance(by: std::time::Duration) {
        mock_instant::MockClock::advance(by);
    }
}
