//! The gossip driver: a UDP socket, sealing, the clock, and turning membership events into
//! changes of the peer set (through the backend) and of this node's subnet (through
//! [`super::subnet`]).
//!
//! The state machine itself is `meshd_gossip::Gossip` (sans-IO); this module only drives it.
//! Every datagram is sealed with a key derived from the cluster secret; one that does not open
//! is counted and dropped before the state machine sees a byte of it.
//!
//! In encrypted mode the data path's per-peer "last heard" (a packet that authenticated) is
//! handed to the state machine as evidence that the member is alive
//! ([`Gossip::handle_evidence`]), so that a member a lossy gossip path would declare down keeps
//! its routes while its traffic flows. Cleartext packets prove nothing (anyone on the underlay
//! can forge them), so they are not used.
//!
//! Each node signs its record with its signing key ([`super::secrets::signing_key`]); the
//! names gossip binds to signing keys are kept in the state directory ([`bindings`]), and an
//! operator releases one with `meshd forget NAME` on the control socket ([`control`]).
//!
//! Every few seconds this node's path to each peer goes to gossip as its path summary
//! ([`summary`]), which gossip spreads to every member when it changed; and at once when
//! something NAT traversal waits for changed ([`react`]: an endpoint moved, a summary arrived,
//! the peer set changed).

mod bindings;
mod control;
mod events;
mod observed;
mod punch;
mod react;
mod seeds;
pub(crate) mod summary;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshd_crypto::{GossipSealer, Keyring, PublicKey, SealerConfig};
use meshd_gossip::{Capabilities, Gossip, Lease, LocalNode, SubnetRequest};
use tokio::net::UdpSocket;

use super::subnet::{self, to_net, to_subnet};
use crate::backend::Backend;
use crate::config::{Config, Encryption};
use crate::host::Host;
use crate::stats::Stamp;
use crate::wire::vtep_mac;

/// Largest datagram read from the socket: anything a peer may seal, with room to spare.
const RECV_BUFFER: usize = 64 << 10;
/// Datagrams handled per wake-up before timers get a turn, so a flood cannot starve them.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;
/// How often the data path's evidence is handed to gossip: its default tick, at which it
/// re-checks the members it holds; feeding it more often would change no decision.
const EVIDENCE_EVERY: Duration = Duration::from_millis(250);

/// What the status API reads: the state machine itself and the daemon's own counters.
pub(crate) struct Shared {
    pub(crate) gossip: Gossip,
    /// Seals and opens every datagram; counts what each cluster secret opened.
    pub(crate) sealer: GossipSealer,
    /// Datagrams that failed to open (wrong secret, tampered, replayed, too old).
    pub(crate) open_failures: u64,
    /// Datagrams that could not be sealed or sent.
    pub(crate) send_failures: u64,
    /// The pairs this node relays (`relay/`).
    pub(crate) relay: crate::relay::Relay,
}

/// Everything the gossip task needs from the daemon.
pub(crate) struct Membership {
    pub(crate) shared: Arc<Mutex<Shared>>,
    /// The node's current subnet, for the status API.
    pub(crate) subnet: Arc<Mutex<Option<Ipv4Net>>>,
    socket: UdpSocket,
    /// New cluster secrets from [`super::secrets`].
    keyring: tokio::sync::watch::Receiver<Keyring>,
    /// Scratch for sealing, allocated once.
    sealed: Vec<u8>,
    backend: Arc<Backend>,
    encryption: Encryption,
    seeds: Vec<String>,
    /// New seeds from a reload ([`super::reload`]).
    new_seeds: Option<tokio::sync::watch::Receiver<Vec<String>>>,
    /// The last resolution error of each seed that does not resolve, so it is logged once.
    seed_errors: HashMap<String, String>,
    own_addr: SocketAddr,
    /// Evidence older than this counts for nothing in gossip: not worth handing over.
    evidence_window: Duration,
    host: Host,
    cfg: Config,
    /// The control socket, served while gossip runs.
    control: Option<control::Control>,
    /// When the name bindings were last persisted.
    saver: bindings::Saver,
    /// When each refusal (name, reason) was last logged, so a flood logs once a minute.
    refusals_logged: HashMap<(String, meshd_gossip::Refused), Instant>,
    /// `address` was configured: it is advertised alone, whatever members observe.
    address_configured: bool,
    /// When the next reaction to a change is due (`react.rs`).
    react: react::React,
}

impl Membership {
    /// Binds the gossip socket and builds the state machine for this node.
    pub(crate) async fn start(
        cfg: &Config,
        backend: Arc<Backend>,
        public_key: Option<PublicKey>,
        keyring: tokio::sync::watch::Receiver<Keyring>,
        capabilities: Capabilities,
    ) -> Result<Membership> {
        let address = cfg.address.context("no address")?;
        let ring = keyring.borrow().clone();
        let sealer = GossipSealer::new(&ring, SealerConfig::default());
        let own_addr = SocketAddr::new(address, cfg.gossip.port);
        let bind = SocketAddr::new(cfg.bind_address(), cfg.gossip.port);
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("binding the gossip socket {bind}"))?;
        let host = Host::connect()?;
        let request = subnet::request(cfg, &host).await?;
        let (signing_key, how) =
            super::secrets::signing_key(cfg, true)?.context("no gossip signing key")?;
        let path = super::secrets::signing_key_path(cfg);
        if how == meshd_crypto::KeyFileStatus::Created {
            tracing::info!(path = %path.display(), "created the gossip signing key");
        }
        tracing::info!(key = %meshd_gossip::short_key(&signing_key.public()), "gossip signing key");
        let local = LocalNode {
            name: cfg.node_name.clone(),
            gossip_addr: own_addr,
            public_key: public_key.map(|k| *k.as_bytes()).unwrap_or([0; 32]),
            endpoints: vec![SocketAddr::new(address, cfg.data_port())],
            vtep_mac: vtep_mac(&cfg.node_name).0,
            capabilities,
            version: env!("CARGO_PKG_VERSION").into(),
            subnet: request,
            secret_ids: super::secrets::ids_raw(&ring),
            // Static peers' subnets are claims too: published, so no member is given one.
            reserved: cfg
                .peers
                .iter()
                .filter_map(|p| to_subnet(p.subnet))
                .collect(),
            boot_epoch: boot_epoch(),
            signing_key: Some(signing_key),
        };
        let gcfg = meshd_gossip::Config {
            cluster_cidr: to_subnet(cfg.cluster_cidr).context("cluster-cidr")?,
            node_prefix: cfg.node_prefix(),
            ..meshd_gossip::Config::default()
        };
        let evidence_window = gcfg.evidence_window;
        let mut gossip =
            Gossip::new(gcfg, local, rand_seed(), Instant::now()).context("starting gossip")?;
        match bindings::load(&cfg.state_dir) {
            Ok(b) => gossip.restore_bindings(b),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot read the saved name bindings: names bind again on first sight; the file is rewritten"
            ),
        }
        let saver = bindings::Saver::new(&cfg.state_dir, gossip.bindings_version());
        let control = control::Control::bind(&cfg.run_dir)?;
        let initial = match request {
            SubnetRequest::Explicit(s) | SubnetRequest::Persisted(Lease { subnet: s, .. }) => {
                to_net(s)
            }
            SubnetRequest::Auto => None,
        };
        tracing::info!(port = cfg.gossip.port, seeds = cfg.seeds.len(), subnet = ?initial, "gossip is up");
        // No member may be routed into our own subnet; applied with the first member.
        backend.update(|set| {
            set.set_own_subnet(initial);
            false
        });
        Ok(Membership {
            shared: Arc::new(Mutex::new(Shared {
                gossip,
                sealer,
                open_failures: 0,
                send_failures: 0,
                relay: crate::relay::Relay::default(),
            })),
            subnet: Arc::new(Mutex::new(initial)),
            socket,
            keyring,
            sealed: vec![0u8; RECV_BUFFER],
            backend,
            encryption: cfg.encryption,
            seeds: cfg.seeds.clone(),
            new_seeds: None,
            seed_errors: HashMap::new(),
            own_addr,
            evidence_window,
            host,
            cfg: cfg.clone(),
            control: Some(control),
            saver,
            refusals_logged: HashMap::new(),
            address_configured: false,
            react: react::React::default(),
        })
    }

    /// `address` was configured (it wins over what members observe).
    pub(crate) fn address_configured(mut self, configured: bool) -> Self {
        self.address_configured = configured;
        self
    }

    /// Join the seeds `rx` carries whenever they change (a reload).
    pub(crate) fn with_seeds(mut self, rx: tokio::sync::watch::Receiver<Vec<String>>) -> Self {
        self.new_seeds = Some(rx);
        self
    }

    /// Drives gossip until `stop` fires, or until a subnet lease cannot be persisted or
    /// applied (returned as the error: the daemon exits on it), then announces the departure.
    pub(crate) async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) -> Result<()> {
        self.join_seeds().await;
        let mut retry = tokio::time::interval(seeds::SEED_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.tick().await;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut plain = vec![0u8; RECV_BUFFER];
        let mut evidence = tokio::time::interval(EVIDENCE_EVERY);
        evidence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let authenticated = self.encryption == Encryption::Wireguard;
        let mut paths = tokio::time::interval(summary::PATHS_EVERY);
        paths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control = self
            .control
            .take()
            .map(|c| tokio::spawn(c.serve(self.shared.clone())));
        let outcome = loop {
            let deadline = self.lock().gossip.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break Ok(()),
                Ok(()) = self.keyring.changed() => {
                    let ring = self.keyring.borrow_and_update().clone();
                    let mut shared = self.lock();
                    shared.sealer.set_keyring(&ring);
                    shared.gossip.set_secret_ids(super::secrets::ids_raw(&ring));
                }
                _ = sleep => {
                    self.lock().gossip.handle_timeout(Instant::now());
                }
                _ = react::due(self.react.at) => self.react_now(),
                _ = crate::link::endpoint::CHANGED.notified() => self.react.soon(),
                _ = retry.tick(), if self.alone() => self.join_seeds().await,
                seeds = seeds::next(&mut self.new_seeds) => {
                    tracing::info!(?seeds, "gossip seeds changed; joining them");
                    self.seeds = seeds;
                    self.seed_errors.clear();
                    self.join_seeds().await;
                }
                _ = evidence.tick(), if authenticated => {
                    self.feed_evidence();
                    self.punch(&self.backend.routes().load());
                }
                _ = paths.tick() => self.publish_paths(),
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.receive(&buf[..n], from, &mut plain);
                    }
                    for _ in 1..MAX_DATAGRAMS_PER_WAKE {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.receive(&buf[..n], from, &mut plain),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.flush().await;
            if let Err(e) = self.handle_events().await {
                break Err(e);
            }
            let taken = self.lock().gossip.summaries_taken();
            self.react.if_summaries_taken(taken);
            self.save_bindings();
        };
        if let Some(task) = control {
            task.abort();
        }
        tracing::info!("leaving the cluster");
        self.lock().gossip.leave(Instant::now());
        self.flush().await;
        outcome
    }

    /// Hands gossip, for every peer that sent authenticated traffic within the evidence
    /// window, when it last did; and pins each member's gossip to the address its
    /// authenticated traffic comes from (`meshd_gossip::Gossip::pin_source`).
    fn feed_evidence(&self) {
        let table = self.backend.routes().load();
        let (now, stamp) = (Instant::now(), Stamp::now());
        let mut shared = self.lock();
        let window = self.evidence_window;
        for p in table.peers() {
            // Its gossip is believed to come from where its authenticated traffic does.
            let pin = p.ep.working(stamp).then(|| p.endpoint().ip());
            shared.gossip.pin_source(&p.name, pin);
            let Some(age) = p.stats.last_heard().map(|t| t.age(stamp)) else {
                continue;
            };
            if let (true, Some(at)) = (age < window, now.checked_sub(age)) {
                shared.gossip.handle_evidence(&p.name, at);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr, plain: &mut [u8]) {
        let mut shared = self.lock();
        match shared.sealer.open(datagram, plain, SystemTime::now()) {
            Ok(n) => {
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                shared
                    .gossip
                    .handle_datagram(from, &plain[..n], Instant::now());
            }
            Err(e) => {
                shared.open_failures += 1;
                tracing::trace!(error = %e, "dropped a gossip datagram that did not open");
            }
        }
    }

    async fn flush(&mut self) {
        loop {
            let Some(t) = self.lock().gossip.poll_transmit() else {
                break;
            };
            let sealed = self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sealer
                .seal(&t.payload, &mut self.sealed, SystemTime::now());
            let sent = match sealed {
                Ok(n) => self.socket.send_to(&self.sealed[..n], t.dst).await.is_ok(),
                Err(_) => false,
            };
            if !sent {
                self.lock().send_failures += 1;
            }
        }
    }

    /// Persists the lease, then applies it. Either failing is fatal (see [`Membership::run`]):
    /// a lease in use but not on disk could come back as another subnet after a restart and
    /// orphan the pods, and a lease on disk but not applied leaves a node that routes nothing
    /// of its own. Exiting lets the supervisor (systemd, the kubelet) retry and show it.
    async fn assigned(&mut self, lease: Lease) -> Result<()> {
        let subnet = to_net(lease.subnet)
            .with_context(|| format!("gossip assigned {}, which is no subnet", lease.subnet))?;
        tracing::info!(%subnet, "subnet lease");
        // The write is fsync'd: off this thread, which must keep answering SWIM probes.
        let dir = self.cfg.state_dir.clone();
        tokio::task::spawn_blocking(move || subnet::write_lease(&dir, &lease))
            .await
            .context("the lease writer failed")?
            .with_context(|| format!("persisting the subnet lease {subnet}"))?;
        subnet::apply(&self.host, &self.cfg, subnet)
            .await
            .with_context(|| format!("applying the subnet lease {subnet}"))?;
        *self.subnet.lock().unwrap_or_else(|p| p.into_inner()) = Some(subnet);
        self.backend.update(|set| set.set_own_subnet(Some(subnet)));
        Ok(())
    }
}

fn boot_epoch() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn rand_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        return u64::from(std::process::id()) ^ u64::from(boot_epoch()) << 20;
    }
    u64::from_le_bytes(b)
}
