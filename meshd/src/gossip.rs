//! The daemon half of gossip: a UDP socket, sealing, the clock, and what membership events do
//! to the peer table, the subnet lease, the bridge and `network.json`.
//!
//! The state machine itself is `meshd_gossip::Gossip` (sans-IO); this module only drives it.
//! Every datagram is sealed with a key derived from the cluster secret; one that does not open
//! is counted and dropped before the state machine sees a byte of it.

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use meshd_crypto::{GossipSealer, Keyring, PublicKey, SealerConfig, SecretId};
use meshd_gossip::{
    Capabilities, Event, Gossip, Lease, LocalNode, MemberState, NodeRecord, Subnet, SubnetRequest,
};
use tokio::net::UdpSocket;

use crate::config::{split_seed, Config, Encryption};
use crate::host::{self, Host};
use crate::routes::{Peer, PeerKey, Routes};
use crate::runfiles::{self, NetworkFile, LEASE_FILE, NETWORK_FILE};
use crate::status::{GossipCounters, MemberStatus, SecretStatus};
use crate::wire::vtep_mac;

/// Largest datagram read from the socket: anything a peer may seal, with room to spare.
const RECV_BUFFER: usize = 64 << 10;
/// Datagrams handled per wake-up before timers get a turn, so a flood cannot starve them.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;

/// What the status API reads: the state machine itself and the daemon's own counters.
pub struct Shared {
    pub gossip: Gossip,
    /// Seals and opens every datagram; counts what each cluster secret opened.
    pub sealer: GossipSealer,
    /// Datagrams that failed to open (wrong secret, tampered, replayed, too old).
    pub open_failures: u64,
    /// Datagrams that could not be sealed or sent.
    pub send_failures: u64,
}

impl Shared {
    /// Members with state and seconds in it, and the counters, for `meshd status`.
    pub fn report(&self) -> (Vec<MemberStatus>, GossipCounters) {
        let now = Instant::now();
        let members = self
            .gossip
            .members()
            .map(|m| MemberStatus {
                name: m.record.name.clone(),
                state: state_name(m.state).into(),
                since_secs: now.saturating_duration_since(m.since).as_secs(),
                address: m.record.gossip_addr.to_string(),
                subnet: m.record.subnet.map(|c| to_net(c.subnet).to_string()),
            })
            .collect();
        let c = self.gossip.counters();
        let counters = GossipCounters {
            datagrams_in: c.datagrams_in,
            datagrams_out: c.datagrams_out,
            open_failures: self.open_failures,
            decode_failures: c.decode_failures,
            send_failures: self.send_failures,
        };
        (members, counters)
    }

    /// The cluster secrets: which seals, and how many datagrams each opened.
    pub fn secrets(&self) -> Vec<SecretStatus> {
        let sealing = self.sealer.sealing_id();
        self.sealer
            .opened()
            .map(|(id, opened)| SecretStatus {
                id: id.to_string(),
                sealing: id == sealing,
                opened: Some(opened),
            })
            .collect()
    }
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

/// Everything the gossip task needs from the daemon.
pub struct Membership {
    pub shared: Arc<Mutex<Shared>>,
    /// The node's current subnet, for the status API.
    pub subnet: Arc<Mutex<Option<Ipv4Net>>>,
    socket: UdpSocket,
    /// New cluster secrets from [`crate::secrets`].
    keyring: tokio::sync::watch::Receiver<Keyring>,
    /// Scratch for sealing, allocated once.
    sealed: Vec<u8>,
    routes: Arc<Routes>,
    static_peers: Vec<(Peer, Option<PeerKey>)>,
    gossip_peers: BTreeMap<String, (Peer, Option<PeerKey>)>,
    encryption: Encryption,
    seeds: Vec<String>,
    own_addr: SocketAddr,
    host: Host,
    cfg: Config,
}

impl Membership {
    /// Binds the gossip socket and builds the state machine for this node.
    pub async fn start(
        cfg: &Config,
        routes: Arc<Routes>,
        static_peers: Vec<(Peer, Option<PeerKey>)>,
        public_key: Option<PublicKey>,
        keyring: tokio::sync::watch::Receiver<Keyring>,
    ) -> Result<Membership> {
        let address = cfg.address.context("no address")?;
        let ring = keyring.borrow().clone();
        let sealer = GossipSealer::new(&ring, SealerConfig::default());
        let own_addr = SocketAddr::new(address, cfg.gossip.port);
        let bind = match address {
            IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], cfg.gossip.port)),
            IpAddr::V6(_) => SocketAddr::from(([0u16; 8], cfg.gossip.port)),
        };
        let socket = UdpSocket::bind(bind)
            .await
            .with_context(|| format!("binding the gossip socket {bind}"))?;
        let request = subnet_request(cfg)?;
        let local = LocalNode {
            name: cfg.node_name.clone(),
            gossip_addr: own_addr,
            public_key: public_key.map(|k| *k.as_bytes()).unwrap_or([0; 32]),
            endpoints: vec![SocketAddr::new(address, cfg.data_port())],
            vtep_mac: vtep_mac(&cfg.node_name).0,
            capabilities: Capabilities(match cfg.encryption {
                Encryption::Wireguard => Capabilities::ENCRYPTION_WIREGUARD,
                Encryption::None => Capabilities::ENCRYPTION_NONE,
            }),
            version: env!("CARGO_PKG_VERSION").into(),
            subnet: request,
            secret_ids: crate::secrets::ids_raw(&ring),
            boot_epoch: boot_epoch(),
        };
        let gcfg = meshd_gossip::Config {
            cluster_cidr: to_subnet(cfg.cluster_cidr).context("cluster-cidr")?,
            node_prefix: cfg.node_prefix(),
            ..meshd_gossip::Config::default()
        };
        let gossip =
            Gossip::new(gcfg, local, rand_seed(), Instant::now()).context("starting gossip")?;
        let initial = match request {
            SubnetRequest::Explicit(s) | SubnetRequest::Persisted(Lease { subnet: s, .. }) => {
                Some(to_net(s))
            }
            SubnetRequest::Auto => None,
        };
        tracing::info!(port = cfg.gossip.port, seeds = cfg.seeds.len(), subnet = ?initial, "gossip is up");
        Ok(Membership {
            shared: Arc::new(Mutex::new(Shared {
                gossip,
                sealer,
                open_failures: 0,
                send_failures: 0,
            })),
            subnet: Arc::new(Mutex::new(initial)),
            socket,
            keyring,
            sealed: vec![0u8; RECV_BUFFER],
            routes,
            static_peers,
            gossip_peers: BTreeMap::new(),
            encryption: cfg.encryption,
            seeds: cfg.seeds.clone(),
            own_addr,
            host: Host::connect()?,
            cfg: cfg.clone(),
        })
    }

    /// Drives gossip until `stop` fires, then announces the departure and returns.
    pub async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) -> Result<()> {
        self.join_seeds().await;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut plain = vec![0u8; RECV_BUFFER];
        loop {
            let deadline = self.lock().gossip.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                Ok(()) = self.keyring.changed() => {
                    let ring = self.keyring.borrow_and_update().clone();
                    let mut shared = self.lock();
                    shared.sealer.set_keyring(&ring);
                    shared.gossip.set_secret_ids(crate::secrets::ids_raw(&ring));
                }
                _ = sleep => {
                    self.lock().gossip.handle_timeout(Instant::now());
                }
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
            self.handle_events().await;
        }
        tracing::info!("leaving the cluster");
        self.lock().gossip.leave(Instant::now());
        self.flush().await;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn join_seeds(&mut self) {
        let now = Instant::now();
        for seed in self.seeds.clone() {
            let Some((host, port)) = split_seed(&seed) else {
                continue;
            };
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => {
                    for a in addrs.filter(|a| *a != self.own_addr) {
                        tracing::info!(seed = %a, "joining");
                        self.lock().gossip.join(a, now);
                    }
                }
                Err(e) => tracing::warn!(seed = %seed, error = %e, "cannot resolve a gossip seed"),
            }
        }
        self.flush().await;
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

    async fn handle_events(&mut self) {
        let mut changed = false;
        loop {
            let Some(event) = self.lock().gossip.poll_event() else {
                break;
            };
            match event {
                Event::MemberUp(r) | Event::MemberUpdated(r) => {
                    tracing::info!(member = %r.name, subnet = ?r.subnet.map(|c| c.subnet), "member up");
                    self.upsert(&r);
                    changed = true;
                }
                Event::MemberDown(name) => {
                    tracing::warn!(member = %name, "member down: withdrawing its routes");
                    changed |= self.gossip_peers.remove(&name).is_some();
                }
                Event::MemberLeft(name) => {
                    tracing::info!(member = %name, "member left: withdrawing its routes");
                    changed |= self.gossip_peers.remove(&name).is_some();
                }
                Event::MemberSuspect(name) => tracing::info!(member = %name, "member suspect"),
                Event::MemberAlive(name) => tracing::info!(member = %name, "member alive again"),
                Event::SubnetAssigned(lease) => {
                    if let Err(e) = self.assigned(lease).await {
                        tracing::error!(error = %format!("{e:#}"), "applying the subnet lease");
                    }
                }
                Event::SubnetConflict(c) if c.explicit => tracing::error!(
                    subnet = %to_net(c.subnet), other = %c.other, kept = c.kept,
                    "another node claims this node's configured subnet"
                ),
                Event::SubnetConflict(c) => tracing::warn!(
                    subnet = %to_net(c.subnet), other = %c.other, kept = c.kept,
                    "subnet conflict"
                ),
                Event::SubnetExhausted => {
                    tracing::error!("no free subnet left in the cluster CIDR")
                }
            }
        }
        if changed {
            self.apply_routes();
        }
    }

    fn upsert(&mut self, r: &NodeRecord) {
        let endpoint = r.endpoints.first().map(|e| e.ip().to_canonical());
        let (Some(address), Some(claim)) = (endpoint, r.subnet) else {
            self.gossip_peers.remove(&r.name);
            return;
        };
        let key = match self.encryption {
            Encryption::Wireguard => Some(PeerKey {
                public: PublicKey::from_bytes(r.public_key),
                // An older node publishes none: the pair then uses our primary secret.
                secret_ids: Some(r.secret_ids.iter().map(|id| SecretId(*id)).collect()),
            }),
            Encryption::None => None,
        };
        let peer = Peer {
            name: r.name.clone(),
            address,
            subnet: to_net(claim.subnet),
        };
        self.gossip_peers.insert(r.name.clone(), (peer, key));
    }

    /// Static peers plus gossip members; a static peer wins over a member of the same name,
    /// and a member whose subnet overlaps one already routed waits until the conflict settles.
    fn apply_routes(&self) {
        let mut all = self.static_peers.clone();
        let mine = *self.subnet.lock().unwrap_or_else(|p| p.into_inner());
        for (p, k) in self.gossip_peers.values() {
            let clash = all
                .iter()
                .any(|(q, _)| q.name == p.name || overlaps(q.subnet, p.subnet))
                || mine.is_some_and(|m| overlaps(m, p.subnet));
            if !clash {
                all.push((p.clone(), k.clone()));
            }
        }
        tracing::debug!(peers = all.len(), "peer table updated");
        self.routes.update_keyed(&all);
    }

    async fn assigned(&mut self, lease: Lease) -> Result<()> {
        let subnet = to_net(lease.subnet);
        tracing::info!(%subnet, "subnet lease");
        write_lease(&self.cfg.state_dir, &lease)?;
        *self.subnet.lock().unwrap_or_else(|p| p.into_inner()) = Some(subnet);
        apply_subnet(&self.host, &self.cfg, subnet).await?;
        self.apply_routes();
        Ok(())
    }
}

/// Bridge address and `network.json` for `subnet`.
pub async fn apply_subnet(host: &Host, cfg: &Config, subnet: Ipv4Net) -> Result<()> {
    host.ensure_bridge(
        &cfg.bridge,
        &cfg.node_name,
        subnet,
        cfg.cluster_cidr,
        cfg.overlay_mtu(),
    )
    .await?;
    let network = NetworkFile {
        node: cfg.node_name.clone(),
        subnet: subnet.to_string(),
        gateway: host::gateway(subnet).to_string(),
        bridge: cfg.bridge.clone(),
        mtu: cfg.overlay_mtu(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        pid: std::process::id(),
    };
    runfiles::write_atomic(&cfg.run_dir.join(NETWORK_FILE), &network)
}

/// An explicit subnet, else the persisted lease (if it still fits the cluster), else auto.
fn subnet_request(cfg: &Config) -> Result<SubnetRequest> {
    if let Some(s) = cfg.subnet {
        return Ok(SubnetRequest::Explicit(to_subnet(s).context("subnet")?));
    }
    match read_lease(&cfg.state_dir) {
        Some(l) if cfg.cluster_cidr.contains(&to_net(l.subnet)) => Ok(SubnetRequest::Persisted(l)),
        Some(l) => {
            tracing::warn!(subnet = %to_net(l.subnet), "the persisted lease is outside cluster-cidr: ignored");
            Ok(SubnetRequest::Auto)
        }
        None => Ok(SubnetRequest::Auto),
    }
}

fn lease_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LEASE_FILE)
}

/// The lease a previous run persisted; `None` when absent or unreadable.
pub fn read_lease(state_dir: &Path) -> Option<Lease> {
    let text = std::fs::read_to_string(lease_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_lease(state_dir: &Path, lease: &Lease) -> Result<()> {
    runfiles::write_atomic(&lease_path(state_dir), lease)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b) || b.contains(&a)
}

pub fn to_net(s: Subnet) -> Ipv4Net {
    Ipv4Net::new(s.addr(), s.prefix()).unwrap_or_default()
}

fn to_subnet(n: Ipv4Net) -> Option<Subnet> {
    Subnet::new(n.network(), n.prefix_len())
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
