//! One peer's WireGuard session: a wrapper around `boringtun::noise::Tunn` that speaks our
//! types ([`Action`], [`SessionError`], [`SessionStats`]), never panics on a short buffer, and
//! changes the pair's preshared key without dropping the session ([`Session::set_psk`], which
//! runs a second `Tunn` for the switch).
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
use std::time::Duration;

use boringtun::noise::Tunn;
use zeroize::Zeroizing;

use crate::action::{Action, SessionError, SessionStats};
use crate::answer::Answer;
use crate::handshake::RateLimiter;
use crate::keys::{PrivateKey, PublicKey};
use crate::wire::{self, MessageType, WgDatagram, DATA_OVERHEAD, INITIATION_LEN};

/// Smallest `out` buffer any call accepts: a handshake initiation.
pub const MIN_OUT_LEN: usize = INITIATION_LEN;
/// Largest local index: boringtun keeps the low 8 bits of the 32-bit index for itself, and the
/// top bit of the other 24 is the tunnel generation ([`wire::GENERATION_BIT`]).
pub const MAX_LOCAL_INDEX: u32 = wire::GENERATION_BIT - 1;
/// How long the retiring tunnel of a preshared-key switch is kept once the new key's session
/// is confirmed (by boringtun's clock, as the age of that session), so that datagrams the
/// peer sent on the old session before it switched are still decrypted.
pub const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// Handshake responses under a new preshared key that the peer may fail (it still holds the
/// old key) before the session stops initiating and waits for the peer's initiation. Each
/// initiation the peer answers takes one of the 8 slots of its boringtun session ring, and the
/// 8th would overwrite the live session it has with us; 4 leaves room for lost responses.
pub const MAX_PSK_REJECTIONS: u32 = 4;
/// How far behind the highest counter received a data message may arrive and still be taken:
/// boringtun's receive window (`N_BITS`, 16 words of 64 bits). A sender that lets two of its
/// datagrams reach the peer further apart than this, the later counter first, loses the other
/// as a replay. [`Session::data_sent`] is what a sender bounds that with.
pub const REPLAY_WINDOW: u64 = 1024;

/// The WireGuard session with one peer. Not `Sync`: the daemon keeps each behind its own lock.
///
/// # Changing the preshared key
///
/// boringtun cannot change a `Tunn`'s preshared key, and a new `Tunn` starts without a
/// session, which it cannot get until the peer holds the new key too (the peer switches a few
/// seconds before or after us). So [`Session::set_psk`] builds a *current* `Tunn` under the new
/// key and keeps the old one, with its live session, as *retiring*:
///
/// - **Indices.** Each `Tunn` is built with the local index plus a generation bit
///   ([`wire::GENERATION_BIT`]) that each switch flips, so the two never hand out the same
///   receiver index. Data, responses and cookie replies go to the `Tunn` of their receiver
///   index's generation ([`wire::generation_of`]); initiations, which carry none, to the
///   current one. [`wire::local_index_of`] masks the bit off, so the daemon's demultiplexer
///   does not see it.
/// - **Confirmation.** The current `Tunn` is *confirmed* once the peer has proved it holds the
///   new key: a response to our initiation verified, or data decrypted under it. boringtun's
///   "has a session" does not prove that: an initiation does not depend on the preshared key,
///   so whoever still holds the old key answers it with a session the other side will never
///   use.
/// - **Sending.** On the retiring `Tunn` until the current one is confirmed, then on the
///   current one: traffic never waits for the new handshake.
/// - **Handshakes.** [`Session::update_timers`] makes the current `Tunn` initiate until it is
///   confirmed. While the peer holds the old key, its responses fail to authenticate here
///   ([`SessionError::HandshakeFailed`]); once it switches, its own initiation or our next
///   one completes. After [`MAX_PSK_REJECTIONS`] such failures we stop initiating and wait
///   for the peer's initiation, and start again if a handshake of the retiring `Tunn` fails
///   too (the peer restarted, or moved on). Initiations of the peer's still under the old
///   key (its rekeys) reach our current `Tunn` and fail at the peer: the old session can
///   only be renewed by us while we wait.
/// - **Retirement.** The retiring `Tunn` decrypts what was sent on the old session until the
///   current one has been confirmed for [`RETIRE_AFTER`], then it is dropped (with any
///   packets it still had queued for a handshake); it is dropped earlier if it expires. It
///   stops running its timers (keepalives, rekeys) at confirmation.
/// - **Switching again** before the current `Tunn` was confirmed discards that one (it never
///   had a session) and keeps the retiring one; switching back to the retiring one's key makes
///   it current again, with no handshake.
///
/// With nothing retiring, every call costs what it would on a bare `Tunn`, plus one branch.
pub struct Session {
    /// The `Tunn` under the current preshared key: every initiation, and all traffic once it
    /// is confirmed.
    current: Keyed,
    /// The switch under way, if any. Boxed: most sessions never have one.
    switch: Option<Box<Switch>>,
    recipe: Recipe,
    /// Largest packet given to `encapsulate`, so `flush_queued` can size-check `out`
    /// (boringtun panics when a queued packet does not fit).
    largest_packet: usize,
    /// `encapsulate` queued a packet (there was no session to send it on) and no
    /// `flush_queued` has drained the queue since.
    queued: bool,
    /// Data messages (keepalives too) produced, over every `Tunn` (see [`Session::data_sent`]).
    data_sent: u64,
    /// Bytes counted by `Tunn`s since dropped (boringtun counts per `Tunn`).
    retired_tx: u64,
    retired_rx: u64,
    /// Our last handshake response until the initiator's first data on that session confirms
    /// it, and the round trip that measured ([`crate::answer`]).
    answer: Answer,
    stats: SessionStats,
}

/// A `Tunn` with the preshared key and the generation it was built with.
struct Keyed {
    tunn: Tunn,
    psk: Zeroizing<[u8; 32]>,
    generation: u32,
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
        let recipe = Recipe {
            local_private: local_private.clone(),
            peer: peer_public,
            local_index,
            rate_limiter: rate_limiter.shared(),
        };
        Ok(Self {
            current: recipe.build(psk, 0),
            switch: None,
            recipe,
            largest_packet: 0,
            queued: false,
            data_sent: 0,
            retired_tx: 0,
            retired_rx: 0,
            answer: Answer::default(),
            stats: SessionStats::default(),
        })
    }

    /// Changes the pair's preshared key without losing the session (see the type's docs):
    /// the next [`Session::update_timers`] starts a handshake under the new key, or call
    /// [`Session::initiate_handshake`] now. Returns false, changing nothing, if `psk` is the
    /// current key.
    ///
    /// Of the `Tunn`s there are, the one whose session is in use is kept as retiring, unless
    /// it has no session, in which case (and with it any packets it had queued for a
    /// handshake) it is dropped; the other one, if any, is dropped too.
    pub fn set_psk(&mut self, psk: [u8; 32]) -> bool {
        if *self.current.psk == psk {
            return false;
        }
        self.stats.psk_switches += 1;
        // The session in use is the retiring one's until the current one is confirmed.
        let keep_current = self.switch.as_deref().is_none_or(|s| s.confirmed);
        let keep_generation = self.current.generation ^ u32::from(!keep_current);
        let fresh = self.recipe.build(psk, keep_generation ^ 1);
        let old_current = std::mem::replace(&mut self.current, fresh);
        let (keep, discard) = match self.switch.take() {
            None => (old_current, None),
            Some(s) if keep_current => (old_current, Some(s.retiring)),
            Some(s) => (s.retiring, Some(old_current)),
        };
        if let Some(discard) = discard {
            self.retire(discard);
        }
        if keep.tunn.time_since_last_handshake().is_none() {
            self.retire(keep);
        } else if *keep.psk == psk {
            // Back to the key of the live session, which never stopped working.
            let unused = std::mem::replace(&mut self.current, keep);
            self.retire(unused);
        } else {
            self.switch = Some(Box::new(Switch {
                retiring: keep,
                confirmed: false,
                rejections: 0,
                current_first: false,
            }));
        }
        true
    }

    /// Encrypts an IP packet for the peer. Without a session, the packet is queued (up to
    /// boringtun's limit) and a handshake initiation is returned instead, unless one is in
    /// flight, in which case the result is `Done`.
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN || out.len() < packet.len().saturating_add(DATA_OVERHEAD) {
            return self.fail(SessionError::BufferTooSmall);
        }
        self.largest_packet = self.largest_packet.max(packet.len());
        let tunn = match self.switch.as_deref_mut() {
            Some(s) if !s.confirmed => &mut s.retiring.tunn,
            _ => &mut self.current.tunn,
        };
        let raw = Raw::from(out.as_ptr(), tunn.encapsulate(packet, out));
        // Without a session the packet is queued, and the answer is an initiation or nothing.
        let sent_data = matches!(raw, Raw::Net(o, _) if out.get(o) == Some(&4));
        if !sent_data {
            self.queued = true;
        }
        self.finish(raw, out, None)
    }

    /// Packets may be waiting for a session ([`Session::flush_queued`] sends them).
    pub fn has_queued(&self) -> bool {
        self.queued
    }

    /// Handles a datagram from the peer: decrypts data, answers handshakes, takes cookies.
    /// `src` is the datagram's source address (needed to answer with a cookie under load).
    pub fn decapsulate(&mut self, src: Option<IpAddr>, datagram: &[u8], out: &mut [u8]) -> Action {
        let d = match WgDatagram::new_checked(datagram) {
            Ok(d) => d,
            // boringtun treats an empty datagram as "flush"; we never let network bytes mean that.
            Err(_) => return self.fail(SessionError::Malformed),
        };
        let kind = d.message_type();
        if out.len() < MIN_OUT_LEN || out.len() < datagram.len() {
            return self.fail(SessionError::BufferTooSmall);
        }
        let receiver = d.receiver_index();
        let Some(switch) = self.switch.as_deref_mut() else {
            let raw = Raw::from(
                out.as_ptr(),
                self.current.tunn.decapsulate(src, datagram, out),
            );
            let action = self.finish(raw, out, Some(kind));
            self.confirm_response(kind, receiver, action);
            return action;
        };
        let generation = self.current.generation;
        let to_current = d
            .receiver_index()
            .is_none_or(|i| wire::generation_of(i) == generation);
        let tunn = if to_current {
            &mut self.current.tunn
        } else {
            &mut switch.retiring.tunn
        };
        let raw = Raw::from(out.as_ptr(), tunn.decapsulate(src, datagram, out));
        let action = self.finish(raw, out, Some(kind));
        self.confirm_response(kind, receiver, action);
        self.observe(to_current, kind, action, out);
        action
    }

    /// Data that authenticated on the session our last response made: that handshake is
    /// complete.
    fn confirm_response(&mut self, kind: MessageType, receiver: Option<u32>, action: Action) {
        let authenticated = matches!(
            action,
            Action::Done | Action::WriteToTunnelV4(..) | Action::WriteToTunnelV6(..)
        );
        if kind == MessageType::Data && authenticated && self.answer.confirm(receiver) {
            self.stats.handshakes += 1;
        }
    }

    /// Sends one packet queued while there was no session. Call after a `decapsulate` that
    /// returned `WriteToNetwork`, until this returns `Done`. During a key switch, the current
    /// `Tunn`'s queue goes first, then the retiring one's.
    pub fn flush_queued(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN || out.len() < self.largest_packet + DATA_OVERHEAD {
            return self.fail(SessionError::BufferTooSmall);
        }
        // A `Tunn` with no current session would take each queued packet from the front of
        // its queue and queue it again at the back (and answer with an initiation): the queue
        // would come out rotated. The responder of a handshake is in that state until the
        // initiator's first data arrives, so such a `Tunn` keeps its queue until then.
        let mut raw = Raw::Done;
        if self.current.tunn.time_since_last_handshake().is_some() {
            raw = Raw::from(out.as_ptr(), self.current.tunn.decapsulate(None, &[], out));
        }
        if let (Raw::Done, Some(s)) = (&raw, self.switch.as_deref_mut()) {
            if s.retiring.tunn.time_since_last_handshake().is_some() {
                raw = Raw::from(out.as_ptr(), s.retiring.tunn.decapsulate(None, &[], out));
            }
        }
        if matches!(raw, Raw::Done) {
            let current = self.current.tunn.time_since_last_handshake().is_some();
            let retiring = self
                .switch
                .as_deref()
                .is_none_or(|s| s.retiring.tunn.time_since_last_handshake().is_some());
            // Drained, unless a Tunn still waits for its session to send what it holds.
            self.queued = !(current && retiring);
        }
        self.finish(raw, out, None)
    }

    /// Runs the protocol timers: handshake retries, rekeys, keepalives, expiry. Call every
    /// 100 to 250 ms; the result may be a handshake initiation or a keepalive to send.
    ///
    /// During a key switch it first drops the retiring `Tunn` if its time is up (confirmed
    /// for [`RETIRE_AFTER`], or expired). Then it runs both `Tunn`s, the first one alternating
    /// between calls, and returns the first result that is not `Done`: the other one then runs
    /// first on the next call, so neither waits more than one call. For the current `Tunn`,
    /// until it is confirmed, a `Done` from its timers is followed by an initiation unless one
    /// is in flight (boringtun retries it every 5 s and gives up after 90 s; the call after
    /// that starts over), or unless [`MAX_PSK_REJECTIONS`] were failed. The retiring `Tunn`
    /// runs its timers (keepalives, its own rekeys) until the current one is confirmed, and
    /// its expiry retires it instead of being returned.
    pub fn update_timers(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN {
            return self.fail(SessionError::BufferTooSmall);
        }
        self.retire_if_done();
        let Some(s) = self.switch.as_deref_mut() else {
            let raw = Raw::from(out.as_ptr(), self.current.tunn.update_timers(out));
            return self.finish(raw, out, None);
        };
        s.current_first = !s.current_first;
        let order = [s.current_first, !s.current_first];
        for current in order {
            let action = if current {
                self.current_timers(out)
            } else {
                self.retiring_timers(out)
            };
            if action != Action::Done {
                return action;
            }
        }
        Action::Done
    }

    /// Starts a handshake now unless one is in flight (e.g. when the daemon learns the peer,
    /// or right after [`Session::set_psk`]). Always under the current preshared key.
    pub fn initiate_handshake(&mut self, out: &mut [u8]) -> Action {
        if out.len() < MIN_OUT_LEN {
            return self.fail(SessionError::BufferTooSmall);
        }
        let raw = Raw::from(
            out.as_ptr(),
            self.current.tunn.format_handshake_initiation(out, false),
        );
        self.finish(raw, out, None)
    }

    /// Counters and the age of the session in use, summed over both `Tunn`s during a key
    /// switch and kept across switches.
    pub fn stats(&self) -> SessionStats {
        let (last_handshake, tx, rx, loss, rtt) = self.current.tunn.stats();
        let mut st = SessionStats {
            // boringtun dates a responder's session from its answer; until one is confirmed
            // there is none.
            last_handshake: last_handshake.filter(|_| self.stats.handshakes > 0),
            tx_bytes: self.retired_tx + tx as u64,
            rx_bytes: self.retired_rx + rx as u64,
            estimated_loss: loss,
            handshake_rtt_ms: rtt,
            responder_rtt: self.answer.rtt(),
            rekeys: self.stats.handshakes.saturating_sub(1),
            ..self.stats
        };
        if let Some(s) = &self.switch {
            let (last_handshake, tx, rx, loss, rtt) = s.retiring.tunn.stats();
            st.tx_bytes += tx as u64;
            st.rx_bytes += rx as u64;
            st.handshake_rtt_ms = st.handshake_rtt_ms.or(rtt);
            if !s.confirmed {
                st.last_handshake = last_handshake.filter(|_| self.stats.handshakes > 0);
                st.estimated_loss = loss;
            }
            st.retiring = true;
            st.psk_pending = !s.confirmed;
            st.psk_rejections = s.rejections;
        }
        st
    }

    /// Data messages this session has produced so far, whichever call produced them
    /// (`encapsulate`, `flush_queued`, a keepalive from `update_timers`) and on whichever
    /// `Tunn`. Each took the next counter of its `Tunn`, so two data messages' counters are never
    /// further apart than their places in this count: a sender that keeps the count between its
    /// oldest unsent datagram and its next one under [`REPLAY_WINDOW`] keeps the peer's
    /// window.
    pub fn data_sent(&self) -> u64 {
        self.data_sent
    }

    /// The peer's static public key.
    pub fn peer_public(&self) -> &PublicKey {
        &self.recipe.peer
    }

    /// The index given to [`Session::new`] (without the generation bit).
    pub fn local_index(&self) -> u32 {
        self.recipe.local_index
    }

    /// True once the connection expired (no new keys for 540 s); the next `encapsulate`
    /// starts over with a handshake. During a key switch, only when both `Tunn`s have.
    pub fn is_expired(&self) -> bool {
        self.current.tunn.is_expired()
            && self
                .switch
                .as_ref()
                .is_none_or(|s| s.retiring.tunn.is_expired())
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.recipe.peer)
            .field("local_index", &self.recipe.local_index)
            .field("generation", &self.current.generation)
            .field("retiring", &self.switch.is_some())
            .finish_non_exhaustive()
    }
}

#[path = "session_result.rs"]
mod result;
use result::Raw;

#[path = "session_switch.rs"]
mod switch;
use switch::{Recipe, Switch};

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
