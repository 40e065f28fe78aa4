//! The status socket: every connection gets one JSON document, gathered fresh, and is closed.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::net::UnixListener;

use super::Status;

/// Binds the socket at `path` (replacing a stale one). Binding before serving lets the daemon
/// answer from the moment it returns, before anything else (network.json) announces it.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .with_context(|| format!("binding the status socket {}", path.display()))
}

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
