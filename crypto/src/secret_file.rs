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
///
/// Each message is complete, the underlying error included, so no variant also returns it as
/// its `source()`: a caller printing the chain (anyhow's `{:#}`) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The operating system refused an operation on the file.
    #[error("cannot {action} {path}: {error}", path = path.display())]
    Io {
        /// What we were doing ("read", "create", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
    /// Something other than a regular file is at the path (a directory, say).
    #[error("{path} is {kind}, not a file: a secret file is expected there", path = path.display())]
    NotAFile {
        /// The path concerned.
        path: PathBuf,
        /// What is there instead ("a directory", ...).
        kind: &'static str,
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
    #[error("{path}: {error}", path = path.display())]
    Invalid {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with the contents.
        error: KeyError,
    },
    /// The file's contents are not a keyring (one to four base64 secrets).
    #[error("{path}: {error}", path = path.display())]
    Keyring {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with the contents.
        error: crate::keyring::KeyringError,
    },
}

impl SecretFileError {
    /// True when the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SecretFileError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }
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
        Err(e) if e.is_not_found() => {
            let key = PrivateKey::generate();
            match create_secret_file(path, &key.to_base64()) {
                Ok(()) => Ok((key, KeyFileStatus::Created)),
                // Another process won the race: use its key, not ours.
                Err(SecretFileError::Io { error, .. })
                    if error.kind() == io::ErrorKind::AlreadyExists =>
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

/// Reads the node key at `path` with every check [`load_or_create_private_key`] makes, but
/// creates nothing: `None` when there is no file yet (`meshd run --check-config`).
pub fn read_private_key(path: &Path) -> Result<Option<PrivateKey>, SecretFileError> {
    match read_secret_file(path) {
        Ok(text) => parse_at(path, &text).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_at(path: &Path, text: &str) -> Result<PrivateKey, SecretFileError> {
    PrivateKey::from_base64(text).map_err(|error| SecretFileError::Invalid {
        path: path.to_owned(),
        error,
    })
}

/// Reads a whole secret file, refusing it if group or others can access it. The permission
/// check is made on the opened file, so a swap between check and read is not possible.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, SecretFileError> {
    let io_err = |action| {
        move |error| SecretFileError::Io {
            action,
            path: path.to_owned(),
            error,
        }
    };
    let file = File::open(path).map_err(io_err("open"))?;
    let meta = file.metadata().map_err(io_err("stat"))?;
    if !meta.is_file() {
        // A directory's mode would otherwise be reported as too open, with chmod as the fix.
        return Err(SecretFileError::NotAFile {
            path: path.to_owned(),
            kind: kind_of(&meta.file_type()),
        });
    }
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
        move |error| SecretFileError::Io {
            action,
            path: p,
            error,
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

fn kind_of(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "something other than a regular file"
    }
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
    fn a_directory_is_reported_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        for err in [
            load_or_create_private_key(&path).unwrap_err(),
            read_private_key(&path).unwrap_err(),
        ] {
            let message = err.to_string();
            assert!(matches!(err, SecretFileError::NotAFile { .. }), "{message}");
            assert!(message.contains("is a directory"), "{message}");
            assert!(!message.contains("chmod"), "{message}");
        }
    }

    #[test]
    fn reading_a_missing_key_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        assert!(read_private_key(&path).unwrap().is_none());
        assert!(!path.exists());
        let (key, _) = load_or_create_private_key(&path).unwrap();
        let read = read_private_key(&path).unwrap().unwrap();
        assert_eq!(read.as_bytes(), key.as_bytes());
        create_secret_file(&dir.path().join("bad.key"), "abc").unwrap();
        let err = read_private_key(&dir.path().join("bad.key")).unwrap_err();
        assert!(matches!(err, SecretFileError::Invalid { .. }), "{err}");
    }

    /// A message printed with its chain of causes (as anyhow's `{:#}` does) says each thing
    /// once: the causes are in the message, so none is also a `source()`.
    #[test]
    fn messages_do_not_repeat_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.key");
        create_secret_file(&garbage, "abc").unwrap();
        let errors = [
            read_private_key(&garbage).unwrap_err(),
            read_secret_file(&dir.path().join("no/such")).unwrap_err(),
            crate::Keyring::read_file(&garbage).unwrap_err(),
        ];
        for err in errors {
            let mut chain = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                chain += &format!(": {c}");
                cause = c.source();
            }
            assert_eq!(chain, err.to_string());
        }
    }

    #[test]
    fn create_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        create_secret_file(&path, "a").unwrap();
        let err = create_secret_file(&path, "b").unwrap_err();
        assert!(
            matches!(&err, SecretFileError::Io { error, .. } if error.kind() == io::ErrorKind::AlreadyExists)
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
