//! TUN → UDP, encrypted: each packet is encrypted by its peer's session straight into the run
//! buffer (see [`crate::datapath::worker::encode_batch`], which routes and groups the result).
//!
//! Each queue holds what it encrypted until it sends its batch, so one peer's counters can
//! leave out of order across queues. Before each packet the peer's `InFlight` is asked whether
//! one more datagram keeps every datagram held by any queue within the peer's replay window
//! (`meshd_crypto::in_flight`); if not, the packet is [`Encoded::Blocked`] and the worker sends
//! or waits. The check is one relaxed load while the peer's traffic is nowhere near the limit.

use std::sync::MutexGuard;

use meshd_crypto::{Action, Session};

use crate::datapath::{EncodeBatch, Encoded};
use crate::routes::{PeerEntry, PeerId};
use crate::stats::DropReason;

/// Packets encrypted per lock of a session. Holding it for a whole batch (~100 µs) made the
/// RX worker wait to decrypt the reverse direction's ACKs, which slowed a TCP stream; one lock
/// per few packets costs nothing measurable when uncontended.
pub(crate) const HOLD_PACKETS: usize = 4;

/// The TX state of one batch: the session lock held across consecutive packets to one peer.
pub struct Sealer<'t> {
    held: Option<(PeerId, MutexGuard<'t, Session>)>,
    held_for: usize,
    /// The queue encoding: its slot in each peer's `InFlight`.
    sender: usize,
}

impl Sealer<'_> {
    pub(crate) fn new(sender: usize) -> Self {
        Sealer {
            held: None,
            held_for: 0,
            sender,
        }
    }
}

impl<'t> EncodeBatch<'t> for Sealer<'t> {
    /// A peer's session stays locked for up to [`HOLD_PACKETS`] consecutive packets to that
    /// peer (a TSO super-packet's segments all go to one), then is released so the RX worker
    /// can decrypt meanwhile.
    #[inline]
    fn encode(
        &mut self,
        id: PeerId,
        peer: &'t PeerEntry,
        packet: &[u8],
        out: &mut [u8],
    ) -> Encoded {
        let Some(wg) = &peer.wg else {
            return Encoded::Drop(DropReason::NoSession);
        };
        if self.held.as_ref().map(|(p, _)| *p) != Some(id) || self.held_for == HOLD_PACKETS {
            // Unlock the previous peer first: a worker never holds two sessions.
            drop(self.held.take());
            self.held = Some((id, wg.lock()));
            self.held_for = 0;
        }
        self.held_for += 1;
        let Some((_, session)) = self.held.as_mut() else {
            return Encoded::Drop(DropReason::NoSession);
        };
        let next = session.data_sent();
        if wg.in_flight.admit(self.sender, next).is_err() {
            // Unlocked before the worker sends or waits.
            self.held = None;
            return Encoded::Blocked;
        }
        match session.encapsulate(packet, out) {
            Action::WriteToNetwork(n) => {
                // Data, not a handshake initiation: it took a counter, and this queue holds it.
                if session.data_sent() != next {
                    wg.in_flight.held(self.sender, next);
                }
                Encoded::Datagram(n)
            }
            // Queued behind a handshake already in flight.
            Action::Done => Encoded::Queued,
            Action::Error(e) => Encoded::PeerDrop(DropReason::from_session(e)),
            Action::WriteToTunnelV4(..) | Action::WriteToTunnelV6(..) => {
                Encoded::Drop(DropReason::Malformed)
            }
        }
    }
}
