//! Secret files: the node key and the cluster secret. Created mode 0600 without ever existing
//! half-written under their final name; refused when group or others can access them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::keys::{KeyError, PrivateKey};

/// A secret file holds a few base64 lines; anything much bigger is not ours.
const MAX_SECRET_FILE_LEN: u64 = 4096;
/// Permission bits that must be clear on a secret file: all group and other access.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Why a secret file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The operating system refused an operation on the file.
    #[error("cannot {action} {path}: {source}", path = path.display())]
    Io {
        /// What we were doing ("read", "create", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Group or others have some access to the file.
    #[error(
        "{path} has mode {mode:04o}, so group or others can access a secret; \
         fix it with `chmod 600 {path}`",
        path = path.display()
    )]
    TooOpen {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any secret we write.
    #[error("{path} is larger than {MAX_SECRET_FILE_LEN} bytes; it is not a meshd secret file", path = path.display())]
    TooLarge {
        /// The file concerned.
        path: PathBuf,
    },
    /// The file's contents are not a base64 key.
    #[error("{path}: {source}", path = path.display())]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with the contents.
        #[source]
        source: KeyError,
    },
    /// The file's contents are not a keyring (one to four base64 secrets).
    #[error("{path}: {source}", path = path.display())]
    Keyring {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with the contents.
        #[source]
        source: crate::keyring::KeyringError,
    },
}

/// Whether [`load_or_create_private_key`] found a key or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileStatus {
    /// The file did not exist; a fresh key was written to it.
    Created,
    /// The existing key was read.
    Loaded,
}

/// Reads the node key at `path`, or on first start generates one and writes it there
/// (mode 0600, `wg genkey` format). The parent directory must exist.
pub fn load_or_create_private_key(
    path: &Path,
) -> Result<(PrivateKey, KeyFileStatus), SecretFileError> {
    match read_secret_file(path) {
        Ok(text) => Ok((parse_at(path, &text)?, KeyFileStatus::Loaded)),
        Err(SecretFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            match create_secret_file(path, &key.to_base64()) {
                Ok(()) => Ok((key, KeyFileStatus::Created)),
                // Another process won the race: use its key, not ours.
                Err(SecretFileError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    let text = read_secret_file(path)?;
                    Ok((parse_at(path, &text)?, KeyFileStatus::Loaded))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn parse_at(path: &Path, text: &str) -> Result<PrivateKey, SecretFileError> {
    PrivateKey::from_base64(text).map_err(|source| SecretFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Reads a whole secret file, refusing it if group or others can access it. The permission
/// check is made on the opened file, so a swap between check and read is not possible.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    let io_err = |action| {
        move |source| SecretFileError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let file = File::open(path).map_err(io_err("open"))?;
    let meta = file.metadata().map_err(io_err("stat"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_SECRET_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(io_err("read"))?;
    if text.len() as u64 > MAX_SECRET_FILE_LEN {
        return Err(SecretFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Writes `contents` and a newline to a new file at `path`, mode 0600. Fails with
/// `AlreadyExists` if `path` exists. The bytes go to a temporary name first and are linked
/// into place only once synced, so a crash never leaves a truncated key under `path`.
pub(crate) fn create_secret_file(path: &Path, contents: &str) -> Result<(), SecretFileError> {
    let io_err = |action, p: &Path| {
        let p = p.to_owned();
        move |source| SecretFileError::Io {
            action,
            path: p,
            source,
        }
    };
    let tmp = temporary_name(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        // The umask can only remove bits; this makes the mode exact even under odd umasks.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod", &tmp))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", &tmp))?;
        // hard_link, unlike rename, refuses to replace a file someone created meanwhile.
        fs::hard_link(&tmp, path).map_err(io_err("create", path))
    })();
    // Best effort: a leftover temporary file holds a secret but is mode 0600.
    let _ = fs::remove_file(&tmp);
    result?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the new directory entry durable; failure here does not lose the key.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn key_file_is_created_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (first, status) = load_or_create_private_key(&path).unwrap();
        assert_eq!(status, KeyFileStatus::Created);
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", first.to_base64().as_str()));

        let (second, status) = load_or_create_private_key(&path).unwrap();
        assert_eq!(status, KeyFileStatus::Loaded);
        assert_eq!(second.as_bytes(), first.as_bytes());
        // Only the key file is left behind, no temporary.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn readable_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        load_or_create_private_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_private_key(&path).unwrap_err();
        assert!(matches!(err, SecretFileError::TooOpen { mode: 0o644, .. }));
        let message = err.to_string();
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
        assert!(message.contains("0644"), "{message}");
    }

    #[test]
    fn wg_genkey_output_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let key = PrivateKey::generate();
        create_secret_file(&path, &key.to_base64()).unwrap();
        let (loaded, status) = load_or_create_private_key(&path).unwrap();
        assert_eq!(status, KeyFileStatus::Loaded);
        assert_eq!(loaded.as_bytes(), key.as_bytes());
    }

    #[test]
    fn garbage_and_missing_directories_are_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        create_secret_file(&path, "not a key").unwrap();
        let err = load_or_create_private_key(&path).unwrap_err();
        assert!(matches!(err, SecretFileError::Invalid { .. }));
        assert!(err.to_string().contains("node.key"));

        let missing = dir.path().join("no/such/dir/node.key");
        let err = load_or_create_private_key(&missing).unwrap_err();
        assert!(matches!(err, SecretFileError::Io { .. }), "{err}");
    }

    #[test]
    fn create_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        create_secret_file(&path, "a").unwrap();
        let err = create_secret_file(&path, "b").unwrap_err();
        assert!(
            matches!(&err, SecretFileError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\n");
    }

    #[test]
    fn oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        create_secret_file(&path, &"A".repeat(5000)).unwrap();
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretFileError::TooLarge { .. })
        ));
    }
}
