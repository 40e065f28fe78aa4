//! The node's secrets besides the WireGuard key: the record-signing key, and the cluster
//! secrets, reloaded while meshd runs so that they can be rotated without a restart and without
//! downtime (the three steps are in `meshd_crypto::keyring`).
//!
//! The signing key ([`signing_key`]) signs this node's gossip record; every member binds this
//! node's name to its public half on first sight. It lives next to `node.key` in the state
//! directory, in the same format (32 random bytes in base64) and through the same code: created
//! 0600 on first start without ever existing half-written, refused when group or others can
//! read it. Those 32 bytes are the ed25519 seed (hashed into the signing scalar, so the bits
//! `wg genkey`-style clamping fixes cost nothing that matters: 251 random bits remain).
//! Losing it (a reinstalled node) makes the cluster refuse this node's name until an operator
//! runs `meshd forget NAME` on another node.
//!
//! The ring is read again on SIGHUP and every [`POLL`], which also catches a Kubernetes Secret
//! volume swapping its files. A ring that fails to read or parse is reported once and the one
//! in use is kept: a half-edited file never takes a node off the cluster. A new ring goes to
//! the backend first (every pair's preshared key is chosen again) and then to gossip (sealing
//! and the ids this node publishes), through a `watch` channel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meshd_crypto::{KeyFileStatus, Keyring, SecretId};
use meshd_gossip::SigningKey;
use std::path::PathBuf;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::{Config, CLUSTER_SECRET_ENV};

/// How often the secret file is read again.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// The signing key's file in the state directory.
pub(crate) const SIGNING_KEY_FILE: &str = "signing.key";

/// Where this node's record-signing key is.
pub(crate) fn signing_key_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join(SIGNING_KEY_FILE)
}

/// The record-signing key: read with every check (no file, open to others, garbage: refused),
/// and, when `create`, made on first start. `None`: no key yet and `create` is false.
pub(crate) fn signing_key(
    cfg: &Config,
    create: bool,
) -> Result<Option<(SigningKey, KeyFileStatus)>> {
    let path = signing_key_path(cfg);
    let key = if create {
        meshd_crypto::load_or_create_private_key(&path).map(Some)
    } else {
        meshd_crypto::read_private_key(&path).map(|k| k.map(|k| (k, KeyFileStatus::Loaded)))
    };
    let key = key.context("loading the gossip signing key")?;
    Ok(key.map(|(k, how)| (SigningKey::from_seed(k.as_bytes()), how)))
}

/// Ids as the logs and `meshd status` print them.
pub(crate) fn ids_text(ids: &[SecretId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// Ids as a gossip record carries them.
pub(crate) fn ids_raw(ring: &Keyring) -> Vec<[u8; 4]> {
    ring.ids().iter().map(|id| id.0).collect()
}

/// Watches the cluster secrets until the runtime stops. `initial` is the ring read at start.
pub(crate) fn spawn(
    cfg: Config,
    initial: Keyring,
    backend: Arc<Backend>,
) -> Result<watch::Receiver<Keyring>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = watch::channel(initial);
    let from_env = std::env::var_os(CLUSTER_SECRET_ENV).is_some();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = tick.tick() => "poll",
            };
            if from_env && why == "poll" {
                // An environment variable cannot change under a running process.
                continue;
            }
            let ring = match cfg.cluster_keyring() {
                Ok(r) => r,
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::error!(error = %text, "cannot reload the cluster secrets; keeping the ones in use");
                        last_error = Some(text);
                    }
                    continue;
                }
            };
            last_error = None;
            if ring.ids() == tx.borrow().ids() {
                if why == "SIGHUP" {
                    tracing::info!("SIGHUP: cluster secrets unchanged");
                }
                continue;
            }
            tracing::info!(
                sealing = %ring.primary_id(), held = ?ids_text(&ring.ids()), trigger = why,
                "cluster secrets changed"
            );
            backend.set_keyring(ring.clone());
            tx.send_replace(ring);
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(dir: &std::path::Path) -> Config {
        Config {
            state_dir: dir.to_owned(),
            ..Config::default()
        }
    }

    #[test]
    fn the_signing_key_is_made_0600_once_and_refused_when_readable() {
        let dir = std::env::temp_dir().join(format!("meshd-signing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let c = cfg(&dir);
        assert!(signing_key(&c, false).unwrap().is_none());
        let (first, how) = signing_key(&c, true).unwrap().unwrap();
        assert_eq!(how, KeyFileStatus::Created);
        let path = signing_key_path(&c);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, how) = signing_key(&c, true).unwrap().unwrap();
        assert_eq!(
            (again.public(), how),
            (first.public(), KeyFileStatus::Loaded)
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", signing_key(&c, true).unwrap_err());
        assert!(
            err.contains("signing key") && err.contains("chmod 600"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
