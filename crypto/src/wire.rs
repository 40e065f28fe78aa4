//! A checked view of WireGuard datagrams, for demultiplexing before any cryptography.
//!
//! The daemon reads the message type and the indices here to find the session a datagram
//! belongs to (data, responses and cookie replies by receiver index; initiations by the
//! sender's static key, see [`crate::identify_initiator`]). Nothing is authenticated yet: these
//! are routing hints, and the session rejects whatever does not verify.
//!
//! Layouts (all integers little endian; from the WireGuard paper, §5.4):
//! ```text
//! initiation (148): type=1 u32 | sender u32 | ephemeral 32 | static 48 | timestamp 28 | mac1 16 | mac2 16
//! response    (92): type=2 u32 | sender u32 | receiver u32 | ephemeral 32 | empty 16 | mac1 16 | mac2 16
//! cookie      (64): type=3 u32 | receiver u32 | nonce 24 | cookie 32
//! data      (>=32): type=4 u32 | receiver u32 | counter u64 | encrypted packet (>= 16, tag included)
//! ```
//! The type is a `u32` whose upper three bytes are reserved and must be zero.

use std::ops::Range;

/// The message type field (with its three reserved zero bytes).
pub const TYPE: Range<usize> = 0..4;
/// Sender index of an initiation or a response.
pub const SENDER_INDEX: Range<usize> = 4..8;
/// Receiver index of a response.
pub const RESPONSE_RECEIVER_INDEX: Range<usize> = 8..12;
/// Receiver index of a cookie reply or a data message.
pub const RECEIVER_INDEX: Range<usize> = 4..8;
/// Counter (nonce) of a data message.
pub const DATA_COUNTER: Range<usize> = 8..16;
/// Encrypted payload of a data message, to the end of the datagram.
pub const DATA_PAYLOAD_START: usize = 16;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Shortest data message: header and an empty (keepalive) payload's 16-byte tag.
pub const DATA_MIN_LEN: usize = 32;
/// Bytes a data message adds to the IP packet it carries (header and tag, before padding).
pub const DATA_OVERHEAD: usize = 32;

/// The four WireGuard message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Handshake initiation (type 1).
    Initiation = 1,
    /// Handshake response (type 2).
    Response = 2,
    /// Cookie reply (type 3), sent by a responder under load.
    CookieReply = 3,
    /// Transport data (type 4).
    Data = 4,
}

/// Why bytes are not a WireGuard datagram. A plain enum: one of these per bad packet is
/// counted, never formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// Fewer than four bytes: not even a type.
    #[error("datagram shorter than the 4-byte type field")]
    Truncated,
    /// A type other than 1 to 4, or non-zero reserved bytes.
    #[error("unknown message type or non-zero reserved bytes")]
    UnknownType,
    /// A known type with the wrong length for it.
    #[error("wrong length for the message type")]
    BadLength,
}

/// A datagram whose type and length have been checked, so every accessor is in bounds.
#[derive(Debug, Clone, Copy)]
pub struct WgDatagram<'a> {
    bytes: &'a [u8],
    kind: MessageType,
}

impl<'a> WgDatagram<'a> {
    /// Checks the type field and the length that type requires.
    ///
    /// Data messages are accepted at any length from 32 bytes: the protocol pads plaintext to
    /// 16 bytes but caps the padding at the MTU (the kernel and wireguard-go both do), and
    /// boringtun does not pad at all, so insisting on alignment would drop real traffic.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, WireError> {
        let type_field: [u8; 4] = bytes
            .get(TYPE)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated)?;
        let kind = match u32::from_le_bytes(type_field) {
            1 => MessageType::Initiation,
            2 => MessageType::Response,
            3 => MessageType::CookieReply,
            4 => MessageType::Data,
            _ => return Err(WireError::UnknownType),
        };
        let length_ok = match kind {
            MessageType::Initiation => bytes.len() == INITIATION_LEN,
            MessageType::Response => bytes.len() == RESPONSE_LEN,
            MessageType::CookieReply => bytes.len() == COOKIE_REPLY_LEN,
            MessageType::Data => bytes.len() >= DATA_MIN_LEN,
        };
        if !length_ok {
            return Err(WireError::BadLength);
        }
        Ok(Self { bytes, kind })
    }

    /// The message type.
    pub fn message_type(&self) -> MessageType {
        self.kind
    }

    /// The index the receiver chose for this session: present on responses, cookie replies
    /// and data. Its upper 24 bits are the receiver's [`crate::Session`] local index and the
    /// generation of the tunnel inside that session ([`local_index_of`], [`generation_of`]).
    pub fn receiver_index(&self) -> Option<u32> {
        match self.kind {
            MessageType::Initiation => None,
            MessageType::Response => Some(self.u32_at(RESPONSE_RECEIVER_INDEX)),
            MessageType::CookieReply | MessageType::Data => Some(self.u32_at(RECEIVER_INDEX)),
        }
    }

    /// The index the sender chose for itself: present on initiations and responses.
    pub fn sender_index(&self) -> Option<u32> {
        match self.kind {
            MessageType::Initiation | MessageType::Response => Some(self.u32_at(SENDER_INDEX)),
            MessageType::CookieReply | MessageType::Data => None,
        }
    }

    /// The counter of a data message.
    pub fn data_counter(&self) -> Option<u64> {
        match self.kind {
            MessageType::Data => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.bytes[DATA_COUNTER]);
                Some(u64::from_le_bytes(b))
            }
            _ => None,
        }
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn u32_at(&self, range: Range<usize>) -> u32 {
        // new_checked proved every range used here lies within the datagram.
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[range]);
        u32::from_le_bytes(b)
    }
}

/// The generation bit of the 24-bit index a session gives each boringtun tunnel: bit 23. A
/// [`crate::Session`] runs two tunnels while it changes its preshared key, one per generation,
/// so that their receiver indices never collide; the other 23 bits are the daemon's slot for
/// the peer, its local index.
pub const GENERATION_BIT: u32 = 1 << 23;

/// Low bits of a receiver index that boringtun keeps for its own session ring.
const RING_BITS: u32 = 8;

/// The index a session's tunnel of `generation` (0 or 1) is built with: the local index with
/// the generation bit. boringtun shifts it left by 8 bits to make receiver indices.
pub fn tunnel_index(local_index: u32, generation: u32) -> u32 {
    (local_index & (GENERATION_BIT - 1)) | ((generation & 1) * GENERATION_BIT)
}

/// The [`crate::Session`] local index encoded in a receiver index: the daemon's 23-bit peer
/// slot, above boringtun's 8 ring bits and below the generation bit, which is masked off so
/// that both tunnels of a session demultiplex to the same peer.
pub fn local_index_of(receiver_index: u32) -> u32 {
    (receiver_index >> RING_BITS) & (GENERATION_BIT - 1)
}

/// The generation (0 or 1) of the tunnel, within its [`crate::Session`], that a receiver index
/// belongs to: the top bit.
pub fn generation_of(receiver_index: u32) -> u32 {
    (receiver_index >> RING_BITS) / GENERATION_BIT
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn message(kind: u32, len: usize) -> Vec<u8> {
        let mut m = vec![0xaa; len];
        m[TYPE].copy_from_slice(&kind.to_le_bytes());
        m
    }

    #[test]
    fn each_type_at_its_length() {
        let mut init = message(1, INITIATION_LEN);
        init[SENDER_INDEX].copy_from_slice(&7u32.to_le_bytes());
        let d = WgDatagram::new_checked(&init).unwrap();
        assert_eq!(d.message_type(), MessageType::Initiation);
        assert_eq!((d.sender_index(), d.receiver_index()), (Some(7), None));

        let mut resp = message(2, RESPONSE_LEN);
        resp[SENDER_INDEX].copy_from_slice(&8u32.to_le_bytes());
        resp[RESPONSE_RECEIVER_INDEX].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        let d = WgDatagram::new_checked(&resp).unwrap();
        assert_eq!(
            (d.sender_index(), d.receiver_index()),
            (Some(8), Some(0x0102_0304))
        );

        let mut cookie = message(3, COOKIE_REPLY_LEN);
        cookie[RECEIVER_INDEX].copy_from_slice(&9u32.to_le_bytes());
        let d = WgDatagram::new_checked(&cookie).unwrap();
        assert_eq!((d.sender_index(), d.receiver_index()), (None, Some(9)));

        for len in [DATA_MIN_LEN, 33, 48, 1452] {
            let mut data = message(4, len);
            data[RECEIVER_INDEX].copy_from_slice(&0x0000_2a01u32.to_le_bytes());
            data[DATA_COUNTER].copy_from_slice(&5u64.to_le_bytes());
            let d = WgDatagram::new_checked(&data).unwrap();
            assert_eq!(d.message_type(), MessageType::Data);
            assert_eq!(d.receiver_index(), Some(0x2a01));
            assert_eq!(local_index_of(0x2a01), 0x2a);
            assert_eq!(d.data_counter(), Some(5));
            assert_eq!(d.as_bytes().len(), len);
        }
    }

    #[test]
    fn bad_datagrams() {
        assert_eq!(
            WgDatagram::new_checked(&[]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            WgDatagram::new_checked(&[1, 0, 0]).unwrap_err(),
            WireError::Truncated
        );
        for kind in [0, 5, 0x0100_0001, 0xffff_ffff] {
            assert_eq!(
                WgDatagram::new_checked(&message(kind, 148)).unwrap_err(),
                WireError::UnknownType
            );
        }
        for (kind, len) in [
            (1, 147),
            (1, 149),
            (2, 91),
            (2, 148),
            (3, 65),
            (4, 31),
            (4, 4),
        ] {
            assert_eq!(
                WgDatagram::new_checked(&message(kind, len)).unwrap_err(),
                WireError::BadLength,
                "type {kind} length {len}"
            );
        }
    }

    #[test]
    fn index_layout() {
        let slot = GENERATION_BIT - 1;
        for generation in [0, 1] {
            let tunnel = tunnel_index(slot, generation);
            // boringtun's receiver indices: the tunnel index above 8 ring bits.
            for ring in [0u32, 1, 0xff] {
                let receiver = (tunnel << RING_BITS) | ring;
                assert_eq!(local_index_of(receiver), slot);
                assert_eq!(generation_of(receiver), generation);
            }
        }
        assert_eq!(tunnel_index(0x2a, 1), 0x80_002a);
        assert_eq!(generation_of(0x8000_2a01), 1);
        assert_eq!(local_index_of(0x8000_2a01), 0x2a);
        assert_eq!(generation_of(0x7fff_ffff), 0);
    }

    proptest! {
        #[test]
        fn never_panics_and_agrees_with_lengths(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = WgDatagram::new_checked(&bytes) {
                let _ = (d.receiver_index(), d.sender_index(), d.data_counter());
                prop_assert!(bytes.len() >= DATA_MIN_LEN);
            }
        }
    }
}
