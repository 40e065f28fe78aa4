//! One peer's WireGuard session: a wrapper around `boringtun::noise::Tunn` that speaks our
//! types ([`Action`], [`SessionError`], [`SessionStats`]) and never panics on a short buffer.
//!
//! This and [`crate::handshake`] are the only places where boringtun reads the clock (its
//! timers use the monotonic clock directly). With the `mock-clock` feature those reads go to
//! a per-thread virtual clock, advanced by `crate::mock_clock::advance` in tests.
//!
//! Buffer sizes: `out` must be at least [`MIN_OUT_LEN`] bytes, and at least the input plus
//! [`crate::wire::DATA_OVERHEAD`] for `encapsulate`, the datagram's length for
//! `decapsulate`, and the largest packet ever encapsulated plus the overhead for
//! `flush_queued`. A buffer of 65,535 + 32 bytes always suffices.

use std::net::IpAddr;

use boringtun::noise::{Tunn, TunnResult};

use crate::action::{Action, SessionError, SessionStats};
use crate::handshake::RateLimiter;
use crate::keys::{PrivateKey, PublicKey};
use crate::wire::{self, MessageType, WgDatagram, DATA_OVERHEAD, INITIATION_LEN};

/// Smallest `out` buffer any call accepts: a handshake initiation.
pub const MIN_OUT_LEN: usize = INITIATION_LEN;
/// Largest local index: boringtun keeps the low 8 bits of the 32-bit index for itself, and the
/// top bit of the other 24 is the tunnel generation ([`wire::GENERATION_BIT`]).
pub const MAX_LOCAL_INDEX: u32 = wire::GENERATION_BIT - 1;

/// The WireGuard session with one peer. Not `Sync`: the daemon keeps each behind its own lock.
pub struct Session {
    tunn: Tunn,
    peer: PublicKey,
    local_index: u32,
    /// Largest packet given to `encapsulate`, so `flush_queued` can size-check `out`
    /// (boringtun panics when a queued packet does not fit).
    largest_packet: usize,
    stats: SessionStats,
}

impl Session {
    /// A session with `peer_public`, keyed by our private key and the pair's preshared key,
    /// with handshakes admitted by the node's shared `rate_limiter`. `local_index` (23 bits)
    /// is the daemon's slot for this peer: it comes back in the receiver index of every
    /// datagram the peer sends us (see [`crate::wire::local_index_of`]).
    pub fn new(
        local_private: &PrivateKey,
        local_index: u32,
        peer_public: PublicKey,
        psk: [u8; 32],
        rate_limiter: &RateLimiter,
    ) -> Result<Self, SessionError> {
        if local_index > MAX_LOCAL_INDEX {
            return Err(SessionError::IndexOutOfRange);
        }
        let tunn = Tunn::new(
            local_private.to_dalek(),
            peer_public.to_dalek(),
            Some(psk),
            None,
            wire::tunnel_index(local_index, 0),
            Some(rate_limiter.shared()),
        );
        Ok(Self {
            tunn,
            peer: peer_public,
            local_index,
            largest_packet: 0,
            stats: SessionStats::default(),
        })
    }

    /// Encrypts an IP packet for the peer. Without a session, the packet is queued (up to
    /// boringtun's limit) and a handshake initiation is returned instead, unless one is in
    /// flight, in which case the result is `Done`.
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN || out.len() < packet.len().saturating_add(DATA_OVERHEAD) {
            return self.fail(SessionError::BufferTooSmall);
        }
        self.largest_packet = self.largest_packet.max(packet.len());
        let raw = Raw::from(out.as_ptr(), self.tunn.encapsulate(packet, out));
        self.finish(raw, out, None)
    }

    /// Handles a datagram from the peer: decrypts data, answers handshakes, takes cookies.
    /// `src` is the datagram's source address (needed to answer with a cookie under load).
    pub fn decapsulate(&mut self, src: Option<IpAddr>, datagram: &[u8], out: &mut [u8]) -> Action {
        let kind = match WgDatagram::new_checked(datagram) {
            Ok(d) => d.message_type(),
            // boringtun treats an empty datagram as "flush"; we never let network bytes mean that.
            Err(_) => return self.fail(SessionError::Malformed),
        };
        if out.len() < MIN_OUT_LEN || out.len() < datagram.len() {
            return self.fail(SessionError::BufferTooSmall);
        }
        let raw = Raw::from(out.as_ptr(), self.tunn.decapsulate(src, datagram, out));
        self.finish(raw, out, Some(kind))
    }

    /// Sends one packet queued while there was no session. Call after a `decapsulate` that
    /// returned `WriteToNetwork`, until this returns `Done`.
    pub fn flush_queued(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN || out.len() < self.largest_packet + DATA_OVERHEAD {
            return self.fail(SessionError::BufferTooSmall);
        }
        let raw = Raw::from(out.as_ptr(), self.tunn.decapsulate(None, &[], out));
        self.finish(raw, out, None)
    }

    /// Runs the protocol timers: handshake retries, rekeys, keepalives, expiry. Call every
    /// 250 ms or so; the result may be a handshake initiation or a keepalive to send.
    pub fn update_timers(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN {
            return self.fail(SessionError::BufferTooSmall);
        }
        let raw = Raw::from(out.as_ptr(), self.tunn.update_timers(out));
        self.finish(raw, out, None)
    }

    /// Starts a handshake now unless one is in flight (e.g. when the daemon learns the peer).
    pub fn initiate_handshake(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN {
            return self.fail(SessionError::BufferTooSmall);
        }
        let raw = Raw::from(
            out.as_ptr(),
            self.tunn.format_handshake_initiation(out, false),
        );
        self.finish(raw, out, None)
    }

    /// Counters and the age of the current session.
    pub fn stats(&self) -> SessionStats {
        let (last_handshake, tx, rx, loss, rtt) = self.tunn.stats();
        SessionStats {
            last_handshake,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
            estimated_loss: loss,
            handshake_rtt_ms: rtt,
            rekeys: self.stats.handshakes.saturating_sub(1),
            ..self.stats
        }
    }

    /// The peer's static public key.
    pub fn peer_public(&self) -> &PublicKey {
        &self.peer
    }

    /// The index given to [`Session::new`].
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// True once the connection expired (no new keys for 540 s); the next `encapsulate`
    /// starts over with a handshake.
    pub fn is_expired(&self) -> bool {
        self.tunn.is_expired()
    }

    fn fail(&mut self, e: SessionError) -> Action {
        self.stats.count_error(e);
        Action::Error(e)
    }

    /// Turns boringtun's result into an [`Action`] on `out`, updating counters. `kind` is the
    /// type of the datagram decapsulated, if any.
    fn finish(&mut self, raw: Raw, out: &mut [u8], kind: Option<MessageType>) -> Action {
        let (offset, len) = match raw {
            Raw::Done => return Action::Done,
            Raw::Err(e) => return self.fail(SessionError::from_wireguard(e, kind)),
            Raw::Net(o, l) | Raw::V4(o, l, _) | Raw::V6(o, l, _) => (o, l),
        };
        let Some(end) = offset.checked_add(len).filter(|&end| end <= out.len()) else {
            return self.fail(SessionError::Internal);
        };
        if offset != 0 {
            out.copy_within(offset..end, 0);
        }
        match raw {
            Raw::Net(..) => {
                let sent = WgDatagram::new_checked(&out[..len]).map(|d| d.message_type());
                match (kind, sent) {
                    (Some(_), Ok(MessageType::CookieReply)) => self.stats.cookie_replies_sent += 1,
                    // We answered an initiation, or confirmed our own with a keepalive.
                    (Some(MessageType::Initiation), Ok(MessageType::Response))
                    | (Some(MessageType::Response), Ok(MessageType::Data)) => {
                        self.stats.handshakes += 1
                    }
                    _ => {}
                }
                Action::WriteToNetwork(len)
            }
            Raw::V4(_, _, a) => Action::WriteToTunnelV4(len, a),
            Raw::V6(_, _, a) => Action::WriteToTunnelV6(len, a),
            Raw::Done | Raw::Err(_) => Action::Done,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// boringtun's result with the borrowed slice replaced by its place in `out`, so the borrow
/// ends before we touch `out` again.
enum Raw {
    Done,
    Err(boringtun::noise::errors::WireGuardError),
    Net(usize, usize),
    V4(usize, usize, std::net::Ipv4Addr),
    V6(usize, usize, std::net::Ipv6Addr),
}

impl Raw {
    fn from(base: *const u8, r: TunnResult<'_>) -> Self {
        // boringtun always answers in `out`; the offset is 0 in every version we know, and is
        // computed rather than assumed. An out-of-range offset is caught in `finish`.
        let at = |s: &[u8]| ((s.as_ptr() as usize).wrapping_sub(base as usize), s.len());
        match r {
            TunnResult::Done => Raw::Done,
            TunnResult::Err(e) => Raw::Err(e),
            TunnResult::WriteToNetwork(s) => {
                let (o, l) = at(s);
                Raw::Net(o, l)
            }
            TunnResult::WriteToTunnelV4(s, a) => {
                let (o, l) = at(s);
                Raw::V4(o, l, a)
            }
            TunnResult::WriteToTunnelV6(s, a) => {
                let (o, l) = at(s);
                Raw::V6(o, l, a)
            }
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
