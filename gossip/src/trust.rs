//! The operator's side of the name bindings (`inbox.rs` decides which records are believed):
//! `meshd forget`, which spreads in this node's signed record, the forgets other members
//! publish, and the bindings the daemon persists so that a restart keeps what it learnt.
//!
//! What a compromised member can do with a forget: release the binding of any name (every node
//! logs who asked), then race the owner for it with its own key. It loses against an owner that
//! is alive: the owner sees its own key forgotten and publishes a newer record, which every node
//! takes over another key for [`crate::inbox::REBIND_HOLD`]. It wins against an owner that is
//! down or cut off for longer than that, which is also the case `forget` exists for (a node
//! reinstalled without its state directory, its old key gone).

use std::time::{Duration, Instant};

use crate::gossip::Gossip;
use crate::inbox::Binding;
use crate::name::is_valid_name;
use crate::record::{encode_record, Forget, RecordError, MAX_FORGETS};
use crate::signature::PUBLIC_KEY_LEN;
use crate::Event;

/// How long this node's record carries a forget: every member hears a record change within
/// seconds, and one that was away longer re-learns the name anyway (its binding is pruned with
/// the departed names, `bounds.rs`).
pub(crate) const FORGET_KEEP: Duration = Duration::from_secs(10 * 60);

/// Why `meshd forget` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    /// The name is this node's own.
    #[error("that is this node's own name: run `meshd forget` on another node")]
    Own,
    /// No record under that name was ever believed here signed (unknown, or an older meshd).
    #[error("no signing key is bound to that name on this node (unknown name, or a node older than signatures)")]
    NotBound,
    /// This node's record has no room left for the forget (it is at every other bound).
    #[error("this node's gossip record has no room for a forget")]
    NoRoom,
    /// The node signs nothing (it plays a node from before signatures).
    #[error("this node does not sign its record")]
    Unsigned,
}

impl Gossip {
    /// `meshd forget NAME`: releases `name` from the signing key it is bound to, here and, by
    /// this node's next record, on every member. The name binds anew to the next key seen
    /// after [`crate::inbox::REBIND_HOLD`], unless its owner outbids the forget meanwhile.
    /// Returns the key forgotten.
    pub fn forget(
        &mut self,
        name: &str,
        now: Instant,
    ) -> Result<[u8; PUBLIC_KEY_LEN], ForgetError> {
        if name == self.me.name {
            return Err(ForgetError::Own);
        }
        let Some(key) = self.signing_key.clone() else {
            return Err(ForgetError::Unsigned);
        };
        self.inbox().now = now;
        let (bound, upto) = match self.inbox().known(name) {
            Some(k) => match k.binding {
                Some(Binding::Bound(b) | Binding::Released { key: b, .. }) => (b, k.newest),
                None => return Err(ForgetError::NotBound),
            },
            None => return Err(ForgetError::NotBound),
        };
        let f = Forget { key: bound, upto };
        let before = (self.me.forgets.clone(), self.forgot_at.clone());
        self.me.forgets.retain(|x| x.key != bound);
        self.forgot_at.retain(|(k, _)| *k != bound);
        self.me.forgets.push(f);
        self.forgot_at.push((bound, now));
        while self.me.forgets.len() > MAX_FORGETS {
            self.me.forgets.remove(0);
            self.forgot_at.remove(0);
        }
        if let Err(RecordError::TooLong) = encode_record(&self.me, Some(&key)) {
            (self.me.forgets, self.forgot_at) = before;
            return Err(ForgetError::NoRoom);
        }
        self.publish_record();
        let own = self.me.name.clone();
        self.apply_forget(&own, f);
        self.after_swim(now);
        Ok(bound)
    }

    /// The names bound to a signing key here (released ones with the key they still hold), for
    /// the daemon to persist.
    pub fn bindings(&self) -> Vec<(String, [u8; PUBLIC_KEY_LEN])> {
        self.inbox()
            .names()
            .filter_map(|(name, k)| match k.binding? {
                Binding::Bound(key) | Binding::Released { key, .. } => Some((name.clone(), key)),
            })
            .collect()
    }

    /// Grows whenever [`Gossip::bindings`] changes.
    pub fn bindings_version(&self) -> u64 {
        self.inbox().bindings_version
    }

    /// Restores bindings persisted by an earlier run (call once, before joining). Our own name
    /// keeps our key; invalid names are skipped; at most [`crate::inbox::MAX_NAMES`].
    pub fn restore_bindings(
        &mut self,
        bindings: impl IntoIterator<Item = (String, [u8; PUBLIC_KEY_LEN])>,
    ) {
        let mut inbox = self.inbox.lock();
        for (name, key) in bindings {
            let room = inbox.len() < crate::inbox::MAX_NAMES;
            if room && name != self.me.name && is_valid_name(&name) && inbox.known(&name).is_none()
            {
                inbox.bind(&name, key);
            }
        }
    }

    /// Applies a forget that `issuer` signed (or this node issued).
    pub(crate) fn apply_forget(&mut self, issuer: &str, f: Forget) {
        if self.me.signer == Some(f.key) {
            // Our own key: we are alive, so outbid the forget everywhere, once per forget.
            if self.defended.insert(f) {
                if self.defended.len() > 4 * MAX_FORGETS {
                    self.defended.clear();
                    self.defended.insert(f);
                }
                self.publish_record();
                self.events.push_back(Event::OwnKeyForgotten {
                    by: issuer.to_owned(),
                });
            }
            return;
        }
        let released = self.inbox().release(&f);
        for name in released {
            self.events.push_back(Event::KeyForgotten {
                name,
                by: issuer.to_owned(),
            });
        }
    }

    /// Each sweep: forgets older than [`FORGET_KEEP`] leave this node's record.
    pub(crate) fn expire_forgets(&mut self, now: Instant) {
        let before = self.forgot_at.len();
        self.forgot_at
            .retain(|(_, at)| now.saturating_duration_since(*at) < FORGET_KEEP);
        if self.forgot_at.len() != before {
            let keep: Vec<[u8; PUBLIC_KEY_LEN]> = self.forgot_at.iter().map(|(k, _)| *k).collect();
            self.me.forgets.retain(|f| keep.contains(&f.key));
            self.publish_record();
        }
    }
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
