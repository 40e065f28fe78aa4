//! The path manager: the kernel backends' half of the reconcile step, and the probe loop.
//!
//! [`crate::backend::Backend`] hands it every new peer set ([`Paths::publish`]); it keeps the
//! kernel objects in step (each peer's FDB and neighbour entries on the VXLAN device, and its
//! route), probes every path a peer could take ([`crate::kernel::probe`]), feeds the results to
//! each peer's [`PeerPath`], and applies the moves it decides: one route replace each, logged
//! once at `warn`. It runs as one tokio task; nothing here is on the per-packet path.

use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod apply;
mod converge;
mod mtu;
mod offers;
mod receivers;
mod sources;
mod step;
mod table;
mod traffic;

pub(crate) use sources::SourceCheck;
pub(crate) use traffic::COUNTED_PATHS;

use super::{NotOffered, PathKind};
use crate::config::{Datapath, Encryption};
use crate::host::Host;
use crate::kernel::probe::{Prober, Token};
use crate::kernel::routes;
use crate::kernel::table::Table;
use crate::kernel::vxlan::VxlanDevice;
use crate::kernel::wireguard::{device_config, KernelWireguard};
use crate::link::PeerLink;
use crate::metrics::{Histogram, PROBE_RTT_BUCKETS};
use crate::peers::wireguard::NodeCrypto;
use crate::peers::Peer;
use crate::status::{EgressStatus, KernelStatus};
use crate::wire::MacAddr;

/// A probe not answered within this is lost.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Routes and entries a previous meshd left for peers this one has not (yet) heard of are kept
/// this long after start, so a restart does not cut pods off while gossip catches up.
pub(crate) const ADOPTION_GRACE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);
/// How often the routes and entries meshd set are compared with what the kernel has (a device
/// that went down takes its routes with it; someone may have deleted one by hand). Each check
/// is three netlink dumps: often enough that a loss is repaired within seconds, rare enough
/// that a hundred idle nodes do not spend their time listing tables.
const VERIFY_EVERY: Duration = Duration::from_secs(5);
/// How soon a route or entry the kernel refused is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the backend hands on at each reconcile.
#[derive(Debug, Clone, Default)]
pub(crate) struct Desired {
    /// Every routed peer's link, in the peer set's order.
    pub(crate) links: Vec<Arc<PeerLink>>,
    pub(crate) own_subnet: Option<Ipv4Net>,
}

/// The manager's handle: the backend publishes to it, the status reads from it.
pub(crate) struct Paths {
    desired: watch::Sender<Desired>,
    kernel: Mutex<KernelStatus>,
    /// Masquerade and MSS clamping, as the table last had them.
    egress: Mutex<EgressStatus>,
    /// Round trips of the probes that came back (the manager observes, `/metrics` reads).
    pub(crate) probe_rtt: Arc<Histogram>,
}

impl Paths {
    pub(crate) fn new(kernel: KernelStatus, egress: EgressStatus) -> Arc<Paths> {
        Arc::new(Paths {
            desired: watch::channel(Desired::default()).0,
            kernel: Mutex::new(kernel),
            egress: Mutex::new(egress),
            probe_rtt: Arc::new(Histogram::new(&PROBE_RTT_BUCKETS)),
        })
    }

    /// A reconcile pass's links (the backend's call). Passes that arrive faster than the
    /// manager takes them are applied once, the latest.
    pub(crate) fn publish(&self, links: Vec<Arc<PeerLink>>, own_subnet: Option<Ipv4Net>) {
        self.desired
            .send_modify(|cur| *cur = Desired { links, own_subnet });
    }

    pub(crate) fn kernel_status(&self) -> KernelStatus {
        lock(&self.kernel).clone()
    }

    pub(crate) fn egress_status(&self) -> EgressStatus {
        lock(&self.egress).clone()
    }

    fn subscribe(&self) -> watch::Receiver<Desired> {
        self.desired.subscribe()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the daemon set up before the manager starts.
pub(crate) struct Setup {
    pub(crate) host: Host,
    pub(crate) mode: Datapath,
    pub(crate) encryption: Encryption,
    pub(crate) host_gw: bool,
    /// The underlay address and the index of its link.
    pub(crate) local: Ipv4Addr,
    pub(crate) underlay_index: Option<u32>,
    /// The underlay link's MAC (host-gw probes come from it).
    pub(crate) underlay_mac: Option<MacAddr>,
    pub(crate) tun: String,
    /// The pod MTU: the probes' size.
    pub(crate) pod_mtu: u16,
    /// Path-MTU discovery: the floor and ceiling of each peer's search (`None`: off).
    pub(crate) mtu: Option<(u16, u16)>,
    pub(crate) vxlan: Result<VxlanDevice, NotOffered>,
    /// The kernel WireGuard device, when the kernel has one: then it carries every peer.
    pub(crate) wireguard: Result<KernelWireguard, NotOffered>,
    /// The node's keys (encrypted mode), for the kernel WireGuard peers.
    pub(crate) crypto: Option<Arc<NodeCrypto>>,
    pub(crate) wireguard_port: u16,
    /// The inner-source check of kernel-received VXLAN, when the kernel VXLAN device is in
    /// use (`fastpath` wrote its table before the device came up).
    pub(crate) sources: Option<SourceCheck>,
    /// meshd's nftables table, as `fastpath` first wrote it.
    pub(crate) table: Table,
}

/// A probe sent and not yet answered.
struct Outstanding {
    link: Arc<PeerLink>,
    kind: PathKind,
    /// A receiver check (`partial`), not one of the path's probes.
    check: bool,
    sent: Instant,
    /// Its IPv4 total length.
    size: u16,
    /// What a genuine reply carries back.
    token: Token,
    /// It is the peer's MTU search's (`paths::mtud`), not the path choice's.
    mtu: bool,
}

struct Manager {
    paths: Arc<Paths>,
    s: Setup,
    tun_index: Option<u32>,
    prober: Option<Prober>,
    /// Why there is no prober, when there is none though a kernel path is in play.
    unprobed: Option<String>,
    /// The links it manages, by name: the same objects the route table holds.
    links: HashMap<String, Arc<PeerLink>>,
    own: Option<Ipv4Net>,
    /// Probes awaiting a reply, by sequence number.
    outstanding: HashMap<u16, Outstanding>,
    seq: u16,
    /// Routes a previous meshd left, by subnet, until claimed or the grace ends.
    adopted_routes: HashMap<Ipv4Net, routes::Found>,
    grace_until: Instant,
    /// The VXLAN entries a previous meshd left were checked against the peers.
    leftovers_checked: bool,
    /// The VXLAN device checksums in software (see `vxlan::set_software_checksums`).
    software_checksums: Option<bool>,
    /// How the device checksums and why, for its status line (a veth underlay only).
    checksum_note: Option<String>,
    /// The inner-source check of kernel-received VXLAN (taken from the setup).
    sources: Option<SourceCheck>,
    /// Routes of peers that left, which the kernel would not remove yet: retried each tick.
    stale_routes: Vec<Ipv4Net>,
    /// When the routes are next compared with what the kernel has.
    next_verify: Instant,
    /// When the nftables table is next compared with what the kernel has.
    next_table_verify: Instant,
    /// When a table the kernel refused is tried again.
    table_retry_at: Instant,
    /// When to look for other netfilter users while the table tracks everything.
    next_others_look: Instant,
    moves: u64,
}

/// Run the manager until `stop` resolves. Kernel objects stay when it stops: pods on kernel
/// paths keep talking while meshd is down, and the next meshd adopts them.
async fn run(
    paths: Arc<Paths>,
    mut rx: watch::Receiver<Desired>,
    mut s: Setup,
    stop: impl std::future::Future<Output = ()>,
) {
    let sources = s.sources.take();
    let kernel_in_play =
        (s.encryption == Encryption::None && s.vxlan.is_ok()) || s.wireguard.is_ok();
    // Path-MTU discovery probes every path, the userspace one too.
    let probing = kernel_in_play || s.mtu.is_some();
    let tun_index = s.host.index(&s.tun).await.ok();
    let mut unprobed = None;
    let prober = match probing.then(|| Prober::new(crate::kernel::probe::ident())) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot open the probe sockets: paths and their MTUs are not probed, peers stay where they are with the configured MTU (probing needs CAP_NET_RAW and the AF_PACKET address family)");
            unprobed = Some(format!(
                "cannot open the probe sockets ({e}; probing needs CAP_NET_RAW and AF_PACKET)"
            ));
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
    let now = Instant::now();
    let mut m = Manager {
        paths: paths.clone(),
        s,
        tun_index,
        prober,
        unprobed,
        links: HashMap::new(),
        own: None,
        outstanding: HashMap::new(),
        seq: 0,
        adopted_routes,
        grace_until: now + ADOPTION_GRACE,
        leftovers_checked: false,
        software_checksums: None,
        checksum_note: None,
        sources,
        stale_routes: Vec::new(),
        next_verify: now + VERIFY_EVERY,
        next_table_verify: now + VERIFY_EVERY,
        table_retry_at: now,
        next_others_look: now,
        moves: 0,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut table_tick = tokio::time::interval(table::TABLE_TICK);
    table_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let table_only = !probing && m.s.table.wanted();
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
            // Nothing to probe or route without a kernel path (encrypted on this kernel, or
            // `datapath = "userspace"`) and without path-MTU discovery: no tick, so an idle
            // node stays asleep.
            _ = tick.tick(), if probing => m.step().await,
            // Without probing the table (masquerade, MSS clamp) still needs tending.
            _ = table_tick.tick(), if table_only => m.tend_table(Instant::now()),
        }
    }
}

/// Starts the manager on a thread of its own, with its own runtime: its netlink calls, generic
/// netlink requests (with their timeouts) and raw-socket sends then never hold up the gossip
/// thread, which must answer SWIM probes on time. Send on the returned channel to stop it.
pub(crate) fn spawn(
    paths: Arc<Paths>,
    s: Setup,
) -> anyhow::Result<(
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
)> {
    use anyhow::Context;
    // Subscribed here, before the daemon's first pass (and a pass published already is taken
    // as new): a receiver made later, on the thread, which a busy machine may start late,
    // would count the passes published before it as seen, and a node with static peers
    // publishes none after its first, so its peers would never get paths. The empty value the
    // channel starts with is not a pass: applied, it would empty an adopted WireGuard device.
    let mut rx = paths.subscribe();
    let published = {
        let d = rx.borrow();
        !d.links.is_empty() || d.own_subnet.is_some()
    };
    if published {
        rx.mark_changed();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the path manager's runtime")?;
    let thread = std::thread::Builder::new()
        .name("meshd-paths".into())
        .spawn(move || {
            rt.block_on(run(paths, rx, s, async move {
                let _ = stopped.await;
            }))
        })
        .context("starting the path manager's thread")?;
    Ok((stop, thread))
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
}
