//! The cluster secret: 32 random bytes shared by every node, from which the WireGuard
//! preshared keys and the gossip key are derived (see [`crate::kdf`]).

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{decode_key, KeyError, KEY_LEN};
use crate::secret_file::{create_secret_file, read_secret_file, SecretFileError};

/// The cluster secret. Zeroed on drop; `Debug` prints nothing of it.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct ClusterSecret([u8; KEY_LEN]);

impl ClusterSecret {
    /// 32 fresh bytes from the operating system's CSPRNG (`meshd secret`).
    pub fn generate() -> Self {
        let mut secret = Self([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut secret.0);
        secret
    }

    /// Wraps raw bytes (tests and simulators).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses the base64 form, e.g. the value of an environment variable the caller read.
    /// Surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }

    /// Reads the base64 form from a file that only its owner can access.
    pub fn read_file(path: &Path) -> Result<Self, SecretFileError> {
        let text = read_secret_file(path)?;
        Self::from_base64(&text).map_err(|error| SecretFileError::Invalid {
            path: path.to_owned(),
            error,
        })
    }

    /// Writes the base64 form to a new file, mode 0600; fails if `path` exists.
    pub fn write_new_file(&self, path: &Path) -> Result<(), SecretFileError> {
        create_secret_file(path, &self.to_base64())
    }

    /// The base64 form, in a string that is zeroed on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_parse_round_trip() {
        let secret = ClusterSecret::generate();
        let text = secret.to_base64();
        assert_eq!(text.len(), 44);
        let again = ClusterSecret::from_base64(&format!(" {}\n", text.as_str())).unwrap();
        assert_eq!(again.as_bytes(), secret.as_bytes());
        assert_ne!(ClusterSecret::generate().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn debug_redacts() {
        let secret = ClusterSecret::from_bytes([0x41; 32]);
        let debug = format!("{secret:?}");
        assert_eq!(debug, "ClusterSecret(<redacted>)");
        assert!(!debug.contains(secret.to_base64().as_str()));
    }

    #[test]
    fn bad_text_is_rejected() {
        assert_eq!(
            ClusterSecret::from_base64("").unwrap_err(),
            KeyError::WrongLength { found: 0 }
        );
        assert!(ClusterSecret::from_base64(&"!".repeat(44)).is_err());
    }

    #[test]
    fn file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        let secret = ClusterSecret::generate();
        secret.write_new_file(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = ClusterSecret::read_file(&path).unwrap();
        assert_eq!(read.as_bytes(), secret.as_bytes());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = ClusterSecret::read_file(&path).unwrap_err();
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o640, .. }));
        assert!(err
            .to_string()
            .contains(&format!("chmod 600 {}", path.display())));
    }

    #[test]
    fn file_with_garbage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.secret");
        create_secret_file(&path, "hello").unwrap();
        let err = ClusterSecret::read_file(&path).unwrap_err();
        assert!(err.to_string().contains("cluster.secret"), "{err}");
        assert!(err.to_string().contains("found 5 characters"), "{err}");
    }
}
