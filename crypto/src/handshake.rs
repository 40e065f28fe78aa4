//! Handshake admission, shared by every session of a node: the rate limiter that answers a
//! flood of initiations with cookie replies, and the lookup of an initiator's static key.
//!
//! The daemon's receive path for a handshake initiation is: [`RateLimiter::check`] (cheap:
//! one BLAKE2s MAC, and a cookie reply when over the limit), then [`identify_initiator`] (one
//! X25519 operation) to find the peer's session, then that session's `decapsulate`. Checking
//! first keeps a flood from costing a Diffie-Hellman per datagram.

use std::net::IpAddr;
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter as BtRateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};

use crate::action::SessionError;
use crate::keys::{PrivateKey, PublicKey};
use crate::wire::{MessageType, WgDatagram, COOKIE_REPLY_LEN};

/// Handshake messages per second the node accepts before it asks initiators for a cookie;
/// boringtun's own device uses the same figure for its shared limiter.
pub const DEFAULT_HANDSHAKES_PER_SECOND: u64 = 100;

/// The node's handshake rate limiter, shared by all its sessions (cloning shares it).
///
/// Every handshake message that reaches it, through [`RateLimiter::check`] or a session's
/// `decapsulate`, counts against the limit. The count is cleared by [`RateLimiter::reset_count`],
/// which the daemon calls once a second: sessions built on a shared limiter never reset it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<BtRateLimiter>,
}

/// What to do with a handshake message before finding its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Pass it on (or it is not a handshake message: those are not rate limited).
    Accept,
    /// Over the limit and without a valid cookie: send `out[..len]` back to the source and
    /// drop the message.
    CookieReply(usize),
    /// Drop it, and count why.
    Reject(SessionError),
}

impl RateLimiter {
    /// A limiter for the node whose public key is `local_public` (it keys the mac1 check and
    /// the cookies), allowing `handshakes_per_second` before cookies are required.
    pub fn new(local_public: &PublicKey, handshakes_per_second: u64) -> Self {
        Self {
            inner: Arc::new(BtRateLimiter::new(
                &local_public.to_dalek(),
                handshakes_per_second,
            )),
        }
    }

    /// Clears the count if a second has passed since the last clear. Call once a second.
    pub fn reset_count(&self) {
        self.inner.reset_count();
    }

    /// Verifies mac1 of a handshake message and applies the limit. `src` is the datagram's
    /// source address: without it, an over-limit message can only be dropped. `out` must hold
    /// a cookie reply (64 bytes).
    pub fn check(&self, src: Option<IpAddr>, datagram: &[u8], out: &mut [u8]) -> Admission {
        let kind = WgDatagram::new_checked(datagram)
            .map(|d| d.message_type())
            .ok();
        if out.len() < COOKIE_REPLY_LEN {
            return Admission::Reject(SessionError::BufferTooSmall);
        }
        match self.inner.verify_packet(src, datagram, out) {
            Ok(_) => Admission::Accept,
            Err(TunnResult::WriteToNetwork(reply)) => Admission::CookieReply(reply.len()),
            Err(TunnResult::Err(e)) => Admission::Reject(SessionError::from_wireguard(e, kind)),
            Err(_) => Admission::Reject(SessionError::Internal),
        }
    }

    pub(crate) fn shared(&self) -> Arc<BtRateLimiter> {
        Arc::clone(&self.inner)
    }
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimiter")
    }
}

/// Whether a handshake message was made for the holder of one public key: its mac1, keyed by
/// that key, checks. Only those who know the key can make one, so a relay forwarding a pair's
/// datagrams learns where a side sends from only by such a message, never by anything a
/// stranger can write (see the daemon's relay port). Data and cookie replies carry no mac1.
pub struct Mac1Check {
    inner: BtRateLimiter,
}

impl Mac1Check {
    /// Checks messages made for `receiver`.
    pub fn new(receiver: &PublicKey) -> Self {
        Self {
            // No limit: only the mac1 is of interest here, never a cookie.
            inner: BtRateLimiter::new(&receiver.to_dalek(), u64::MAX),
        }
    }

    /// True for an initiation or a response whose mac1 was made for the receiver.
    pub fn verifies(&self, datagram: &[u8]) -> bool {
        let handshake = WgDatagram::new_checked(datagram).is_ok_and(|d| {
            matches!(
                d.message_type(),
                MessageType::Initiation | MessageType::Response
            )
        });
        let mut out = [0u8; COOKIE_REPLY_LEN];
        handshake && self.inner.verify_packet(None, datagram, &mut out).is_ok()
    }
}

impl std::fmt::Debug for Mac1Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac1Check")
    }
}

/// The static public key of whoever sent the handshake initiation `datagram` to us, or `None`
/// if it is not an initiation or was not encrypted to our key. The key is authenticated only
/// as far as the initiator knows our public key: the peer's session completes the check.
pub fn identify_initiator(
    local_private: &PrivateKey,
    local_public: &PublicKey,
    datagram: &[u8],
) -> Option<PublicKey> {
    let checked = WgDatagram::new_checked(datagram).ok()?;
    if checked.message_type() != MessageType::Initiation {
        return None;
    }
    let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(datagram) else {
        return None;
    };
    let half =
        parse_handshake_anon(&local_private.to_dalek(), &local_public.to_dalek(), &init).ok()?;
    Some(PublicKey::from_bytes(half.peer_static_public))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::session::Session;
    use crate::Action;

    fn initiation(from: &PrivateKey, to: &PublicKey, limiter: &RateLimiter) -> Vec<u8> {
        let mut s = Session::new(from, 1, *to, [9; 32], limiter).unwrap();
        let mut out = vec![0u8; 256];
        match s.encapsulate(&[], &mut out) {
            Action::WriteToNetwork(n) => out[..n].to_vec(),
            other => panic!("expected an initiation, got {other:?}"),
        }
    }

    #[test]
    fn initiator_is_identified_by_static_key() {
        let (ours, theirs, stranger) = (
            PrivateKey::generate(),
            PrivateKey::generate(),
            PrivateKey::generate(),
        );
        let limiter = RateLimiter::new(&theirs.public_key(), DEFAULT_HANDSHAKES_PER_SECOND);
        let init = initiation(&theirs, &ours.public_key(), &limiter);
        assert_eq!(
            identify_initiator(&ours, &ours.public_key(), &init),
            Some(theirs.public_key())
        );
        // Not encrypted to the stranger's key.
        assert_eq!(
            identify_initiator(&stranger, &stranger.public_key(), &init),
            None
        );
        // Garbage and other message types.
        assert_eq!(
            identify_initiator(&ours, &ours.public_key(), &[1, 0, 0, 0]),
            None
        );
        assert_eq!(
            identify_initiator(&ours, &ours.public_key(), &[4; 64]),
            None
        );
        let mut tampered = init.clone();
        tampered[50] ^= 1;
        assert_eq!(
            identify_initiator(&ours, &ours.public_key(), &tampered),
            None
        );
    }

    #[test]
    fn flood_gets_cookie_replies_after_the_limit() {
        let (ours, theirs) = (PrivateKey::generate(), PrivateKey::generate());
        let our_limiter = RateLimiter::new(&ours.public_key(), 3);
        let their_limiter = RateLimiter::new(&theirs.public_key(), 3);
        let init = initiation(&theirs, &ours.public_key(), &their_limiter);
        let src = Some(IpAddr::from([192, 0, 2, 1]));
        let mut out = [0u8; 148];
        for _ in 0..3 {
            assert_eq!(our_limiter.check(src, &init, &mut out), Admission::Accept);
        }
        assert_eq!(
            our_limiter.check(src, &init, &mut out),
            Admission::CookieReply(COOKIE_REPLY_LEN)
        );
        assert_eq!(
            WgDatagram::new_checked(&out[..COOKIE_REPLY_LEN])
                .unwrap()
                .message_type(),
            MessageType::CookieReply
        );
        assert_eq!(
            our_limiter.check(None, &init, &mut out),
            Admission::Reject(SessionError::UnderLoad)
        );
        // mac1 keyed to someone else's public key.
        let stranger = PrivateKey::generate().public_key();
        let misdirected = initiation(&theirs, &stranger, &their_limiter);
        let fresh = RateLimiter::new(&ours.public_key(), 3);
        assert_eq!(
            fresh.check(src, &misdirected, &mut out),
            Admission::Reject(SessionError::InvalidMac)
        );
        assert_eq!(
            fresh.check(src, &init, &mut [0u8; 10]),
            Admission::Reject(SessionError::BufferTooSmall)
        );
        assert_eq!(
            fresh.check(src, b"garbage", &mut out),
            Admission::Reject(SessionError::Malformed)
        );
    }

    #[test]
    fn mac1_check_passes_handshakes_made_for_the_key_and_nothing_else() {
        let (ours, theirs) = (PrivateKey::generate(), PrivateKey::generate());
        let (our_limiter, their_limiter) = (
            RateLimiter::new(&ours.public_key(), DEFAULT_HANDSHAKES_PER_SECOND),
            RateLimiter::new(&theirs.public_key(), DEFAULT_HANDSHAKES_PER_SECOND),
        );
        let init = initiation(&theirs, &ours.public_key(), &their_limiter);
        let (for_us, for_them) = (
            Mac1Check::new(&ours.public_key()),
            Mac1Check::new(&theirs.public_key()),
        );
        assert!(for_us.verifies(&init));
        assert!(!for_them.verifies(&init), "made for us, not for them");
        // Our answer is made for them.
        let mut us = Session::new(&ours, 2, theirs.public_key(), [9; 32], &our_limiter).unwrap();
        let mut out = vec![0u8; 256];
        let Action::WriteToNetwork(n) = us.decapsulate(None, &init, &mut out) else {
            panic!("no response");
        };
        let response = out[..n].to_vec();
        assert!(for_them.verifies(&response));
        assert!(!for_us.verifies(&response));
        let mut tampered = init.clone();
        tampered[20] ^= 1;
        assert!(!for_us.verifies(&tampered), "a changed byte breaks mac1");
        // Data, cookie replies and garbage carry no mac1: never verified.
        let mut data = vec![4u8, 0, 0, 0];
        data.extend([7u8; 44]);
        assert!(!for_us.verifies(&data));
        assert!(!for_us.verifies(&[3u8; 64]));
        assert!(!for_us.verifies(b"GET / HTTP/1.1"));
    }
}
