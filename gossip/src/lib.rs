//! meshd's control-plane core: SWIM membership on [`foca`], node records disseminated with it,
//! subnet allocation without a central store, and the versioned gossip codec.
//!
//! It is a sans-IO state machine. The daemon feeds it opened datagrams
//! ([`Gossip::handle_datagram`]) and deadlines ([`Gossip::handle_timeout`]), and drains what
//! to send ([`Gossip::poll_transmit`]), when to wake ([`Gossip::poll_timeout`]) and what
//! happened ([`Gossip::poll_event`]). It opens no socket, reads no clock and spawns nothing.
//! Datagrams in and out are plaintext, sealed and opened by the daemon with the `crypto`
//! crate's AEAD; the one cryptography done here is the records' own: each node signs its
//! record (ed25519, [`SigningKey`]) and a name is bound to its key on first sight, so a member
//! speaks only for itself (`inbox.rs`, `trust.rs`). What the daemon's data path knows about liveness goes in
//! too ([`Gossip::handle_evidence`]: authenticated traffic from a member just arrived), so
//! that a member a lossy gossip path would declare down stays up while its traffic flows. The
//! [`sim`] module drives thousands of instances in one process on a virtual clock, for the
//! tests and the benchmark.
//!
//! Driving it (the daemon's loop, minus the socket and the sealing):
//!
//! ```no_run
//! use std::time::Instant;
//! use meshd_gossip::{Config, Event, Gossip, sim::Sim, SubnetRequest};
//!
//! let now = Instant::now();
//! let local = Sim::local_node(0, SubnetRequest::Auto); // the daemon builds its own LocalNode
//! let mut g = Gossip::new(Config::default(), local, 0x5eed, now).expect("valid config");
//! g.join("192.0.2.10:7946".parse().unwrap(), now);
//! loop {
//!     // 1. datagram opened from the socket:  g.handle_datagram(from, &plaintext, now)
//!     // 2. at g.poll_timeout():              g.handle_timeout(now)
//!     // 3. a member's traffic arrived at t:  g.handle_evidence(name, t)
//!     while let Some(t) = g.poll_transmit() {
//!         let _ = (t.dst, t.payload); // seal, then send_to(dst)
//!     }
//!     while let Some(event) = g.poll_event() {
//!         match event {
//!             Event::MemberUp(r) | Event::MemberUpdated(r) => { let _ = r; /* peer + routes */ }
//!             Event::MemberDown(name) | Event::MemberLeft(name) => { let _ = name; /* withdraw */ }
//!             Event::SubnetAssigned(lease) => { let _ = lease; /* persist, bridge */ }
//!             _ => {}
//!         }
//!     }
//!     # break;
//! }
//! ```

mod alloc;
mod bounds;
mod config;
mod evidence;
mod gossip;
mod identity;
mod inbox;
mod io;
mod name;
mod precedence;
mod punch;
pub mod record;
mod record_ext;
mod signature;
pub mod sim;
mod subnet;
pub mod summary;
mod sync;
mod timers;
mod trust;
mod via;
mod view;
pub mod wire;

pub use alloc::{SubnetConflict, MAX_STAMP};
pub use config::{Config, ConfigError, Profile, MIN_DATAGRAM};
pub use gossip::Gossip;
pub use identity::NodeId;
pub use inbox::{Refusal, Refused, MAX_CLOCK_AHEAD, MAX_NAMES, REBIND_HOLD};
pub use io::{Counters, Transmit};
pub use name::{is_valid_name, MAX_NAME_LEN, NAME_RULE};
pub use precedence::{HoldKind, Precedence, Settled};
pub use record::{
    Capabilities, Forget, Lease, LocalNode, NodeRecord, PunchRequest, RecordError, Subnet,
    SubnetClaim, SubnetParseError, SubnetRequest, MAX_ENDPOINTS, MAX_LEARNED, MAX_PUNCH,
    MAX_RECORD_LEN, MAX_RESERVED,
};
pub use signature::{short as short_key, SigningKey, PUBLIC_KEY_LEN};
pub use subnet::{ClaimFault, Pool, PoolError, Ranges, MAX_CLAIM_SLOTS};
pub use summary::{
    Health, PathCode, PathReport, Reason, RelayOffer, Route, Summary, MAX_RELAY_OFFERS,
};
pub use trust::ForgetError;
pub use view::{Member, MemberState};

/// Something the daemon acts on: routes, peers, the subnet lease, logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member is alive and its record known: add its peer and routes.
    MemberUp(NodeRecord),
    /// A live member's record changed (endpoints, subnet, keys): update its peer and routes.
    MemberUpdated(NodeRecord),
    /// A member failed a probe; it stays routed unless declared down.
    MemberSuspect(String),
    /// A suspect member refuted the suspicion, or a held one came back.
    MemberAlive(String),
    /// SWIM declared a member down, but the data path heard from it within the evidence window
    /// ([`Gossip::handle_evidence`]): it stays routed, reported suspect, until it comes back
    /// under a renewed identity ([`Event::MemberAlive`]) or the evidence is older than the
    /// window ([`Event::MemberDown`]).
    MemberHeld(String),
    /// A member was declared down: withdraw its routes.
    MemberDown(String),
    /// A member left gracefully: withdraw its routes.
    MemberLeft(String),
    /// This node holds a subnet (first claim, or a new one after losing a conflict): persist
    /// the lease and (re)configure the bridge.
    SubnetAssigned(Lease),
    /// Another live node claims a subnet that overlaps this node's, or routes a static peer
    /// in one (`reserved`). Log at warn; at error when `explicit`.
    SubnetConflict(SubnetConflict),
    /// No free subnet is left in the cluster CIDR; retried as members go.
    SubnetExhausted,
    /// A record was refused (and counted): log at warn, rate-limited, naming the name and the
    /// sender. An impostor means a member speaks for another.
    RecordRefused(Refusal),
    /// `by` asked the cluster to forget the signing key `name` was bound to (`meshd forget`):
    /// the name binds anew unless its owner outbids the forget. Log at warn.
    KeyForgotten {
        /// The name released.
        name: String,
        /// The member that asked (this node, for a local `meshd forget`).
        by: String,
    },
    /// `by` asked the cluster to forget this node's own signing key; this node published a
    /// newer record, which keeps its name bound to its key. Log at error: unless this node was
    /// reinstalled elsewhere, someone tries to take its name.
    OwnKeyForgotten {
        /// The member that asked.
        by: String,
    },
}
