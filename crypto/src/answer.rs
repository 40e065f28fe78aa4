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
//! [`Session`]: crate::Session

use std::time::Duration;

#[cfg(feature = "mock-clock")]
use mock_instant::Instant;
#[cfg(not(feature = "mock-clock"))]
use std::time::Instant;

/// Our last handshake response until the initiator's data confirms it, and the round trip
/// the last confirmation measured.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// Our sender index in that response, and when it was sent.
    pending: Option<(u32, Instant)>,
    rtt: Option<Duration>,
}

impl Answer {
    /// A response went out with our sender index `index` (`None`: unreadable, forget it).
    pub(crate) fn sent(&mut self, index: Option<u32>) {
        self.pending = index.map(|i| (i, Instant::now()));
    }

    /// Data on receiver index `receiver` authenticated: true when that confirms our last
    /// response (and the round trip is measured).
    pub(crate) fn confirm(&mut self, receiver: Option<u32>) -> bool {
        match self.pending {
            Some((index, at)) if Some(index) == receiver => {
                self.rtt = Some(at.elapsed());
                self.pending = None;
                true
            }
            _ => false,
        }
    }

    /// The last round trip measured, if any.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}
