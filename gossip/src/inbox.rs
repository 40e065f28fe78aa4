//! Which records are believed: the newest generation per name, and the signing key each name is
//! bound to.
//!
//! Every record reaches the state machine through [`Inbox::offer_blob`], whatever carried it
//! (a SWIM broadcast, a state dump, a pull answer), and is believed only if
//! - its name is a valid node name ([`crate::is_valid_name`]);
//! - its generation is plausible: generations are `boot epoch << 32 | changes`, the boot epoch
//!   being the owner's wall clock at start, so a legitimate generation's upper half is never
//!   later than now. One more than [`MAX_CLOCK_AHEAD`] ahead of this node's clock is refused:
//!   `u64::MAX` cannot be played against a victim, and no node's `+ 1` can overflow;
//! - it is newer than what is believed for its name;
//! - it is signed by the key its name is bound to. A name is bound on first sight of a signed
//!   record (trust on first use, like SSH's `known_hosts`); a record under a bound name with
//!   another key, or unsigned, is refused. An unsigned record (a node from before signatures)
//!   is believed only while its name has never been seen signed, so a cluster upgrades node by
//!   node and a name never goes back.
//!
//! A refused record is counted by why, reported (a bounded queue the state machine turns into
//! [`crate::Event::RecordRefused`]), and not passed on.
//!
//! A binding is released by a `meshd forget` from any member ([`crate::Forget`], signed by the
//! issuer): the name then binds to a new key, but only after [`REBIND_HOLD`] without a record
//! newer than the forget from the old key. A node that is alive defends its name: seeing its
//! own key forgotten, it publishes a newer record, which keeps its binding everywhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::record::{decode_record, Forget, NodeRecord, RecordError};
use crate::signature::PUBLIC_KEY_LEN;

/// How far ahead of this node's clock a record's boot epoch may be: clocks of one cluster
/// agree within seconds under NTP; a day leaves room for a badly set one and still refuses
/// every generation a forger would pick to stay ahead for good.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// After a forget, how long a name stays with its old key before another may take it: long
/// enough for the owner, if it is alive, to hear of the forget and outbid it everywhere
/// (dissemination takes about two seconds at 1,000 nodes).
pub const REBIND_HOLD: Duration = Duration::from_secs(10);
/// Most names believed at once (members, departed members, restored bindings): four times the
/// largest cluster simulated. A new name beyond it is refused until departed names are pruned
/// (`bounds.rs`), so a member inventing names cannot grow this node's memory without bound.
pub const MAX_NAMES: usize = 4096;
/// Refusals kept for the state machine to report between two drains; more are only counted.
const MAX_REPORTED: usize = 32;

/// A name's signing key, as this node holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Records under the name must carry this key's signature.
    Bound([u8; PUBLIC_KEY_LEN]),
    /// Forgotten at `since`: still this key's until [`REBIND_HOLD`] has passed.
    Released {
        key: [u8; PUBLIC_KEY_LEN],
        since: Instant,
    },
}

/// What this node believes about one name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known {
    pub(crate) newest: u64,
    pub(crate) binding: Option<Binding>,
    /// When a record under the name was last believed (or its binding restored).
    pub(crate) since: Instant,
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Its name is not a valid node name.
    BadName,
    /// Its generation is implausibly far ahead ([`MAX_CLOCK_AHEAD`]).
    Generation,
    /// Signed by another key than the one its name is bound to.
    Impostor,
    /// Unsigned, under a name already seen signed.
    Unsigned,
    /// The signature does not verify.
    BadSignature,
    /// A new name while [`MAX_NAMES`] are held.
    Full,
}

impl Refused {
    /// How the logs and the status name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::BadName => "bad name",
            Refused::Generation => "generation far ahead",
            Refused::Impostor => "signed by another key",
            Refused::Unsigned => "unsigned after signed",
            Refused::BadSignature => "bad signature",
            Refused::Full => "too many names",
        }
    }
}

/// One refused record, for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The name it claims (escaped when it is not a valid name).
    pub name: String,
    /// Who handed it to this node (the relay, not necessarily its author).
    pub from: Option<SocketAddr>,
    /// The key it claims to be signed by.
    pub key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Why it was refused.
    pub why: Refused,
}

/// A believed record and the blob it came in (passed on as it is: a signature holds only over
/// the owner's bytes).
pub(crate) type Believed = (NodeRecord, Vec<u8>);

/// What the foca handler and the state machine share.
#[derive(Debug)]
pub(crate) struct Inbox {
    names: HashMap<String, Known>,
    received: Vec<Believed>,
    reported: Vec<Refusal>,
    pub(crate) decode_failures: u64,
    pub(crate) unknown_fields: u64,
    /// Refused records, by [`Refused`] in declaration order.
    pub(crate) refused: [u64; 6],
    /// Grows with every change of a binding (for the daemon to persist them).
    pub(crate) bindings_version: u64,
    /// `now`, as the state machine last set it, and what it says of the wall clock.
    pub(crate) now: Instant,
    start: Instant,
    boot_epoch: u64,
}

impl Inbox {
    pub(crate) fn new(boot_epoch: u32, now: Instant) -> Self {
        Self {
            names: HashMap::new(),
            received: Vec::new(),
            reported: Vec::new(),
            decode_failures: 0,
            unknown_fields: 0,
            refused: [0; 6],
            bindings_version: 0,
            now,
            start: now,
            boot_epoch: u64::from(boot_epoch),
        }
    }

    /// Decodes, checks and takes a record blob handed on by `from`; the name if it is news.
    pub(crate) fn offer_blob(&mut self, blob: &[u8], from: Option<SocketAddr>) -> Option<String> {
        let decoded = match decode_record(blob) {
            Ok(d) => d,
            Err(RecordError::BadName) => {
                let name = lossy_name(blob);
                self.refuse(name, from, None, Refused::BadName);
                return None;
            }
            Err(_) => {
                self.decode_failures += 1;
                return None;
            }
        };
        let (key, skipped) = (decoded.claimed_key(), decoded.skipped);
        let (name, generation) = (decoded.record.name.clone(), decoded.record.generation);
        let known = self.names.get(&name).copied();
        if generation >> 32 > self.latest_epoch() {
            return self.refuse(name, from, key, Refused::Generation);
        }
        // Which key the name is bound to after this record, and whether its history restarts.
        let (bind, rebind) = match (known.and_then(|k| k.binding), key) {
            (None, k) => (k, false),
            (Some(Binding::Bound(b)), Some(k)) if k == b => (Some(b), false),
            (Some(Binding::Released { key: b, .. }), Some(k)) if k == b => (Some(b), false),
            (Some(Binding::Released { since, .. }), Some(k))
                if self.now.saturating_duration_since(since) >= REBIND_HOLD =>
            {
                (Some(k), true)
            }
            (Some(_), Some(_)) => return self.refuse(name, from, key, Refused::Impostor),
            (Some(_), None) => return self.refuse(name, from, key, Refused::Unsigned),
        };
        // A signed copy of a generation believed unsigned is news too: a node older than
        // signatures passes records on in its state dumps re-encoded, without their signature.
        let signs_it = known.is_some_and(|k| k.binding.is_none() && generation == k.newest);
        let signs_it = signs_it && key.is_some();
        if !rebind && !signs_it && known.is_some_and(|k| generation <= k.newest) {
            return None;
        }
        if known.is_none() && self.names.len() >= MAX_NAMES {
            return self.refuse(name, from, key, Refused::Full);
        }
        let Ok(record) = decoded.verify(blob) else {
            return self.refuse(name, from, key, Refused::BadSignature);
        };
        self.unknown_fields += u64::from(skipped);
        let binding = bind.map(Binding::Bound);
        if known.and_then(|k| k.binding) != binding {
            self.bindings_version += 1;
        }
        self.names.insert(
            name.clone(),
            Known {
                newest: generation,
                binding,
                since: self.now,
            },
        );
        self.received.push((record, blob.to_vec()));
        Some(name)
    }

    /// Applies a forget signed by a believed record: the name bound to `f.key` is released,
    /// unless a record newer than `f.upto` came under that key. The names released.
    pub(crate) fn release(&mut self, f: &Forget) -> Vec<String> {
        let now = self.now;
        let mut released = Vec::new();
        for (name, known) in &mut self.names {
            if known.binding == Some(Binding::Bound(f.key)) && known.newest <= f.upto {
                known.binding = Some(Binding::Released {
                    key: f.key,
                    since: now,
                });
                released.push(name.clone());
            }
        }
        self.bindings_version += released.len() as u64;
        released
    }

    /// Binds `name` to `key` for good (this node's own name), or as restored from disk.
    pub(crate) fn bind(&mut self, name: &str, key: [u8; PUBLIC_KEY_LEN]) {
        let now = self.now;
        let known = self.names.entry(name.to_owned()).or_insert(Known {
            newest: 0,
            binding: None,
            since: now,
        });
        known.binding = Some(Binding::Bound(key));
        self.bindings_version += 1;
    }

    pub(crate) fn known(&self, name: &str) -> Option<&Known> {
        self.names.get(name)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = (&String, &Known)> {
        self.names.iter()
    }

    /// Forgets everything about `name` (pruned: departed long ago).
    pub(crate) fn remove(&mut self, name: &str) {
        if self.names.remove(name).is_some_and(|k| k.binding.is_some()) {
            self.bindings_version += 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn drain(&mut self) -> Vec<Believed> {
        std::mem::take(&mut self.received)
    }

    pub(crate) fn drain_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.reported)
    }

    /// The latest boot epoch believed: this node's wall clock now, plus [`MAX_CLOCK_AHEAD`].
    fn latest_epoch(&self) -> u64 {
        let up = self.now.saturating_duration_since(self.start);
        self.boot_epoch
            .saturating_add(up.as_secs())
            .saturating_add(MAX_CLOCK_AHEAD.as_secs())
    }

    fn refuse(
        &mut self,
        name: String,
        from: Option<SocketAddr>,
        key: Option<[u8; PUBLIC_KEY_LEN]>,
        why: Refused,
    ) -> Option<String> {
        self.refused[why as usize] += 1;
        if self.reported.len() < MAX_REPORTED {
            self.reported.push(Refusal {
                name,
                from,
                key,
                why,
            });
        }
        None
    }
}

/// The name of a record refused for its name, escaped and cut, so a log line shows it safely.
fn lossy_name(blob: &[u8]) -> String {
    let name = postcard::take_from_bytes::<String>(blob)
        .map(|(n, _)| n)
        .unwrap_or_default();
    name.chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

#[cfg(test)]
#[path = "inbox_tests.rs"]
mod tests;
