//! X25519 node keys in WireGuard's text format: 32 bytes as 44 characters of padded standard
//! base64, the format `wg genkey` prints and `wg pubkey` reads.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

/// Length of a key (private, public, or cluster secret) in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key in base64 text: `ceil(32 / 3) * 4`, one `=` of padding included.
pub const KEY_BASE64_LEN: usize = 44;

/// Why a base64 key (node key or cluster secret) did not parse.
///
/// Messages never quote the key itself: the input may be a mistyped private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text (surrounding whitespace removed) is not 44 characters long.
    #[error(
        "expected {KEY_LEN} bytes in base64, {KEY_BASE64_LEN} characters (as `wg genkey` and \
         `meshd secret` print them), found {found} characters"
    )]
    WrongLength {
        /// Number of characters found.
        found: usize,
    },
    /// A character outside the standard base64 alphabet, or misplaced `=` padding.
    #[error("invalid base64 character at position {position}")]
    InvalidCharacter {
        /// Zero-based character offset into the trimmed text.
        position: usize,
    },
    /// The last character carries bits that no encoder would set: the key was altered.
    #[error("the last base64 character is not canonical (was the key mistyped?)")]
    NonCanonical,
    /// 44 characters that decode to fewer than 32 bytes (`==` padding).
    #[error(
        "expected {KEY_LEN} bytes in base64, found {KEY_BASE64_LEN} characters that decode to \
         {found} bytes"
    )]
    WrongDecodedLength {
        /// Number of bytes decoded.
        found: usize,
    },
}

/// A node's X25519 private key. Zeroed on drop; `Debug` shows only the public half.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct PrivateKey([u8; KEY_LEN]);

/// A node's X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh key from the operating system's CSPRNG, clamped as `wg genkey` does.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        // RFC 7748 §5 clamping; x25519 clamps again on use, but `wg genkey` stores clamped keys
        // and we want byte-identical files.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses WireGuard's base64 form; surrounding whitespace (a trailing newline) is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }

    /// WireGuard's base64 form, in a string that is zeroed on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The matching public key (`wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        let secret = self.to_dalek();
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The key in the type boringtun's `Tunn` takes; the dalek type zeroes itself on drop.
    pub(crate) fn to_dalek(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::from_base64(text)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses WireGuard's base64 form; surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }

    /// WireGuard's base64 form (also what `Display` prints).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn to_dalek(self) -> x25519_dalek::PublicKey {
        x25519_dalek::PublicKey::from(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::from_base64(text)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; KEY_BASE64_LEN];
        match STANDARD.encode_slice(self.0, &mut buf) {
            Ok(n) => f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Decodes 44 base64 characters to exactly 32 bytes, without allocating.
pub(crate) fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim_ascii();
    if text.len() != KEY_BASE64_LEN {
        return Err(KeyError::WrongLength {
            found: text.chars().count(),
        });
    }
    // 44 characters decode to at most 33 bytes; a bigger buffer lets a `==`-padded input
    // report its real length instead of "buffer too small".
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 1]);
    let n = STANDARD
        .decode_slice(text, &mut buf[..])
        .map_err(|e| match e {
            base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidByte(p, _))
            | base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidLength(p)) => {
                KeyError::InvalidCharacter { position: p }
            }
            base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidLastSymbol(..)) => {
                KeyError::NonCanonical
            }
            base64::DecodeSliceError::DecodeError(base64::DecodeError::InvalidPadding) => {
                KeyError::InvalidCharacter {
                    position: KEY_BASE64_LEN - 1,
                }
            }
            base64::DecodeSliceError::OutputSliceTooSmall => {
                KeyError::WrongDecodedLength { found: KEY_LEN + 1 }
            }
        })?;
    if n != KEY_LEN {
        return Err(KeyError::WrongDecodedLength { found: n });
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&buf[..KEY_LEN]);
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// RFC 7748 §6.1 (X25519 Diffie-Hellman test vector), Alice and Bob.
    /// https://www.rfc-editor.org/rfc/rfc7748#section-6.1
    #[test]
    fn x25519_rfc7748_section_6_1() {
        let alice = PrivateKey::from_bytes(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = PrivateKey::from_bytes(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public_key().as_bytes(),
            &hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public_key().as_bytes(),
            &hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        let ab = alice
            .to_dalek()
            .diffie_hellman(&bob.public_key().to_dalek());
        let ba = bob
            .to_dalek()
            .diffie_hellman(&alice.public_key().to_dalek());
        assert_eq!(ab.as_bytes(), &shared);
        assert_eq!(ba.as_bytes(), &shared);
    }

    #[test]
    fn base64_matches_wireguard_format() {
        // The RFC 7748 public key above, base64-encoded as `wg pubkey` prints it.
        let key = PublicKey::from_bytes(hex32(
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        ));
        let text = key.to_string();
        assert_eq!(text.len(), KEY_BASE64_LEN);
        assert!(text.ends_with('='));
        assert_eq!(text, key.to_base64());
        assert_eq!(PublicKey::from_base64(&format!("{text}\n")).unwrap(), key);
    }

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let key = PrivateKey::generate();
        assert_eq!(key.as_bytes()[0] & 7, 0);
        assert_eq!(key.as_bytes()[31] & 0xc0, 0x40);
        let again = PrivateKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.as_bytes(), key.as_bytes());
        assert_ne!(PrivateKey::generate().as_bytes(), key.as_bytes());
    }

    #[test]
    fn debug_never_prints_private_bytes() {
        let key = PrivateKey::generate();
        let debug = format!("{key:?}");
        assert!(!debug.contains(key.to_base64().as_str()));
        assert!(debug.contains("redacted"));
        assert!(debug.contains(&key.public_key().to_base64()));
    }

    #[test]
    fn parse_errors_are_precise() {
        assert_eq!(
            PublicKey::from_base64("abc"),
            Err(KeyError::WrongLength { found: 3 })
        );
        let good = PrivateKey::generate().public_key().to_base64();
        let mut bad = good.clone().into_bytes();
        bad[5] = b'*';
        assert_eq!(
            PublicKey::from_base64(std::str::from_utf8(&bad).unwrap()),
            Err(KeyError::InvalidCharacter { position: 5 })
        );
        // The 43rd character carries 4 key bits and 2 bits that must be zero; 'B' (value 1)
        // sets one of those.
        let mut noncanon = good.clone().into_bytes();
        noncanon[42] = b'B';
        assert_eq!(
            PublicKey::from_base64(std::str::from_utf8(&noncanon).unwrap()),
            Err(KeyError::NonCanonical)
        );
        let short = format!("{}==", &STANDARD.encode([7u8; 31])[..42]);
        assert_eq!(
            PublicKey::from_base64(&short),
            Err(KeyError::WrongDecodedLength { found: 31 })
        );
        // What was expected and what was found, each with its unit.
        let text = KeyError::WrongLength { found: 3 }.to_string();
        assert!(text.contains("wg genkey"), "{text}");
        assert!(text.contains("expected 32 bytes"), "{text}");
        assert!(text.contains("found 3 characters"), "{text}");
        let text = KeyError::WrongDecodedLength { found: 31 }.to_string();
        assert!(text.contains("decode to 31 bytes"), "{text}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,64}") {
            let _ = PublicKey::from_base64(&text);
        }

        #[test]
        fn round_trip(bytes in any::<[u8; 32]>()) {
            let key = PublicKey::from_bytes(bytes);
            prop_assert_eq!(PublicKey::from_base64(&key.to_base64()).unwrap(), key);
        }
    }
}
