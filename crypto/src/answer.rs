//! The round trip a responder measures. An initiator knows its handshake's round trip (from
//! its initiation to the response), a responder did not: a node that is mostly answered to,
//! as a relay between two NAT'd members is, had no RTT to publish. So a [`Session`] notes
//! when it sends a handshake response, and the initiator's first data on the session that
//! response made (which an initiator sends at once: its queued packets, or a keepalive)
//! confirms the handshake and ends the measurement: the network's round trip plus the
//! initiator's processing of one response, in microseconds. The last measurement is kept
//! across rekeys and preshared-key switches until the next one replaces it; a response the
//! initiator never uses (another preshared key, a lost datagram) measures nothing.
//!
//! The last [`PENDING`] responses wait, not only the last one: an initiator that retried (its
//! first response was slow, the retry's lost) may take up an earlier response, and that
//! handshake is complete and measured too. Crossing initiations (both ends initiate at once)
//! need nothing more: each end's data confirms the other's response, and each end also
//! measures as an initiator.
//!
//! [`Session`]: crate::Session

use std::time::Duration;

#[cfg(feature = "mock-clock")]
use mock_instant::Instant;
#[cfg(not(feature = "mock-clock"))]
use std::time::Instant;

/// Responses that wait for their initiator's data at most: boringtun's session ring has 8
/// slots, and the session of a response 8 answers old is gone.
pub(crate) const PENDING: usize = 8;

/// Our last handshake responses until the initiator's data confirms one, and the round trip
/// the last confirmation measured.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// Our sender index in each response, and when it was sent; `next` is the slot the next
    /// response takes (the oldest).
    pending: [Option<(u32, Instant)>; PENDING],
    next: usize,
    rtt: Option<Duration>,
}

impl Answer {
    /// A response went out with our sender index `index` (`None`: unreadable, nothing to wait
    /// for).
    pub(crate) fn sent(&mut self, index: Option<u32>) {
        let Some(index) = index else { return };
        if let Some(slot) = self.pending.get_mut(self.next) {
            *slot = Some((index, Instant::now()));
        }
        self.next = (self.next + 1) % PENDING;
    }

    /// Data on receiver index `receiver` authenticated: true when that confirms one of our
    /// responses (and the round trip is measured). Responses sent before it are forgotten:
    /// the initiator moved past them.
    pub(crate) fn confirm(&mut self, receiver: Option<u32>) -> bool {
        let Some(receiver) = receiver else {
            return false;
        };
        let Some(at) = self
            .pending
            .iter()
            .flatten()
            .find(|(index, _)| *index == receiver)
            .map(|&(_, at)| at)
        else {
            return false;
        };
        self.rtt = Some(at.elapsed());
        for slot in &mut self.pending {
            if slot.is_some_and(|(_, sent)| sent <= at) {
                *slot = None;
            }
        }
        true
    }

    /// The last round trip measured, if any.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}
