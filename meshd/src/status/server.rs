//! The status socket: every connection gets one JSON document, gathered fresh, and is closed.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

use super::Status;

/// Serve status requests until the task is dropped.
pub async fn serve(path: PathBuf, gather: impl Fn() -> Status) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
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
