//! The preshared-key switch of a [`Session`]: the retiring `Tunn`, its timers, and when it
//! goes (see [`Session::set_psk`] for the scheme).

use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter as BtRateLimiter;
use boringtun::noise::Tunn;
use zeroize::Zeroizing;

use super::*;

/// A preshared-key switch under way.
pub(super) struct Switch {
    /// The `Tunn` under the previous key, with the session in use until `confirmed`.
    pub(super) retiring: Keyed,
    /// The current `Tunn` completed a handshake the peer proved it holds the key for.
    pub(super) confirmed: bool,
    /// Responses to the current `Tunn`'s initiations that failed to authenticate.
    pub(super) rejections: u32,
    /// Whose timers `update_timers` runs first on its next call: it alternates.
    pub(super) current_first: bool,
}

/// What every `Tunn` of the session is built from, except the preshared key.
pub(super) struct Recipe {
    pub(super) local_private: PrivateKey,
    pub(super) peer: PublicKey,
    pub(super) local_index: u32,
    pub(super) rate_limiter: Arc<BtRateLimiter>,
}

impl Session {
    /// The current `Tunn`'s timers during a switch, and its initiations until confirmed.
    pub(super) fn current_timers(&mut self, out: &mut [u8]) -> Action {
        let raw = Raw::from(out.as_ptr(), self.current.tunn.update_timers(out));
        let waiting = match self.switch.as_deref() {
            Some(s) if !s.confirmed => s.rejections >= MAX_PSK_REJECTIONS,
            _ => return self.finish(raw, out, None),
        };
        let raw = match raw {
            Raw::Done | Raw::Err(WireGuardError::ConnectionExpired) if waiting => {
                if self.current.tunn.is_expired() {
                    // Expired while idle (540 s without a session): start clean.
                    self.rebuild_current();
                }
                Raw::Done
            }
            // Not in flight (first call, or boringtun gave up after 90 s): start one.
            Raw::Done | Raw::Err(WireGuardError::ConnectionExpired) => Raw::from(
                out.as_ptr(),
                self.current.tunn.format_handshake_initiation(out, false),
            ),
            other => other,
        };
        self.finish(raw, out, None)
    }

    /// The retiring `Tunn`'s timers, until the current one is confirmed.
    pub(super) fn retiring_timers(&mut self, out: &mut [u8]) -> Action {
        let Some(s) = self.switch.as_deref_mut().filter(|s| !s.confirmed) else {
            return Action::Done;
        };
        let raw = Raw::from(out.as_ptr(), s.retiring.tunn.update_timers(out));
        if let Raw::Err(WireGuardError::ConnectionExpired) = raw {
            self.end_switch();
            return Action::Done;
        }
        self.finish(raw, out, None)
    }

    /// Updates the switch after a datagram went to one of its `Tunn`s with this result.
    pub(super) fn observe(
        &mut self,
        to_current: bool,
        kind: MessageType,
        action: Action,
        out: &[u8],
    ) {
        let Some(s) = self.switch.as_deref_mut() else {
            return;
        };
        let failed = action == Action::Error(SessionError::HandshakeFailed);
        if !to_current {
            if kind == MessageType::Response && failed {
                // The peer no longer holds the old key either: stop waiting for it.
                s.rejections = 0;
            }
            return;
        }
        if s.confirmed {
            return;
        }
        s.confirmed = match (kind, action) {
            // Our initiation's response verified: boringtun answers with a keepalive.
            (MessageType::Response, Action::WriteToNetwork(n)) => out
                .get(..n)
                .and_then(|b| WgDatagram::new_checked(b).ok())
                .is_some_and(|d| d.message_type() == MessageType::Data),
            // Data authenticated under the new keys (a keepalive is `Done`).
            (MessageType::Data, Action::Done)
            | (MessageType::Data, Action::WriteToTunnelV4(..))
            | (MessageType::Data, Action::WriteToTunnelV6(..)) => true,
            _ => false,
        };
        if kind == MessageType::Response && failed {
            s.rejections = s.rejections.saturating_add(1);
            if s.rejections == MAX_PSK_REJECTIONS {
                // Stop boringtun's retries of the handshake in flight: the `Tunn` never had a
                // session, so a fresh one loses nothing.
                self.rebuild_current();
            }
        }
    }

    pub(super) fn retire_if_done(&mut self) {
        let Some(s) = self.switch.as_deref() else {
            return;
        };
        let settled = s.confirmed
            && self
                .current
                .tunn
                .time_since_last_handshake()
                .is_none_or(|age| age >= RETIRE_AFTER);
        if settled || s.retiring.tunn.is_expired() {
            self.end_switch();
        }
    }

    pub(super) fn end_switch(&mut self) {
        if let Some(s) = self.switch.take() {
            self.retire(s.retiring);
        }
    }

    /// Drops a `Tunn`, keeping its byte counts.
    pub(super) fn retire(&mut self, keyed: Keyed) {
        let (_, tx, rx, _, _) = keyed.tunn.stats();
        self.retired_tx += tx as u64;
        self.retired_rx += rx as u64;
    }

    /// Replaces the current `Tunn`, which never had a confirmed session, with a fresh one
    /// under the same key and generation: no handshake in flight, so none retried.
    pub(super) fn rebuild_current(&mut self) {
        let fresh = self
            .recipe
            .build(*self.current.psk, self.current.generation);
        let old = std::mem::replace(&mut self.current, fresh);
        self.retire(old);
    }
}

impl Recipe {
    pub(super) fn build(&self, psk: [u8; 32], generation: u32) -> Keyed {
        let tunn = Tunn::new(
            self.local_private.to_dalek(),
            self.peer.to_dalek(),
            Some(psk),
            None,
            wire::tunnel_index(self.local_index, generation),
            Some(Arc::clone(&self.rate_limiter)),
        );
        Keyed {
            tunn,
            psk: Zeroizing::new(psk),
            generation,
        }
    }
}
