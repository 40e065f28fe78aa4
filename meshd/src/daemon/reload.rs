//! Live reconfiguration: on SIGHUP the configuration is read again, the way `meshd run` read it
//! at start (the file, then the same flags and variables over it), and checked. What can change
//! in a running node changes: `log-level`, `seeds` (joined at once), `metrics-address` (the
//! listener moves, or stops when it is empty) and `metrics-per-peer`. Every other key that
//! changed is named in one `warn` and left as it was until a restart. A file that does not load
//! or validate changes nothing, and says why.
//!
//! The cluster secrets have their own reload (SIGHUP too, and a poll: [`super::secrets`]).

use anyhow::Result;
use std::sync::Arc;
use tokio::sync::watch;

use super::observe::Listener;
use crate::config::Config;
use crate::metrics::Metrics;

/// The keys a running node takes from a reload.
pub const LIVE_KEYS: [&str; 4] = ["log-level", "metrics-address", "metrics-per-peer", "seeds"];

/// Reads and checks the configuration again, as at start.
pub type Loader = Box<dyn Fn() -> Result<Config> + Send + Sync>;
/// Sets a new log filter (`log-level`); an error leaves the old one.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// What `meshd run` hands the daemon to reconfigure it while it runs.
pub struct Live {
    pub load: Loader,
    pub set_log_level: LogLevelSetter,
}

impl Live {
    /// For a daemon that is never reconfigured (tests): every reload reads `cfg` again.
    pub fn fixed(cfg: Config) -> Live {
        Live {
            load: Box::new(move || Ok(cfg.clone())),
            set_log_level: Box::new(|_| Ok(())),
        }
    }
}

/// The parts of the running node a reload changes.
pub(crate) struct Targets {
    pub(crate) listener: Listener,
    pub(crate) metrics: Arc<Metrics>,
    /// Gossip's seeds, when gossip runs.
    pub(crate) seeds: Option<watch::Sender<Vec<String>>>,
}

/// Apply a reload on every SIGHUP until the runtime stops. `running` is the configuration the
/// node was started with (as loaded, before the daemon filled in what it works out).
pub(crate) fn spawn(live: Live, running: Config, mut targets: Targets) -> Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        let mut running = running;
        while hup.recv().await.is_some() {
            match (live.load)() {
                Ok(new) => apply(&live, &mut running, new, &mut targets).await,
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "SIGHUP: the configuration does not load; nothing changed"
                ),
            }
        }
    });
    Ok(())
}

/// Take from `new` what can change without a restart; name the rest.
pub(crate) async fn apply(live: &Live, running: &mut Config, new: Config, t: &mut Targets) {
    let changed = running.changed_keys(&new);
    let mut applied = Vec::new();
    let mut restart = Vec::new();
    for key in changed {
        let ok = match key.as_str() {
            "log-level" => match (live.set_log_level)(&new.log_level) {
                Ok(()) => {
                    running.log_level.clone_from(&new.log_level);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "SIGHUP: log-level not changed");
                    continue;
                }
            },
            "metrics-address" => match t.listener.set(new.metrics_addr()).await {
                Ok(()) => {
                    running.metrics_address.clone_from(&new.metrics_address);
                    true
                }
                Err(e) => {
                    tracing::warn!(address = %new.metrics_address, error = %e, "SIGHUP: cannot listen there; metrics-address not changed");
                    continue;
                }
            },
            "metrics-per-peer" => {
                t.metrics.set_per_peer(new.metrics_per_peer);
                running.metrics_per_peer = new.metrics_per_peer;
                true
            }
            "seeds" => match &t.seeds {
                Some(tx) => {
                    tx.send_replace(new.seeds.clone());
                    running.seeds.clone_from(&new.seeds);
                    true
                }
                // Without gossip, seeds would turn it on: that takes a restart.
                None => false,
            },
            _ => false,
        };
        if ok {
            applied.push(key);
        } else {
            restart.push(key);
        }
    }
    if !applied.is_empty() {
        tracing::info!(keys = ?applied, "SIGHUP: configuration changed");
    }
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these keys take effect only after a restart; they keep their running values");
    }
    if applied.is_empty() && restart.is_empty() {
        tracing::info!("SIGHUP: configuration unchanged");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::http::{Counters, Router};
    use std::sync::Mutex;

    /// A node's reload targets, what they were handed, and the `Live` that sets log levels.
    struct Node {
        targets: Targets,
        seeds: watch::Receiver<Vec<String>>,
        live: Live,
        levels: Arc<Mutex<Vec<String>>>,
    }

    fn node() -> Node {
        let (metrics, _) = crate::metrics::tests::node(2, false);
        let (seeds, rx) = watch::channel(Vec::new());
        let listener = Listener::new(Router::new(), Arc::new(Counters::default()));
        let levels = Arc::new(Mutex::new(Vec::new()));
        let set = levels.clone();
        let live = Live {
            load: Box::new(|| Ok(Config::default())),
            set_log_level: Box::new(move |l| {
                set.lock().unwrap().push(l.to_string());
                Ok(())
            }),
        };
        let targets = Targets {
            listener,
            metrics,
            seeds: Some(seeds),
        };
        Node {
            targets,
            seeds: rx,
            live,
            levels,
        }
    }

    #[tokio::test]
    async fn live_keys_change_and_the_rest_keep_their_running_values() {
        let Node {
            targets: mut t,
            seeds,
            live,
            levels,
        } = node();
        let mut running = Config {
            metrics_address: String::new(),
            ..Config::default()
        };
        let mut new = running.clone();
        new.log_level = "debug".into();
        new.seeds = vec!["198.18.0.9:7946".into()];
        new.metrics_per_peer = true;
        new.metrics_address = "127.0.0.1:0".into();
        new.subnet = Some("10.244.9.0/24".parse().unwrap());
        new.underlay_mtu = 9000;
        apply(&live, &mut running, new, &mut t).await;
        assert_eq!(*levels.lock().unwrap(), ["debug"]);
        assert_eq!(*seeds.borrow(), ["198.18.0.9:7946"]);
        assert!(t.listener.addr().is_some());
        assert!(t.metrics.render().await.contains("peer="));
        // What needs a restart keeps its running value, and is still different next time.
        assert_eq!(running.subnet, None);
        assert_eq!(running.underlay_mtu, 1500);
        assert_eq!(running.log_level, "debug");
        assert!(running.metrics_per_peer);
        let next = Config {
            subnet: Some("10.244.9.0/24".parse().unwrap()),
            ..running.clone()
        };
        assert_eq!(running.changed_keys(&next), ["subnet"]);
        // Without gossip, new seeds need a restart too.
        t.seeds = None;
        let mut more = running.clone();
        more.seeds.push("198.18.0.10:7946".into());
        apply(&live, &mut running, more, &mut t).await;
        assert_eq!(running.seeds, ["198.18.0.9:7946"]);
        assert_eq!(LIVE_KEYS.len(), 4);
    }
}
