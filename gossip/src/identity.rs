//! The SWIM identity and the foca broadcast handler that carries node records.
//!
//! foca keys members by [`NodeId::addr`] (the gossip socket address) and lets a node that was
//! declared down come back under a renewed identity: the boot epoch the daemon passes (seconds
//! since the Unix epoch at start, say) makes a restarted node's identity win over the one the
//! cluster remembers as down, and [`foca::Identity::renew`] bumps it by one when the cluster
//! declares us down while we are in fact alive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::inbox::Inbox;

/// A node's SWIM identity: its gossip address and a boot epoch that grows across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Gossip socket address: the member key inside foca.
    pub addr: SocketAddr,
    /// Grows with every restart and every rejoin after being declared down.
    pub epoch: u32,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            addr: self.addr,
            // Never wraps: at the last epoch foca keeps the identity it has.
            epoch: self.epoch.checked_add(1)?,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.epoch > adversary.epoch
    }
}

/// Broadcast key: a newer record of a node replaces the queued older one. foca compares the
/// key against its whole queue on every insert, so it is a hash of the name rather than the
/// name (a collision only drops a queued rumour early; pulls make up for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordKey(u64);

impl RecordKey {
    fn of(name: &str) -> Self {
        Self(crate::subnet::fnv1a(name.as_bytes()))
    }
}

impl foca::Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Shared handle to the inbox. A mutex rather than a `RefCell` keeps [`crate::Gossip`] `Send`;
/// it is only ever locked from the thread driving the state machine, so it never contends.
#[derive(Debug, Clone)]
pub(crate) struct SharedInbox(Arc<Mutex<Inbox>>);

impl SharedInbox {
    pub(crate) fn new(inbox: Inbox) -> Self {
        Self(Arc::new(Mutex::new(inbox)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The foca side of record dissemination.
pub(crate) struct RecordHandler(pub(crate) SharedInbox);

/// A custom broadcast that is not a record; foca drops the rest of that packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("custom broadcast is not a node record")]
pub(crate) struct BadRecord;

impl foca::BroadcastHandler<NodeId> for RecordHandler {
    type Key = RecordKey;
    type Error = BadRecord;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<RecordKey>, BadRecord> {
        let mut inbox = self.0.lock();
        let before = inbox.decode_failures;
        let news = inbox.offer_blob(data, sender.map(|s| s.addr));
        if inbox.decode_failures != before {
            return Err(BadRecord);
        }
        Ok(news.map(|name| RecordKey::of(&name)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::record::encode_record;
    use crate::record::tests::sample;
    use foca::{BroadcastHandler, Identity};
    use std::time::Instant;

    #[test]
    fn only_newer_generations_are_news_and_refusals_are_not_passed_on() {
        let inbox = SharedInbox::new(Inbox::new(1, Instant::now()));
        let mut h = RecordHandler(inbox.clone());
        let blob = |g| {
            let mut r = sample("n");
            r.generation = g;
            encode_record(&r, None).unwrap()
        };
        assert!(h.receive_item(&blob(2), None).unwrap().is_some());
        assert!(h.receive_item(&blob(2), None).unwrap().is_none());
        assert!(h.receive_item(&blob(1), None).unwrap().is_none());
        assert!(h.receive_item(&blob(3), None).unwrap().is_some());
        // Refused (from the future), so not re-broadcast, but no decode failure either.
        assert!(h.receive_item(&blob(u64::MAX), None).unwrap().is_none());
        assert!(h.receive_item(b"\xff\xff", None).is_err());
        assert_eq!(inbox.lock().drain().len(), 2);
    }

    #[test]
    fn renewed_identity_wins_and_never_wraps() {
        let id = NodeId {
            addr: "127.0.0.1:1".parse().unwrap(),
            epoch: 5,
        };
        let next = id.renew().unwrap();
        assert!(next.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&next));
        let last = NodeId {
            epoch: u32::MAX,
            ..id
        };
        assert_eq!(last.renew(), None);
    }
}
