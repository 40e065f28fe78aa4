//! The daemon's on-disk contract: the files it keeps under the run and state directories, their
//! names and formats, and how they are written (atomically, so a reader sees the old file or the
//! new one, never half of one). The CNI plugin and `meshd status` read these; nothing else here
//! depends on the rest of the daemon.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The control socket under the run directory (`meshd status` talks to it).
pub const SOCKET_NAME: &str = "meshd.sock";
/// What the CNI plugin reads under the run directory: [`NetworkFile`].
pub const NETWORK_FILE: &str = "network.json";
/// The persisted gossip subnet lease under the state directory.
pub const LEASE_FILE: &str = "lease.json";
/// The node's WireGuard private key under the state directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The lock a running daemon holds under the run directory ([`RunLock`]).
pub(crate) const LOCK_FILE: &str = "meshd.lock";

/// What the CNI plugin needs to wire a pod; written atomically whenever it changes.
///
/// The plugin does not link meshd and reads this with a parser of its own (`cni/src/node.rs`);
/// `tests/e2e/contract.rs` writes it with [`NetworkFile::write`] and reads it back with that
/// parser, so a field renamed, retyped or added on one side fails there, not in a pod's ADD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkFile {
    pub(crate) node: String,
    pub subnet: String,
    pub gateway: String,
    pub(crate) bridge: String,
    pub(crate) mtu: u16,
    pub(crate) cluster_cidr: String,
    pub(crate) pid: u32,
}

impl NetworkFile {
    /// Write the file under `run_dir` ([`NETWORK_FILE`]), atomically ([`write_atomic`]).
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_atomic(&run_dir.join(NETWORK_FILE), self)
    }
}

/// Write `value` as JSON to `path` so readers see the old or the new file, never half of one,
/// and so a crash or power loss cannot leave it empty or truncated: the body goes to a
/// temporary file, which is synced, renamed over `path`, and the directory synced so the
/// rename itself is on disk. On failure the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let body = serde_json::to_vec_pretty(value)?;
    let tmp = path.with_extension("json.tmp");
    let written = write_synced(&tmp, &body)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing the directory {}", dir.display()))
}

/// Fails, with the cause, unless a file can be written in `dir` the way [`write_atomic`] does
/// (a read-only or full file system fails here, not at the first real write).
pub(crate) fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(WRITE_PROBE);
    write_atomic(&probe, &"meshd checks that it can write here")?;
    std::fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))
}

/// What [`check_writable`] writes and removes.
const WRITE_PROBE: &str = ".meshd-write-check.json";

/// One daemon per run directory: an exclusive `flock` on [`LOCK_FILE`], held until the process
/// exits (the kernel drops it with the last descriptor, so a crash never leaves it stale). A
/// second `meshd run` would otherwise join the first one's reuseport group, attach queues to its
/// TUN device and replace its status socket. The file holds the holder's pid, for the error.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock, or says who holds it.
    pub(crate) fn acquire(run_dir: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = run_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                anyhow::bail!(
                    "another meshd{holder} is running with the run directory {}: one meshd per \
                     run directory; stop it first, or give this one its own --run-dir",
                    run_dir.display()
                );
            }
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file })
    }

    /// Whether a running daemon holds the lock under `run_dir` (asked with a shared lock that
    /// is released at once; nothing is written).
    pub(crate) fn held(run_dir: &Path) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(file) = File::open(run_dir.join(LOCK_FILE)) else {
            return false;
        };
        // SAFETY: as in `acquire`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }
}

fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(body)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("meshd-runfiles-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("lease.json");
        write_atomic(&path, &[1, 2, 3]).unwrap();
        write_atomic(&path, &"second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "\"second\"");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["lease.json"]);
        check_writable(&dir).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "the probe is removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A second lock on one run directory is refused while the first is held, names the
    /// holder, and is granted once the first is dropped.
    #[test]
    fn one_lock_per_run_directory() {
        let dir = scratch("lock");
        let first = RunLock::acquire(&dir).unwrap();
        let e = format!("{:#}", RunLock::acquire(&dir).unwrap_err());
        assert!(e.contains("another meshd"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(RunLock::held(&dir));
        drop(first);
        assert!(!RunLock::held(&dir));
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        let mode = std::fs::metadata(dir.join(LOCK_FILE))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A failed write names the file and leaves the old one as it was.
    #[test]
    fn a_failed_write_names_the_path_and_keeps_the_old_file() {
        let dir = scratch("fail");
        let path = dir.join("lease.json");
        write_atomic(&path, &"old").unwrap();
        // A directory where the temporary file goes: the write fails before the rename.
        std::fs::create_dir(dir.join("lease.json.tmp")).unwrap();
        let e = format!("{:#}", write_atomic(&path, &"new").unwrap_err());
        assert!(e.contains("lease.json.tmp"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "\"old\"");
        let missing = dir.join("no-such-dir");
        let e = format!("{:#}", check_writable(&missing).unwrap_err());
        assert!(e.contains("no-such-dir"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
