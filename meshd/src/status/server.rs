//! The status socket: every connection gets one JSON document, gathered fresh, and is closed.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixListener;

use super::Status;

/// Binds the socket at `path` (replacing a stale one: the caller holds the run directory's
/// lock, so no live daemon owns it). Binding before serving lets the daemon answer from the
/// moment it returns, before anything else (network.json) announces it.
///
/// The socket is readable and writable by its owner only (0600), whatever the umask: it is
/// bound under a temporary name, given its mode, and renamed into place, so it is never
/// reachable under `path` with a wider mode.
pub fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("binding the status socket {}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(MODE))
        .with_context(|| format!("setting the mode of {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming the status socket to {}", path.display()))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// The status socket's mode: the daemon's user (root) only.
const MODE: u32 = 0o600;

/// Serve status requests until the task is dropped.
pub async fn serve(listener: UnixListener, gather: impl Fn() -> Status) {
    use tokio::io::AsyncWriteExt;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = serde_json::to_vec_pretty(&gather()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// The socket is 0600 whatever the umask, replaces a stale one, and leaves no
    /// temporary name behind.
    #[tokio::test]
    async fn the_socket_is_owner_only() {
        let dir = std::env::temp_dir().join(format!("meshd-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meshd.sock");
        std::fs::write(&path, b"stale").unwrap();
        // Under the usual umask (022) a plain bind makes the socket 0755.
        let _listener = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, MODE);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
