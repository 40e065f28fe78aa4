//! Record extension 3: the owner's ed25519 signature over its record.
//!
//! ```text
//!  record blob:  base │ ext 1 │ ext 2 │ ext 3: len=96 │ public key (32) │ signature (64) │ ext 4 …
//!  signed:       "meshd gossip record v1\0" ‖ every byte of the blob but ext 3 (prefix included)
//! ```
//!
//! The signature covers every byte of the record except its own extension: the base fields
//! (`leaving` and the generation among them), the extensions before it, and every extension
//! after it, those of later versions included, so that a newer node's additions are its word
//! too and no relay can append to them. A decoder that does not know ext 3 (meshd before
//! signatures) skips it and what follows, and reads the record as before.
//!
//! The gossip crate signs and verifies records itself (which record to believe is its
//! decision), but it seals nothing: datagrams are sealed by the daemon with the `crypto` crate.

use std::fmt;

use ed25519_dalek::{Signature, Signer, VerifyingKey};

/// Domain separation: these signatures can never be mistaken for another protocol's.
const DOMAIN: &[u8] = b"meshd gossip record v1\0";
/// Length of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature.
const SIGNATURE_LEN: usize = 64;
/// Length of extension 3's content: public key, then signature.
pub(crate) const EXT_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;

/// A node's record-signing key (ed25519). Zeroed on drop; `Debug` shows only the public half.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key for a 32-byte secret seed (the daemon keeps it in its state directory).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The public half, as records carry it.
    pub fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    /// Extension 3's content for a record whose other bytes are `prefix` then `suffix`.
    pub(crate) fn seal(&self, prefix: &[u8], suffix: &[u8]) -> [u8; EXT_LEN] {
        let sig = self.0.sign(&message(prefix, suffix));
        let mut ext = [0u8; EXT_LEN];
        ext[..PUBLIC_KEY_LEN].copy_from_slice(&self.public());
        ext[PUBLIC_KEY_LEN..].copy_from_slice(&sig.to_bytes());
        ext
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey(<redacted>, public {})",
            short(&self.public())
        )
    }
}

/// The first bytes of a public key in hex: how logs and status name a signing key.
pub fn short(key: &[u8; PUBLIC_KEY_LEN]) -> String {
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A record's claimed signer and signature, as parsed and not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    pub(crate) key: [u8; PUBLIC_KEY_LEN],
    sig: [u8; SIGNATURE_LEN],
    /// Where extension 3 (length prefix included) sits in the blob.
    ext: (usize, usize),
}

impl Proof {
    /// Parses extension 3's content, found at `ext` in the blob.
    pub(crate) fn parse(content: &[u8], ext: (usize, usize)) -> Option<Self> {
        let (key, sig) = content.split_at_checked(PUBLIC_KEY_LEN)?;
        Some(Self {
            key: key.try_into().ok()?,
            sig: sig.try_into().ok()?,
            ext,
        })
    }

    /// Whether the signature is the claimed key's over `blob`, strictly (no small-order keys,
    /// no malleable signatures).
    pub(crate) fn holds(&self, blob: &[u8]) -> bool {
        let (Some(prefix), Some(suffix)) = (blob.get(..self.ext.0), blob.get(self.ext.1..)) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&self.key) else {
            return false;
        };
        let sig = Signature::from_bytes(&self.sig);
        key.verify_strict(&message(prefix, suffix), &sig).is_ok()
    }
}

fn message(prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    [DOMAIN, prefix, suffix].concat()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// RFC 8032 §7.1, TEST 1: the seed's public key, so `from_seed` is plain ed25519.
    #[test]
    fn seed_gives_the_rfc_8032_public_key() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = SigningKey::from_seed(&seed.try_into().unwrap());
        assert_eq!(
            key.public().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        assert!(!format!("{key:?}").contains("9d61"));
    }

    #[test]
    fn a_seal_holds_only_over_the_bytes_it_was_made_for() {
        let key = SigningKey::from_seed(&[7; 32]);
        let (prefix, suffix) = (b"base and ext 1, 2".as_slice(), b"ext 4".as_slice());
        let ext = key.seal(prefix, suffix);
        let blob = [prefix, &[EXT_LEN as u8], &ext, suffix].concat();
        let at = (prefix.len(), prefix.len() + 1 + EXT_LEN);
        let proof = Proof::parse(&ext, at).unwrap();
        assert_eq!(proof.key, key.public());
        assert!(proof.holds(&blob));
        for i in (0..blob.len()).filter(|i| *i < at.0 || *i >= at.1) {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(!proof.holds(&bad), "byte {i} is not covered");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(!proof.holds(&longer), "an appended byte is covered too");
        let other = Proof {
            key: SigningKey::from_seed(&[8; 32]).public(),
            ..proof
        };
        assert!(!other.holds(&blob));
        assert!(Proof::parse(&ext[1..], at).is_none());
    }
}
