//! The path manager: the kernel backends' half of the reconcile step, and the probe loop.
//!
//! [`crate::backend::Backend`] hands it every new peer set ([`Paths::publish`]); it keeps the
//! kernel objects in step (each peer's FDB and neighbour entries on the VXLAN device, and its
//! route), probes every path a peer could take ([`crate::kernel::probe`]), feeds the results to
//! each peer's [`PeerPath`], and applies the moves it decides: one route replace each, logged
//! once at `warn`. It runs as one tokio task; nothing here is on the per-packet path.

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod offers;
mod step;

use super::{NotOffered, PathKind, PeerPath};
use crate::config::{Datapath, Encryption};
use crate::host::{gateway, Host};
use crate::kernel::probe::Prober;
use crate::kernel::routes;
use crate::kernel::vxlan::{self, VxlanDevice};
use crate::kernel::wireguard::{device_config, KernelWireguard};
use crate::peers::wireguard::NodeCrypto;
use crate::peers::Peer;
use crate::status::{KernelStatus, PathStatus};
use crate::wire::{vtep_mac, MacAddr};

/// A probe not answered within this is lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Routes and entries a previous meshd left for peers this one has not (yet) heard of are kept
/// this long after start, so a restart does not cut pods off while gossip catches up.
pub const ADOPTION_GRACE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);

/// What the backend hands on at each reconcile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub peers: Vec<Peer>,
    pub own_subnet: Option<Ipv4Net>,
    /// Bumped when the cluster secrets change: kernel WireGuard peers get new preshared keys.
    pub keyring_epoch: u64,
}

/// The manager's handle: the backend publishes to it, the status reads from it.
pub struct Paths {
    desired: watch::Sender<Desired>,
    peers: Mutex<BTreeMap<String, PathStatus>>,
    kernel: Mutex<KernelStatus>,
}

impl Paths {
    pub fn new(kernel: KernelStatus) -> Arc<Paths> {
        Arc::new(Paths {
            desired: watch::channel(Desired::default()).0,
            peers: Mutex::new(BTreeMap::new()),
            kernel: Mutex::new(kernel),
        })
    }

    /// A new peer set (the reconcile step's call).
    pub fn publish(&self, peers: &[Peer], own_subnet: Option<Ipv4Net>, keyring_epoch: u64) {
        let d = Desired {
            peers: peers.to_vec(),
            own_subnet,
            keyring_epoch,
        };
        self.desired.send_if_modified(|cur| {
            let changed = *cur != d;
            *cur = d;
            changed
        });
    }

    pub fn peer_status(&self, name: &str) -> Option<PathStatus> {
        lock(&self.peers).get(name).cloned()
    }

    pub fn kernel_status(&self) -> KernelStatus {
        lock(&self.kernel).clone()
    }

    fn subscribe(&self) -> watch::Receiver<Desired> {
        self.desired.subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the daemon set up before the manager starts.
pub struct Setup {
    pub host: Host,
    pub mode: Datapath,
    pub encryption: Encryption,
    pub host_gw: bool,
    /// The underlay address and the index of its link.
    pub local: Ipv4Addr,
    pub underlay_index: Option<u32>,
    /// The underlay link's MAC (host-gw probes come from it).
    pub underlay_mac: Option<MacAddr>,
    pub tun: String,
    /// The pod MTU: the probes' size.
    pub pod_mtu: u16,
    pub vxlan: Result<VxlanDevice, NotOffered>,
    /// The kernel WireGuard device, when the kernel has one: then it carries every peer.
    pub wireguard: Result<KernelWireguard, NotOffered>,
    /// The node's keys (encrypted mode), for the kernel WireGuard peers.
    pub crypto: Option<Arc<NodeCrypto>>,
    pub wireguard_port: u16,
}

struct PeerState {
    peer: Peer,
    path: PeerPath,
    vtep: Ipv4Addr,
    mac: MacAddr,
    next_probe: Instant,
    /// The path its route was last set for (`None`: no per-peer route, the cluster route).
    routed: Option<PathKind>,
}

struct Manager {
    paths: Arc<Paths>,
    s: Setup,
    tun_index: Option<u32>,
    prober: Option<Prober>,
    peers: HashMap<String, PeerState>,
    own: Option<Ipv4Net>,
    /// Probes awaiting a reply, by sequence number: peer, path, when sent, size.
    outstanding: HashMap<u16, (String, PathKind, Instant, u16)>,
    seq: u16,
    /// Routes a previous meshd left, by subnet, until claimed or the grace ends.
    adopted_routes: HashMap<Ipv4Net, routes::Found>,
    grace_until: Instant,
    /// The VXLAN entries a previous meshd left were checked against the peers.
    leftovers_checked: bool,
    /// The VXLAN device checksums in software (see `vxlan::set_software_checksums`).
    software_checksums: Option<bool>,
    moves: u64,
}

/// Run the manager until `stop` resolves. Kernel objects stay when it stops: pods on kernel
/// paths keep talking while meshd is down, and the next meshd adopts them.
pub async fn run(paths: Arc<Paths>, s: Setup, stop: impl std::future::Future<Output = ()>) {
    let mut rx = paths.subscribe();
    let kernel_in_play =
        (s.encryption == Encryption::None && s.vxlan.is_ok()) || s.wireguard.is_ok();
    let tun_index = s.host.index(&s.tun).await.ok();
    let prober = match kernel_in_play.then(|| Prober::new(std::process::id() as u16)) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot open the probe sockets: kernel paths are not probed, peers stay where they are");
            None
        }
        None => None,
    };
    let adopted_routes: HashMap<Ipv4Net, routes::Found> = if kernel_in_play {
        routes::list(&s.host)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|f| (f.subnet, f))
            .collect()
    } else {
        HashMap::new()
    };
    if !adopted_routes.is_empty() {
        lock(&paths.kernel)
            .adopted
            .push(format!("{} routes", adopted_routes.len()));
    }
    if kernel_in_play {
        crate::kernel::loose_rp_filter(&s.tun);
        if s.host_gw {
            if let Some(dev) = underlay_name(&s).await {
                crate::kernel::loose_rp_filter(&dev);
            }
        }
    }
    let mut m = Manager {
        paths: paths.clone(),
        s,
        tun_index,
        prober,
        peers: HashMap::new(),
        own: None,
        outstanding: HashMap::new(),
        seq: 0,
        adopted_routes,
        grace_until: Instant::now() + ADOPTION_GRACE,
        leftovers_checked: false,
        software_checksums: None,
        moves: 0,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let d = rx.borrow_and_update().clone();
                m.apply(d).await;
            }
            _ = tick.tick() => m.step().await,
        }
        m.publish_status();
    }
}

async fn underlay_name(s: &Setup) -> Option<String> {
    let link = s.host.link_by_index(s.underlay_index?).await?;
    link.attributes.iter().find_map(|a| match a {
        netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

impl Manager {
    fn kernel_in_play(&self) -> bool {
        (self.s.encryption == Encryption::None && self.s.vxlan.is_ok()) || self.s.wireguard.is_ok()
    }

    /// On a veth underlay, checksum in software while any peer may receive in userspace.
    fn checksums(&mut self, peers: &[Peer]) {
        let Ok(dev) = &self.s.vxlan else { return };
        let want = dev.veth_underlay && peers.iter().any(|p| !p.kernel_vxlan);
        if self.software_checksums == Some(want) {
            return;
        }
        match vxlan::set_software_checksums(&dev.name, want) {
            Ok(()) => {
                self.software_checksums = Some(want);
                lock(&self.paths.kernel).vxlan = crate::daemon::fastpath::device_text(dev, want);
                tracing::info!(device = %dev.name, software = want, "VXLAN device checksums");
            }
            Err(e) => {
                tracing::warn!(device = %dev.name, error = %e, "cannot switch the VXLAN device's checksum offload: userspace peers on a veth underlay may get packets with unfinished checksums")
            }
        }
    }

    /// Kernel WireGuard: the device's peers are the peer set (only what changed is sent).
    fn sync_wireguard(&self, peers: &[Peer]) {
        let (Ok(dev), Some(crypto)) = (&self.s.wireguard, &self.s.crypto) else {
            return;
        };
        let desired = device_config(dev.ifname(), crypto, self.s.wireguard_port, None, peers);
        if let Err(e) = dev.sync(&desired) {
            tracing::error!(error = %e, "configuring the kernel WireGuard device");
        }
    }

    /// Bring the kernel objects in step with a new peer set.
    async fn apply(&mut self, d: Desired) {
        let own_changed = self.own != d.own_subnet;
        self.own = d.own_subnet;
        self.sync_wireguard(&d.peers);
        self.checksums(&d.peers);
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(name, st)| !d.peers.iter().any(|p| &p.name == *name && *p == st.peer))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(st) = self.peers.remove(&name) {
                self.forget(&st).await;
            }
        }
        for p in &d.peers {
            if !self.peers.contains_key(&p.name) {
                let st = self.admit(p.clone()).await;
                self.peers.insert(p.name.clone(), st);
            }
        }
        if own_changed {
            for st in self.peers.values_mut() {
                st.routed = None;
            }
        }
        self.route_all().await;
    }

    /// A peer this manager has not seen: its entries, its offers, where it starts.
    async fn admit(&mut self, peer: Peer) -> PeerState {
        let vtep = peer.subnet.network();
        let mac = vtep_mac(&peer.name);
        if let (Ok(dev), true) = (&self.s.vxlan, self.s.encryption == Encryption::None) {
            if let Err(e) = vxlan::set_peer(&self.s.host, dev.index, mac, vtep, peer.address).await
            {
                tracing::warn!(peer = %peer.name, error = %format!("{e:#}"), "cannot add the peer's VXLAN entries");
            }
        }
        let (offers, floor, floor_reason) = self.offers(&peer).await;
        let adopted = self.adopted_routes.remove(&peer.subnet).and_then(|f| {
            let dev = self.s.vxlan.as_ref().ok()?;
            if f.oif == Some(dev.index) && f.gateway == Some(vtep) {
                Some(PathKind::KernelVxlan)
            } else if f.gateway.map(IpAddr::V4) == Some(peer.address) {
                Some(PathKind::HostGw)
            } else {
                None
            }
        });
        let path = PeerPath::new(
            offers,
            floor,
            floor_reason,
            adopted,
            self.s.pod_mtu,
            Instant::now(),
        );
        if let Some(k) = adopted.filter(|k| *k == path.current()) {
            tracing::info!(peer = %peer.name, path = %k, "adopted the peer's kernel path");
        }
        PeerState {
            routed: adopted.filter(|k| *k == path.current()),
            peer,
            path,
            vtep,
            mac,
            next_probe: Instant::now(),
        }
    }

    /// Remove a peer's route and entries.
    async fn forget(&mut self, st: &PeerState) {
        if st.routed.is_some() {
            if let Err(e) = routes::remove(&self.s.host, st.peer.subnet).await {
                tracing::warn!(peer = %st.peer.name, error = %format!("{e:#}"), "removing the peer's route");
            }
        }
        if let Ok(dev) = &self.s.vxlan {
            vxlan::remove_peer(&self.s.host, dev.index, st.mac, st.vtep).await;
        }
        self.outstanding
            .retain(|_, (name, _, _, _)| name != &st.peer.name);
    }

    /// Set every peer's route where it is not what its path needs.
    async fn route_all(&mut self) {
        if !self.kernel_in_play() {
            return;
        }
        let Some(own) = self.own else { return };
        let source = gateway(own);
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let Some(st) = self.peers.get(&name) else {
                continue;
            };
            let want = st.path.current();
            if st.routed == Some(want) {
                continue;
            }
            let Some(via) = self.via(st, want) else {
                continue;
            };
            let subnet = st.peer.subnet;
            match routes::set(&self.s.host, subnet, via, source).await {
                Ok(()) => {
                    if let Some(st) = self.peers.get_mut(&name) {
                        st.routed = Some(want);
                    }
                }
                Err(e) => {
                    tracing::error!(peer = %name, path = %want, error = %format!("{e:#}"), "cannot route the peer's subnet")
                }
            }
        }
    }
}
