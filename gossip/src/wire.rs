//! The gossip datagram: a versioned envelope `{version, kind, payload}` in postcard.
//!
//! Compatibility rules, so that nodes one version apart keep talking during a rolling upgrade:
//! the envelope's three fields never change; a kind this version does not know is skipped and
//! counted; a payload struct only ever grows by fields appended at its end, and every variable
//! part that may grow (records, state entries) travels as its own length-prefixed blob, so a
//! decoder reads the prefix it knows and counts the rest.
//!
//! Bytes here are plaintext: the daemon seals them with the `crypto` crate's AEAD before they
//! leave the node and opens them before they reach [`decode_envelope`].

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// The version this code writes.
pub const WIRE_VERSION: u8 = 1;
/// The oldest version this code still reads.
pub const MIN_WIRE_VERSION: u8 = 1;

/// What an envelope carries. Kinds are never renumbered or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A foca (SWIM) packet, custom broadcasts (node records) included.
    Swim,
    /// A joiner asks for the full member table: [`StateRequest`].
    StateRequest,
    /// One part of the member table: [`StateChunk`].
    StateChunk,
    /// Asks the receiver for its own record; empty payload.
    RecordPull,
    /// Records answering a pull: [`Records`].
    Records,
    /// One signed chunk of a node's path summary (`summary/`).
    Summary,
    /// Asks the receiver for its path summary, if newer than a version (`summary/`).
    SummaryPull,
}

impl Kind {
    /// The wire number of this kind.
    pub fn code(self) -> u16 {
        match self {
            Kind::Swim => 1,
            Kind::StateRequest => 2,
            Kind::StateChunk => 3,
            Kind::RecordPull => 4,
            Kind::Records => 5,
            Kind::Summary => 6,
            Kind::SummaryPull => 7,
        }
    }

    /// The kind for a wire number, if this version knows it.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Kind::Swim,
            2 => Kind::StateRequest,
            3 => Kind::StateChunk,
            4 => Kind::RecordPull,
            5 => Kind::Records,
            6 => Kind::Summary,
            7 => Kind::SummaryPull,
            _ => return None,
        })
    }
}

/// A decoded envelope, borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// The sender's wire version.
    pub version: u8,
    /// The kind code; see [`Kind::from_code`].
    pub kind: u16,
    /// Kind-specific bytes.
    #[serde(borrow)]
    pub payload: &'a [u8],
}

/// A joiner's request for the full member table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRequest {
    /// Echoed in every chunk so the joiner can tell which answer a chunk belongs to.
    pub nonce: u64,
}

/// One datagram's worth of the member table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChunk<'a> {
    /// The request's nonce.
    pub nonce: u64,
    /// This chunk's index, from 0.
    pub index: u16,
    /// How many chunks make the whole answer.
    pub total: u16,
    /// Each entry a postcard [`StateEntry`] blob.
    #[serde(borrow)]
    pub entries: Vec<&'a [u8]>,
}

/// One member in a state dump: foca's view of it and, when known, its record blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry<'a> {
    /// The member's SWIM identity.
    pub id: NodeId,
    /// Its SWIM incarnation.
    pub incarnation: u16,
    /// 0 alive, 1 suspect, 2 down; anything else is skipped.
    pub state: u8,
    /// The record blob: a postcard [`crate::NodeRecord`], possibly with fields appended.
    #[serde(borrow)]
    pub record: Option<&'a [u8]>,
}

/// Record blobs answering a [`Kind::RecordPull`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records<'a> {
    /// Each a record blob.
    #[serde(borrow)]
    pub records: Vec<&'a [u8]>,
}

/// Why a datagram or payload did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a postcard envelope.
    #[error("malformed envelope")]
    Envelope,
    /// The sender's version is older than [`MIN_WIRE_VERSION`].
    #[error("wire version {0} is too old")]
    TooOld(u8),
    /// The payload does not decode as its kind says.
    #[error("malformed payload")]
    Payload,
}

/// Decodes an envelope; bytes after it are ignored (a newer sender may append).
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let (env, _rest): (Envelope<'_>, _) =
        postcard::take_from_bytes(bytes).map_err(|_| DecodeError::Envelope)?;
    if env.version < MIN_WIRE_VERSION {
        return Err(DecodeError::TooOld(env.version));
    }
    Ok(env)
}

/// Decodes a payload struct; returns it and whether unknown trailing fields were skipped.
pub fn decode_payload<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, bool), DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|_| DecodeError::Payload)?;
    Ok((value, !rest.is_empty()))
}

/// Encodes an envelope of `kind` around `payload`, appending to `out`.
pub fn encode_envelope(kind: Kind, payload: &[u8], out: &mut Vec<u8>) {
    let env = Envelope {
        version: WIRE_VERSION,
        kind: kind.code(),
        payload,
    };
    // Serializing into a Vec only fails on allocation failure, which aborts anyway.
    if let Ok(bytes) = postcard::to_extend(&env, std::mem::take(out)) {
        *out = bytes;
    }
}

/// Encodes a payload struct into a fresh buffer.
pub fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Most bytes the envelope adds around a payload: version (1), kind varint (up to 3), length
/// varint (up to 5).
pub const ENVELOPE_OVERHEAD: usize = 9;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn envelope_round_trip() {
        let mut out = Vec::new();
        encode_envelope(Kind::Swim, b"hello", &mut out);
        let env = decode_envelope(&out).unwrap();
        assert_eq!(env.version, WIRE_VERSION);
        assert_eq!(Kind::from_code(env.kind), Some(Kind::Swim));
        assert_eq!(env.payload, b"hello");
        assert!(out.len() <= 5 + ENVELOPE_OVERHEAD);
    }

    #[test]
    fn newer_envelope_with_unknown_kind_still_decodes() {
        let env = Envelope {
            version: WIRE_VERSION + 1,
            kind: 77,
            payload: b"future",
        };
        let mut bytes = postcard::to_allocvec(&env).unwrap();
        bytes.extend_from_slice(b"appended by v2");
        let got = decode_envelope(&bytes).unwrap();
        assert_eq!(got.kind, 77);
        assert_eq!(Kind::from_code(got.kind), None);
    }

    #[test]
    fn too_old_is_refused() {
        let env = Envelope {
            version: 0,
            kind: 1,
            payload: b"",
        };
        let bytes = postcard::to_allocvec(&env).unwrap();
        assert_eq!(decode_envelope(&bytes), Err(DecodeError::TooOld(0)));
    }

    #[test]
    fn payload_with_appended_field_is_counted() {
        #[derive(Serialize)]
        struct StateRequestV2 {
            nonce: u64,
            want_down: bool,
        }
        let bytes = encode_payload(&StateRequestV2 {
            nonce: 9,
            want_down: true,
        });
        let (req, extra): (StateRequest, bool) = decode_payload(&bytes).unwrap();
        assert_eq!(req.nonce, 9);
        assert!(extra);
    }

    proptest! {
        #[test]
        fn any_envelope_round_trips(kind in 1u16..8, payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let kind = Kind::from_code(kind).unwrap();
            let mut out = Vec::new();
            encode_envelope(kind, &payload, &mut out);
            let env = decode_envelope(&out).unwrap();
            prop_assert_eq!(env.payload, &payload[..]);
            prop_assert_eq!(Kind::from_code(env.kind), Some(kind));
            prop_assert!(out.len() <= payload.len() + ENVELOPE_OVERHEAD);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(env) = decode_envelope(&bytes) {
                let _ = decode_payload::<StateChunk<'_>>(env.payload);
                let _ = decode_payload::<Records<'_>>(env.payload);
            }
        }
    }
}
