//! Reloading the cluster secrets while meshd runs, so that the secret can be rotated without a
//! restart and without downtime (the three steps are in `meshd_crypto::keyring`).
//!
//! The ring is read again on SIGHUP and every [`POLL`], which also catches a Kubernetes Secret
//! volume swapping its files. A ring that fails to read or parse is reported once and the one
//! in use is kept: a half-edited file never takes a node off the cluster. A new ring goes to
//! the backend first (every pair's preshared key is chosen again) and then to gossip (sealing
//! and the ids this node publishes), through a `watch` channel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meshd_crypto::{Keyring, SecretId};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::{Config, CLUSTER_SECRET_ENV};

/// How often the secret file is read again.
pub(crate) const POLL: Duration = Duration::from_secs(2);

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
