//! The cluster keyring: the cluster secrets a node holds at once, so that the secret can be
//! rotated with no downtime.
//!
//! The first secret is the *primary*: it seals every gossip datagram the node sends. Every
//! secret in the ring opens gossip datagrams. A rotation is three rolling steps, each applied
//! to every node before the next starts, and at every moment any two nodes share a secret:
//!
//! 1. add the new secret after the old one (`old, new`): still sealing with the old;
//! 2. put the new one first (`new, old`): sealing with the new, still opening the old;
//! 3. remove the old one (`new`).
//!
//! The WireGuard preshared key of a pair of nodes comes from one secret *both* hold, chosen the
//! same way on both sides ([`Keyring::pair_secret`]): nodes publish the [`SecretId`]s of their
//! ring through gossip, and the pair uses the common secret with the lowest id. Changing which
//! secret is primary (step 2) therefore never changes a preshared key; adding or removing one
//! changes it at most once per pair, and the session carries on under the old key until the
//! new handshake completes (see [`crate::Session::set_psk`]).

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::kdf::{self, gossip_key_id, GOSSIP_KEY_ID_LEN};
use crate::keys::{KeyError, PublicKey};
use crate::secret::ClusterSecret;
use crate::secret_file::{read_secret_file, SecretFileError};

/// Most secrets a ring holds: a rotation needs two; four leave room for a slow one.
pub const MAX_SECRETS: usize = 4;

/// A public name for a cluster secret: the id its gossip datagrams carry in clear
/// ([`kdf::gossip_key_id`]). Reveals nothing of the secret.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretId(pub [u8; GOSSIP_KEY_ID_LEN]);

impl SecretId {
    /// The id of `secret`.
    pub fn of(secret: &ClusterSecret) -> Self {
        Self(gossip_key_id(secret))
    }
}

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretId({self})")
    }
}

/// Why a keyring text was refused. Entries are counted from 1, in the order written. Messages
/// include their cause; none is also a `source()` (see [`SecretFileError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No secret at all.
    #[error("no cluster secret in it; `meshd secret` makes one")]
    Empty,
    /// More than [`MAX_SECRETS`].
    #[error("{found} cluster secrets; at most {MAX_SECRETS} are accepted at once")]
    TooMany {
        /// How many there were.
        found: usize,
    },
    /// An entry that is not a base64 secret.
    #[error(
        "secret {entry} (line {line}): {error}; secrets are separated by newlines, commas or \
         blanks, and `meshd secret` makes one"
    )]
    Invalid {
        /// Which entry.
        entry: usize,
        /// The line it is on, counted from 1.
        line: usize,
        /// What is wrong with it.
        error: KeyError,
    },
    /// The same secret twice.
    #[error("secret {entry} repeats secret {first}")]
    Duplicate {
        /// The repeat.
        entry: usize,
        /// Where it first appeared.
        first: usize,
    },
}

/// The WireGuard preshared key of a pair, and where it came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairKey {
    /// The preshared key.
    pub psk: [u8; 32],
    /// The secret it is derived from.
    pub secret: SecretId,
    /// False when the peer published its secret ids and none is ours: the key is then our
    /// primary's, and the peer cannot complete a handshake with it (a rotation step skipped).
    pub agreed: bool,
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairKey")
            .field("secret", &self.secret)
            .field("agreed", &self.agreed)
            .finish_non_exhaustive()
    }
}

impl PairKey {
    /// The preshared key in WireGuard's base64 form, as `wg set ... preshared-key FILE` reads
    /// it (`meshd psk`); zeroed on drop.
    pub fn psk_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.psk))
    }
}

/// One to [`MAX_SECRETS`] distinct cluster secrets, primary first.
#[derive(Clone)]
pub struct Keyring {
    secrets: Vec<(SecretId, ClusterSecret)>,
}

impl Keyring {
    /// A ring of `secrets`, primary first; refuses none, too many, or a repeat.
    pub fn new(secrets: Vec<ClusterSecret>) -> Result<Self, KeyringError> {
        if secrets.is_empty() {
            return Err(KeyringError::Empty);
        }
        if secrets.len() > MAX_SECRETS {
            return Err(KeyringError::TooMany {
                found: secrets.len(),
            });
        }
        let mut ring: Vec<(SecretId, ClusterSecret)> = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.into_iter().enumerate() {
            let id = SecretId::of(&secret);
            if let Some(first) = ring.iter().position(|(other, _)| *other == id) {
                return Err(KeyringError::Duplicate {
                    entry: i + 1,
                    first: first + 1,
                });
            }
            ring.push((id, secret));
        }
        Ok(Self { secrets: ring })
    }

    /// A ring of one secret.
    pub fn single(secret: ClusterSecret) -> Self {
        Self {
            secrets: vec![(SecretId::of(&secret), secret)],
        }
    }

    /// Parses base64 secrets separated by newlines, commas or blanks; `#` starts a comment
    /// that runs to the end of its line.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut secrets = Vec::new();
        let words = text
            .lines()
            .enumerate()
            .map(|(n, line)| (n + 1, line.split('#').next().unwrap_or("")))
            .flat_map(|(n, line)| {
                line.split(|c: char| c == ',' || c.is_whitespace())
                    .map(move |w| (n, w))
            })
            .filter(|(_, w)| !w.is_empty());
        for (i, (line, word)) in words.enumerate() {
            if i >= MAX_SECRETS {
                return Err(KeyringError::TooMany { found: i + 1 });
            }
            let secret =
                ClusterSecret::from_base64(word).map_err(|error| KeyringError::Invalid {
                    entry: i + 1,
                    line,
                    error,
                })?;
            secrets.push(secret);
        }
        Self::new(secrets)
    }

    /// Reads a ring from a file only its owner can access (as [`ClusterSecret::read_file`]).
    pub fn read_file(path: &Path) -> Result<Self, SecretFileError> {
        let text = read_secret_file(path)?;
        Self::parse(&text).map_err(|error| SecretFileError::Keyring {
            path: path.to_owned(),
            error,
        })
    }

    /// The secret that seals.
    pub fn primary(&self) -> &ClusterSecret {
        &self.secrets[0].1
    }

    /// Every secret with its id, primary first.
    pub fn secrets(&self) -> impl Iterator<Item = (SecretId, &ClusterSecret)> {
        self.secrets.iter().map(|(id, s)| (*id, s))
    }

    /// The ids of the ring, primary first: what a node publishes.
    pub fn ids(&self) -> Vec<SecretId> {
        self.secrets.iter().map(|(id, _)| *id).collect()
    }

    /// The id of the primary.
    pub fn primary_id(&self) -> SecretId {
        self.secrets[0].0
    }

    /// The secret a pair of nodes derives its preshared key from, given the ids the peer
    /// published: the common secret with the lowest id. Both nodes compute the same one
    /// whatever order their rings are in. With no published ids (a static peer, or an older
    /// node), our primary; with ids but none in common, our primary, not agreed.
    pub fn pair_secret(&self, peer_ids: Option<&[SecretId]>) -> (SecretId, &ClusterSecret, bool) {
        let primary = (self.secrets[0].0, &self.secrets[0].1);
        let Some(ids) = peer_ids.filter(|ids| !ids.is_empty()) else {
            return (primary.0, primary.1, true);
        };
        match self
            .secrets
            .iter()
            .filter(|(id, _)| ids.contains(id))
            .min_by_key(|(id, _)| *id)
        {
            Some((id, secret)) => (*id, secret, true),
            None => (primary.0, primary.1, false),
        }
    }

    /// The WireGuard preshared key for us (`local`) and `peer`, per [`Keyring::pair_secret`].
    pub fn pair_key(
        &self,
        local: &PublicKey,
        peer: &PublicKey,
        peer_ids: Option<&[SecretId]>,
    ) -> PairKey {
        let (id, secret, agreed) = self.pair_secret(peer_ids);
        PairKey {
            psk: kdf::wireguard_psk(secret, local, peer),
            secret: id,
            agreed,
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::PrivateKey;
    use crate::secret_file::create_secret_file;

    fn secret(n: u8) -> ClusterSecret {
        ClusterSecret::from_bytes([n; 32])
    }

    fn ring(ns: &[u8]) -> Keyring {
        Keyring::new(ns.iter().map(|n| secret(*n)).collect()).unwrap()
    }

    #[test]
    fn parse_accepts_lines_commas_and_comments() {
        let (a, b) = (secret(1), secret(2));
        let text = format!(
            "# rotation 2026-11\n{}  # new\n\n{}\n",
            a.to_base64().as_str(),
            b.to_base64().as_str()
        );
        let r = Keyring::parse(&text).unwrap();
        assert_eq!(r.ids(), vec![SecretId::of(&a), SecretId::of(&b)]);
        assert_eq!(r.primary_id(), SecretId::of(&a));
        let inline = format!("{},{}", b.to_base64().as_str(), a.to_base64().as_str());
        assert_eq!(
            Keyring::parse(&inline).unwrap().ids(),
            vec![SecretId::of(&b), SecretId::of(&a)]
        );
    }

    #[test]
    fn parse_names_the_bad_entry() {
        let good = secret(1).to_base64();
        assert_eq!(
            Keyring::parse("# nothing\n").unwrap_err(),
            KeyringError::Empty
        );
        let err = Keyring::parse(&format!("{}\nnot-a-key\n", good.as_str())).unwrap_err();
        assert!(
            matches!(
                err,
                KeyringError::Invalid {
                    entry: 2,
                    line: 2,
                    ..
                }
            ),
            "{err}"
        );
        // A line of garbage: what was expected, what was found, and why a word was taken.
        let text = Keyring::parse("not a secret").unwrap_err().to_string();
        assert!(text.contains("secret 1 (line 1)"), "{text}");
        assert!(text.contains("expected 32 bytes in base64"), "{text}");
        assert!(text.contains("found 3 characters"), "{text}");
        assert!(text.contains("separated by"), "{text}");
        let err = Keyring::parse(&format!("{0}\n{0}\n", good.as_str())).unwrap_err();
        assert_eq!(err, KeyringError::Duplicate { entry: 2, first: 1 });
        let five: Vec<_> = (1..=5).map(|n| secret(n).to_base64().to_string()).collect();
        let err = Keyring::parse(&five.join("\n")).unwrap_err();
        assert_eq!(err, KeyringError::TooMany { found: 5 });
        assert!(err.to_string().contains("at most 4"), "{err}");
    }

    #[test]
    fn read_file_checks_permissions_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        create_secret_file(&path, "bad\n").unwrap();
        let err = Keyring::read_file(&path).unwrap_err();
        assert!(err.to_string().contains("cluster.secret"), "{err}");
        assert!(err.to_string().contains("secret 1"), "{err}");
        let good = dir.path().join("good.secret");
        create_secret_file(&good, secret(3).to_base64().as_str()).unwrap();
        assert_eq!(
            Keyring::read_file(&good).unwrap().ids(),
            vec![SecretId::of(&secret(3))]
        );
    }

    /// Every pair of nodes agrees on its preshared key at every point of the three-step
    /// rotation, in whatever order the nodes take each step.
    #[test]
    fn pairs_agree_through_a_rotation() {
        let keys: Vec<PublicKey> = (0..2)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        let steps = [ring(&[1]), ring(&[1, 2]), ring(&[2, 1]), ring(&[2])];
        for a in 0..steps.len() {
            for b in 0..steps.len() {
                // A rolling rotation never has two nodes more than one step apart.
                if a.abs_diff(b) > 1 {
                    continue;
                }
                let (ra, rb) = (&steps[a], &steps[b]);
                let ka = ra.pair_key(&keys[0], &keys[1], Some(&rb.ids()));
                let kb = rb.pair_key(&keys[1], &keys[0], Some(&ra.ids()));
                assert!(ka.agreed && kb.agreed, "steps {a} and {b}");
                assert_eq!(ka.psk, kb.psk, "steps {a} and {b}");
                assert_eq!(ka.secret, kb.secret);
            }
        }
    }

    #[test]
    fn primary_swap_keeps_the_pair_key() {
        let (x, y) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let peer = ring(&[1, 2]).ids();
        let before = ring(&[1, 2]).pair_key(&x, &y, Some(&peer));
        let after = ring(&[2, 1]).pair_key(&x, &y, Some(&peer));
        assert_eq!(before.psk, after.psk);
    }

    #[test]
    fn no_common_secret_is_flagged_and_no_ids_means_primary() {
        let (x, y) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let r = ring(&[1, 2]);
        let k = r.pair_key(&x, &y, Some(&ring(&[3]).ids()));
        assert!(!k.agreed);
        assert_eq!(k.secret, r.primary_id());
        let k = r.pair_key(&x, &y, None);
        assert!(k.agreed);
        assert_eq!(k.psk, kdf::wireguard_psk(&secret(1), &x, &y));
        // The text form is the bytes in base64, as `wg` reads a preshared key.
        assert_eq!(
            STANDARD.decode(k.psk_base64().as_bytes()).unwrap(),
            k.psk.to_vec()
        );
        assert_eq!(r.pair_key(&x, &y, Some(&[])).secret, r.primary_id());
    }

    #[test]
    fn debug_shows_ids_only() {
        let r = ring(&[7]);
        let text = format!("{r:?}");
        assert_eq!(text, format!("[SecretId({})]", SecretId::of(&secret(7))));
        assert!(!text.contains(secret(7).to_base64().as_str()));
    }
}
