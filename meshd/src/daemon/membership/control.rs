//! The daemon's side of the control socket ([`crate::control`]): `meshd forget NAME`.
//!
//! Served on the control-plane runtime beside gossip. A request takes the gossip lock for one
//! call of the state machine, which queues what to send; the gossip task sends it on its next
//! wake-up (foca's gossip timer fires every 100 ms).

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Shared;
use crate::control::{CONTROL_SOCKET, MAX_REQUEST};

/// A client gets this long to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound control socket, removed when dropped.
pub(crate) struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Binds `control.sock` in `run_dir` (replacing a stale one), mode 0600.
    pub(crate) fn bind(run_dir: &Path) -> Result<Control> {
        let path = run_dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} 0600", path.display()))?;
        Ok(Control { listener, path })
    }

    /// Answers requests until the task is dropped.
    pub(crate) async fn serve(self, shared: Arc<Mutex<Shared>>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &shared).await;
            });
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(mut stream: UnixStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    // Only our own user (root, as a rule): the file mode is not the only guard.
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let allowed = stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || c.uid() == euid);
    let reply = if allowed {
        let mut line = String::new();
        let mut reader = BufReader::new(&mut stream).take(MAX_REQUEST as u64);
        match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => handle(line.trim_end(), shared),
            _ => "error no request line".to_owned(),
        }
    } else {
        "error only root (or meshd's own user) may use the control socket".to_owned()
    };
    stream.write_all(format!("{reply}\n").as_bytes()).await?;
    stream.shutdown().await
}

/// One request line to its answer line.
fn handle(line: &str, shared: &Mutex<Shared>) -> String {
    let Some(("forget", name)) = line.split_once(' ') else {
        return "error unknown request (this meshd knows `forget NAME`)".to_owned();
    };
    if !meshd_gossip::is_valid_name(name) {
        return format!("error not a node name: {}", meshd_gossip::NAME_RULE);
    }
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    match g.gossip.forget(name, Instant::now()) {
        Ok(key) => {
            let key = meshd_gossip::short_key(&key);
            tracing::warn!(member = %name, %key, "forgetting the signing key this member is bound to, on every member (meshd forget)");
            format!(
                "ok {name}: signing key {key} forgotten here and, through gossip, on every member; \
                 {name} binds to the next key it signs with after {} s, unless {name} is alive with key {key} and keeps it",
                meshd_gossip::REBIND_HOLD.as_secs()
            )
        }
        Err(e) => format!("error {name}: {e}"),
    }
}
