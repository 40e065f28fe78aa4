//! The seeds: joined at start, and again (their names resolved anew) while this node knows no
//! live member, or when a reload changes them.

use std::time::{Duration, Instant};

use meshd_gossip::MemberState;

use super::Membership;
use crate::config::split_seed;

/// How often the seeds' names are resolved and joined again while this node knows no live
/// member: a seed started at the same moment (a compose service) may not resolve at first, and
/// a seed that was recreated may have a new address.
pub(super) const SEED_RETRY: Duration = Duration::from_secs(2);

impl Membership {
    /// Seeds are configured and no member is alive (or suspect): keep trying them.
    pub(super) fn alone(&self) -> bool {
        !self.seeds.is_empty()
            && !self
                .lock()
                .gossip
                .members()
                .any(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
    }

    /// Resolves every seed's name again and joins what it resolves to. A name that does not
    /// resolve is logged once per distinct error, and again when it resolves.
    pub(super) async fn join_seeds(&mut self) {
        let now = Instant::now();
        for seed in self.seeds.clone() {
            let Some((host, port)) = split_seed(&seed) else {
                continue;
            };
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => {
                    if self.seed_errors.remove(&seed).is_some() {
                        tracing::info!(%seed, "the gossip seed resolves now");
                    }
                    for a in addrs.filter(|a| *a != self.own_addr) {
                        tracing::debug!(%seed, addr = %a, "joining");
                        self.lock().gossip.join(a, now);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.seed_errors.get(&seed) != Some(&text) {
                        tracing::warn!(%seed, error = %text, "cannot resolve a gossip seed; retrying every 2 s");
                        self.seed_errors.insert(seed.clone(), text);
                    }
                }
            }
        }
        self.flush().await;
    }
}

/// The next seeds a reload hands over; never, without a reload channel (or once it is closed).
pub(super) async fn next(
    rx: &mut Option<tokio::sync::watch::Receiver<Vec<String>>>,
) -> Vec<String> {
    if let Some(r) = rx.as_mut() {
        if r.changed().await.is_ok() {
            return r.borrow_and_update().clone();
        }
    }
    *rx = None;
    std::future::pending().await
}
