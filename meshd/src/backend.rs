//! The one receiver of the peer set. Whoever learns something about peers (the daemon's static
//! peers at start, gossip members coming or going, a new subnet lease, new cluster secrets)
//! changes the [`PeerSet`] through [`Backend::update`], and one reconcile step applies the
//! result: [`Links::reconcile`] updates each peer's link in place (by diff), the route table
//! gets a new snapshot of the links when any came, went or changed ([`Routes::install`]), and
//! the path manager ([`Paths`]) gets the same links to bring the kernel in step.
//!
//! A pass is O(N) with hashed lookups and does no I/O: the kernel work happens on the path
//! manager's own thread, so a large change never holds up the gossip thread that calls here.
//! Nothing that feeds the peer set needs to know which backend carries which peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use meshd_crypto::Keyring;

use crate::link::registry::Links;
use crate::paths::manager::Paths;
use crate::peers::wireguard::NodeCrypto;
use crate::peers::{Peer, PeerSet};
use crate::routes::Routes;

pub struct Backend {
    state: Mutex<State>,
    routes: Arc<Routes>,
    /// The node's keys, in encrypted mode.
    crypto: Option<Arc<NodeCrypto>>,
    /// The kernel backends' half (the path manager), when the daemon runs one.
    paths: Option<Arc<Paths>>,
    /// Bumped by every new keyring, so sessions and the kernel backends re-key.
    keyring_epoch: AtomicU64,
}

/// What is desired (the peer set) and what was made of it (the links).
struct State {
    set: PeerSet,
    links: Links,
}

impl Backend {
    /// A backend for `statics` (and later gossip members) that routes through `routes`; with
    /// `crypto`, every peer with a key gets a WireGuard session; `mtu` is the pod MTU every
    /// link starts with. Nothing is applied until the first [`Backend::apply`] or
    /// [`Backend::update`].
    pub fn new(
        routes: Arc<Routes>,
        crypto: Option<Arc<NodeCrypto>>,
        statics: Vec<Peer>,
        mtu: u16,
    ) -> Self {
        let links = Links::new(routes.local().clone(), crypto.clone(), mtu);
        Backend {
            state: Mutex::new(State {
                set: PeerSet::new(statics),
                links,
            }),
            routes,
            crypto,
            paths: None,
            keyring_epoch: AtomicU64::new(0),
        }
    }

    /// Hand every pass's links to the path manager too (the kernel backends).
    pub(crate) fn with_paths(mut self, paths: Arc<Paths>) -> Self {
        self.paths = Some(paths);
        self
    }

    pub(crate) fn paths(&self) -> Option<&Arc<Paths>> {
        self.paths.as_ref()
    }

    pub(crate) fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// The node's keys and secrets, in encrypted mode.
    pub(crate) fn crypto(&self) -> Option<&Arc<NodeCrypto>> {
        self.crypto.as_ref()
    }

    /// Applies the current peer set.
    pub(crate) fn apply(&self) {
        let mut state = self.lock();
        self.reconcile(&mut state);
    }

    /// Changes the peer set with `change`, and applies it when `change` says it changed.
    /// Changes that arrive together belong in one call: one pass applies them all.
    pub fn update(&self, change: impl FnOnce(&mut PeerSet) -> bool) {
        let mut state = self.lock();
        if change(&mut state.set) {
            self.reconcile(&mut state);
        }
    }

    /// New cluster secrets: every pair's preshared key is chosen again (sessions keep carrying
    /// traffic until the handshake under the new key completes).
    pub fn set_keyring(&self, ring: Keyring) {
        if let Some(c) = self.crypto() {
            c.set_keyring(ring);
            self.keyring_epoch.fetch_add(1, Ordering::Relaxed);
            self.apply();
        }
    }

    /// The peers whose subnets the last reconcile refused, and the refusals since start.
    pub(crate) fn refused(&self) -> (Vec<crate::peers::refused::Refused>, u64) {
        self.lock().set.refused()
    }

    /// The reconcile step: the one place the peer set reaches the data path.
    fn reconcile(&self, state: &mut State) {
        let epoch = self.keyring_epoch.load(Ordering::Relaxed);
        let peers = state.set.resolve();
        let pass = state.links.reconcile(peers.iter().copied(), epoch);
        if pass.changed {
            tracing::debug!(peers = peers.len(), "peer table updated");
            self.routes.install(&pass.links);
        }
        if let Some(p) = &self.paths {
            p.publish(pass.links, state.set.own_subnet());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
