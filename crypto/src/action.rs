//! What a [`crate::Session`] call asks the caller to do, and why a datagram was refused. Our
//! own types, so that boringtun's never leave this crate.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;

use crate::wire::MessageType;

/// The result of a session call. Lengths count bytes at the start of the caller's `out` buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to send or deliver.
    Done,
    /// Send `out[..len]` to the peer over UDP. After a `decapsulate` that returned this, call
    /// [`crate::Session::flush_queued`] until it returns `Done`: packets queued while there was
    /// no session go out then.
    WriteToNetwork(usize),
    /// Deliver the IPv4 packet `out[..len]`, whose inner source address is given, to the TUN
    /// device, once the caller has checked that address against the peer's subnet.
    WriteToTunnelV4(usize, Ipv4Addr),
    /// Deliver the IPv6 packet `out[..len]` to the TUN device, as for IPv4.
    WriteToTunnelV6(usize, Ipv6Addr),
    /// The call failed; count it. Never fatal for the session unless it is `Expired`.
    Error(SessionError),
}

/// Why a session call failed. A plain enum so that a bad packet costs a counter, not a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SessionError {
    /// `out` is too small for the result; see the size rules on [`crate::Session`].
    #[error("output buffer too small")]
    BufferTooSmall,
    /// Not a WireGuard datagram, a truncated one, or a decrypted packet that is not IP.
    #[error("malformed datagram or packet")]
    Malformed,
    /// A valid message that this session did not expect now (a response to no initiation).
    #[error("unexpected message")]
    UnexpectedMessage,
    /// A receiver index that is not one of this session's.
    #[error("receiver index belongs to no session of this peer")]
    WrongIndex,
    /// A handshake message whose mac1 does not match our public key.
    #[error("handshake mac1 invalid")]
    InvalidMac,
    /// An initiation from a static key other than this session's peer.
    #[error("handshake from a different peer key")]
    WrongPeerKey,
    /// A handshake message that failed to decrypt: wrong preshared key or keys.
    #[error("handshake failed to authenticate (wrong preshared key or peer key)")]
    HandshakeFailed,
    /// An initiation whose timestamp is not newer than the last one: a replay.
    #[error("replayed handshake initiation")]
    ReplayedHandshake,
    /// A data message that failed to authenticate.
    #[error("data message failed to authenticate")]
    DecryptFailed,
    /// A data message whose counter was already seen or is too old: a replay.
    #[error("replayed data message")]
    Replayed,
    /// Data for a session that does not exist (expired, or never established).
    #[error("no session for this data message")]
    NoSession,
    /// No handshake for 540 s (or none completed within 90 s): all keys are erased. The next
    /// `encapsulate` starts a new handshake.
    #[error("connection expired")]
    Expired,
    /// Handshake rate limit reached and no source address to send a cookie to.
    #[error("under load: handshake dropped")]
    UnderLoad,
    /// The local index does not fit in 23 bits (bit 23 is the session's tunnel generation,
    /// see [`crate::wire::GENERATION_BIT`]).
    #[error("local index exceeds 23 bits")]
    IndexOutOfRange,
    /// boringtun reported something this wrapper does not expect.
    #[error("internal error")]
    Internal,
}

impl SessionError {
    /// Maps boringtun's error, given the type of message that caused it.
    pub(crate) fn from_wireguard(e: WireGuardError, kind: Option<MessageType>) -> Self {
        use WireGuardError as W;
        match e {
            W::DestinationBufferTooSmall => Self::BufferTooSmall,
            W::IncorrectPacketLength | W::InvalidPacket | W::WrongPacketType => Self::Malformed,
            W::InvalidTai64nTimestamp => Self::Malformed,
            W::UnexpectedPacket => Self::UnexpectedMessage,
            W::WrongIndex => Self::WrongIndex,
            W::WrongKey => Self::WrongPeerKey,
            W::InvalidMac => Self::InvalidMac,
            W::WrongTai64nTimestamp => Self::ReplayedHandshake,
            W::InvalidAeadTag => match kind {
                Some(MessageType::Data) => Self::DecryptFailed,
                _ => Self::HandshakeFailed,
            },
            W::InvalidCounter | W::DuplicateCounter => Self::Replayed,
            W::NoCurrentSession => Self::NoSession,
            W::ConnectionExpired => Self::Expired,
            W::UnderLoad => Self::UnderLoad,
            W::LockFailed => Self::Internal,
        }
    }
}

/// Counters and ages of one session, for `meshd status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionStats {
    /// Time since the handshake of the session in use for sending completed; `None` without
    /// a session. During a preshared-key switch that is still the old session until the new
    /// key's handshake is confirmed (`psk_pending`).
    pub last_handshake: Option<Duration>,
    /// Plaintext bytes encapsulated.
    pub tx_bytes: u64,
    /// Plaintext bytes delivered.
    pub rx_bytes: u64,
    /// Handshakes completed: as initiator when the response verified, as responder when the
    /// initiator's first data arrived on the new session (an answer alone proves nothing: an
    /// initiation does not depend on the preshared key, so a peer with another one gets an
    /// answer it can never use). As the kernel's WireGuard counts them.
    pub handshakes: u64,
    /// Handshakes completed after the first: rekeys.
    pub rekeys: u64,
    /// Data messages that failed to authenticate.
    pub decrypt_failures: u64,
    /// Handshake messages refused: bad mac1, wrong peer key, wrong preshared key.
    pub handshake_failures: u64,
    /// Replayed data messages and handshake initiations refused.
    pub replays: u64,
    /// Cookie replies sent because the handshake rate limit was reached.
    pub cookie_replies_sent: u64,
    /// Every error returned, including those counted above.
    pub errors: u64,
    /// boringtun's estimate of packet loss on receive, 0.0 to 1.0.
    pub estimated_loss: f32,
    /// Round-trip time of the last handshake we initiated, in milliseconds.
    pub handshake_rtt_ms: Option<u32>,
    /// Round trip measured as the responder of the last handshake that measured one: from
    /// our response to the initiator's first data on its session (`crate::answer`), kept
    /// across rekeys until the next.
    pub responder_rtt: Option<Duration>,
    /// Preshared-key changes applied ([`crate::Session::set_psk`] calls that changed the key).
    pub psk_switches: u64,
    /// A session under the previous preshared key is still kept: a switch is under way.
    pub retiring: bool,
    /// No handshake under the current preshared key has been confirmed yet, so traffic still
    /// goes out on the retiring session: the peer has not switched, or the handshake is in
    /// flight.
    pub psk_pending: bool,
    /// In the switch under way, handshake responses under the new preshared key that failed to
    /// authenticate: the peer still holds the old key. At
    /// [`crate::session::MAX_PSK_REJECTIONS`] we stop initiating and wait for the peer's own
    /// initiation.
    pub psk_rejections: u32,
}

impl SessionStats {
    pub(crate) fn count_error(&mut self, e: SessionError) {
        self.errors += 1;
        match e {
            SessionError::DecryptFailed => self.decrypt_failures += 1,
            SessionError::InvalidMac
            | SessionError::WrongPeerKey
            | SessionError::HandshakeFailed => self.handshake_failures += 1,
            SessionError::Replayed | SessionError::ReplayedHandshake => self.replays += 1,
            _ => {}
        }
    }
}
