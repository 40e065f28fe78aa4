//! The one receiver of the peer set. Whoever learns something about peers (the daemon's static
//! peers at start, a gossip member coming or going, a new subnet lease, new cluster secrets)
//! changes the [`PeerSet`] through [`Backend::update`], and one reconcile step applies the result
//! to the backend in use: today the userspace data path, whose state is WireGuard sessions
//! ([`Sessions::sync`]) and the route-table snapshot ([`Routes::install`]).
//!
//! The kernel backends sit behind the same step: the path manager ([`Paths`]) gets every peer
//! set too, and keeps the kernel objects and each peer's path in step with it. Nothing that
//! feeds the peer set needs to know which backend carries which peer.

use std::sync::{Arc, Mutex, MutexGuard};

use meshd_crypto::Keyring;

use crate::paths::manager::Paths;
use crate::peers::wireguard::{NodeCrypto, Sessions};
use crate::peers::{Peer, PeerSet};
use crate::routes::Routes;

pub struct Backend {
    set: Mutex<PeerSet>,
    routes: Arc<Routes>,
    /// In encrypted mode; `None` in cleartext mode.
    sessions: Option<Sessions>,
    /// The kernel backends' half (the path manager), when the daemon runs one.
    paths: Option<Arc<Paths>>,
    /// Bumped by every new keyring, so the kernel backends re-key too.
    keyring_epoch: std::sync::atomic::AtomicU64,
}

impl Backend {
    /// A backend for `statics` (and later gossip members) that routes through `routes`; with
    /// `crypto`, every peer with a key gets a WireGuard session. Nothing is applied until the
    /// first [`Backend::apply`] or [`Backend::update`].
    pub fn new(routes: Arc<Routes>, crypto: Option<Arc<NodeCrypto>>, statics: Vec<Peer>) -> Self {
        Backend {
            set: Mutex::new(PeerSet::new(statics)),
            routes,
            sessions: crypto.map(Sessions::new),
            paths: None,
            keyring_epoch: Default::default(),
        }
    }

    /// Hand every peer set to the path manager too (the kernel backends).
    pub fn with_paths(mut self, paths: Arc<Paths>) -> Self {
        self.paths = Some(paths);
        self
    }

    pub fn paths(&self) -> Option<&Arc<Paths>> {
        self.paths.as_ref()
    }

    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// The node's keys and secrets, in encrypted mode.
    pub fn crypto(&self) -> Option<&Arc<NodeCrypto>> {
        self.sessions.as_ref().map(Sessions::crypto)
    }

    /// Applies the current peer set.
    pub fn apply(&self) {
        let set = self.lock();
        self.reconcile(&set);
    }

    /// Changes the peer set with `change`, and applies it when `change` says it changed.
    pub fn update(&self, change: impl FnOnce(&mut PeerSet) -> bool) {
        let mut set = self.lock();
        if change(&mut set) {
            self.reconcile(&set);
        }
    }

    /// New cluster secrets: every pair's preshared key is chosen again (sessions keep carrying
    /// traffic until the handshake under the new key completes).
    pub fn set_keyring(&self, ring: Keyring) {
        if let Some(c) = self.crypto() {
            c.set_keyring(ring);
            self.keyring_epoch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.apply();
        }
    }

    /// The reconcile step: the one place the peer set reaches the data path.
    fn reconcile(&self, set: &PeerSet) {
        let peers = set.resolve();
        let sessions = match &self.sessions {
            Some(s) => s.sync(&peers),
            None => Vec::new(),
        };
        tracing::debug!(peers = peers.len(), "peer table updated");
        self.routes.install(&peers, sessions);
        if let Some(p) = &self.paths {
            let epoch = self
                .keyring_epoch
                .load(std::sync::atomic::Ordering::Relaxed);
            p.publish(&peers, set.own_subnet(), epoch);
        }
    }

    fn lock(&self) -> MutexGuard<'_, PeerSet> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }
}
