//! `meshd run`: one readable sequence from configuration to a running node and back.
//!
//! preflight (secrets, address, node key) → keys → peers → membership → backend (data path) →
//! status → metrics and reload ([`observe`], [`reload`]) → host → wait → stop.
//!
//! Each step lives in a module of its own: [`preflight`] checks what can be checked before the
//! host is touched (the same checks as `--check-config`), [`secrets`] reloads the cluster
//! secrets, [`membership`] drives gossip, [`subnet`] decides and applies this node's subnet,
//! [`report`] gathers the status. The peer set has one owner, [`crate::backend::Backend`]:
//! every step that learns about peers hands its change there.

pub(crate) mod fastpath;
pub(crate) mod membership;
pub(crate) mod observe;
pub mod preflight;
pub(crate) mod reach;
pub mod reload;
pub(crate) mod report;
pub(crate) mod secrets;
pub mod subnet;
pub(crate) mod underlay;

use anyhow::{Context, Result};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::{Config, Encryption};
use crate::datapath::vxlan::Vxlan;
use crate::datapath::wireguard::Wireguard;
use crate::datapath::DataPath;
use crate::host::{self, Host};
use crate::peers::wireguard::NodeCrypto;
use crate::peers::{Endpoint, EndpointSource, Peer, PeerKey};
use crate::routes::{Local, Routes};
use crate::runfiles::{self, SOCKET_NAME};
use crate::status::Status;
use crate::wire::vtep_mac;
use ipnet::Ipv4Net;
use membership::Membership;
use report::Report;

/// Run until SIGTERM or SIGINT. The configuration must already be validated; `live` reads it
/// again on SIGHUP ([`reload`]).
pub async fn run(mut cfg: Config, live: reload::Live) -> Result<()> {
    let loaded = cfg.clone();
    if meshd_crypto::MOCK_CLOCK {
        anyhow::bail!("this meshd was built with meshd-crypto's mock-clock feature (tests only): its WireGuard timers would never fire");
    }
    // Before anything is created: the secrets (they seal gossip and key WireGuard; cleartext
    // static peers need none), the address, an existing node key.
    let host = Host::connect()?;
    // The underlay address: configured, or worked out from the routes.
    let (address, address_source) = underlay::address(&cfg).await?;
    cfg.address = Some(address);
    tracing::info!(%address, source = %address_source, "underlay address");
    let keyring = preflight::check(&cfg, &host).await?;
    if let Some(ring) = &keyring {
        tracing::info!(
            sealing = %ring.primary_id(), held = ?secrets::ids_text(&ring.ids()),
            "cluster secrets"
        );
    }
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating the run directory {}", cfg.run_dir.display()))?;
    // Before anything on the host is touched: one daemon per run directory.
    let _lock = runfiles::RunLock::acquire(&cfg.run_dir)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;
    // A directory meshd cannot write (read-only, full) is fatal, and found here, before
    // anything is created: network.json is what the CNI plugin wires pods from, and a lease must
    // be on disk before its subnet is used (see `Membership::assigned`). Exiting non-zero with
    // the path is what a supervisor (systemd, a kubelet) restarts and shows; a daemon that
    // stayed up without them would look healthy and never give pods a network.
    runfiles::check_writable(&cfg.run_dir)
        .with_context(|| format!("the run directory {}", cfg.run_dir.display()))?;
    if cfg.gossip_enabled() {
        runfiles::check_writable(&cfg.state_dir).with_context(|| {
            format!(
                "the state directory {} (it keeps the subnet lease)",
                cfg.state_dir.display()
            )
        })?;
    }

    // Keys.
    let crypto = match (cfg.encryption, &keyring) {
        (Encryption::Wireguard, Some(ring)) => Some(Arc::new(node_crypto(&cfg, ring.clone())?)),
        _ => None,
    };
    let public = crypto.as_ref().map(|c| c.public);

    // Peers: one owner, the backend, which the static peers seed.
    let routes = Arc::new(Routes::new(Local {
        name: cfg.node_name.clone(),
        vni: cfg.vxlan.vni,
        port: cfg.data_port(),
    }));
    // The kernel fast path: devices made (or adopted) before the data path binds its port.
    let (mut fast, kernel_status) =
        fastpath::prepare(&cfg, address, routes.unattributed.clone()).await?;
    let kernel_devices = observe::kernel_devices(&cfg, &fast);
    fast.crypto = crypto.clone();
    let paths = crate::paths::manager::Paths::new(kernel_status, fast.table.status());
    let backend = Arc::new(
        Backend::new(
            routes.clone(),
            crypto.clone(),
            static_peers(&cfg),
            cfg.overlay_mtu(),
        )
        .with_paths(paths.clone()),
    );
    // What every peer's subnet is checked against: the cluster, this node's own networks.
    let guard = subnet::guard(&host, &cfg).await;
    backend.update(|set| {
        set.set_guard(guard);
        false
    });
    let keyring = match keyring {
        Some(ring) => Some(secrets::spawn(cfg.clone(), ring, backend.clone())?),
        None => None,
    };

    // Membership; a reload hands it new seeds.
    let (seeds, seeds_rx) = tokio::sync::watch::channel(cfg.seeds.clone());
    let membership = match (&keyring, cfg.gossip_enabled()) {
        (Some(ring), true) => {
            let caps = fastpath::capabilities(&cfg, &fast);
            let m = Membership::start(&cfg, backend.clone(), public, ring.clone(), caps).await?;
            let configured = address_source == underlay::AddressSource::Config;
            Some(m.with_seeds(seeds_rx).address_configured(configured))
        }
        _ => None,
    };
    // Without gossip the subnet is configured; with it, the explicit or persisted one (a new
    // lease reconfigures the bridge later), or none yet: the data path does not need it.
    let subnet = match &membership {
        Some(m) => *m.subnet.lock().unwrap_or_else(|p| p.into_inner()),
        None => Some(cfg.subnet.context("no subnet")?),
    };

    // Backend: the data path. The TUN device exists from here until it stops.
    // A kernel VXLAN device owns the VXLAN port and receives from every peer: the userspace
    // path then only sends, from a port of its own.
    // Likewise a kernel WireGuard device owns the WireGuard port, and every session.
    let kernel_owns_port = match cfg.encryption {
        Encryption::None => fast.vxlan.is_ok(),
        Encryption::Wireguard => fast.wireguard.is_ok(),
    };
    let port = if kernel_owns_port {
        crate::datapath::DataPort::SendOnly
    } else {
        crate::datapath::DataPort::Bind
    };
    let datapath = match &crypto {
        Some(c) => {
            let wg = Wireguard {
                crypto: c.clone(),
                nat_keepalive: cfg.nat_keepalive(),
                hole_punching: cfg.wireguard.hole_punching,
            };
            DataPath::start(&cfg, port, routes.clone(), wg)?
        }
        None => DataPath::start(&cfg, port, routes.clone(), Vxlan { vni: cfg.vxlan.vni })?,
    };
    let (stop_paths, paths_task) = crate::paths::manager::spawn(paths.clone(), fast)?;

    // Status, served before the host has network.json: the CNI plugin wires a pod only when
    // this socket answers, so it must answer as soon as the file exists.
    let report = Arc::new(Report {
        base: base_status(
            &cfg,
            (address, &address_source),
            subnet,
            crypto.as_deref(),
            &datapath,
        ),
        backend: backend.clone(),
        gossip: membership.as_ref().map(|m| m.shared.clone()),
        subnet: membership.as_ref().map(|m| m.subnet.clone()),
        queues: datapath.queues.clone(),
        nat_keepalive: cfg.nat_keepalive(),
    });
    let socket = cfg.run_dir.join(SOCKET_NAME);
    let listener = match crate::status::server::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            datapath.stop();
            return Err(e);
        }
    };
    let status_report = report.clone();
    let server = tokio::spawn(crate::status::server::serve(listener, move || {
        status_report.current()
    }));
    // Metrics, and the SIGHUP reload that can move them.
    let seeds = membership.is_some().then_some(seeds);
    let ready = match observe::start(&loaded, report, kernel_devices, live, seeds).await {
        // Host.
        Ok(()) => setup_host(&host, &cfg, subnet).await,
        Err(e) => Err(e),
    };
    if let Err(e) = ready {
        server.abort();
        let _ = std::fs::remove_file(&socket);
        datapath.stop();
        return Err(e);
    }
    if membership.is_none() {
        // Without gossip the subnet is the configured one; the kernel paths route from it.
        backend.update(|set| set.set_own_subnet(subnet));
    }
    backend.apply();
    let t = &datapath.tiers;
    tracing::info!(
        node = %cfg.node_name, subnet = ?subnet, %address, queues = t.queues,
        multi_queue = %t.multi_queue, tun_offload = %t.tun_offload,
        udp_gso = %t.udp_gso, udp_gro = %t.udp_gro, udp_flows = %t.udp_flows,
        peers = cfg.peers.len(), gossip = membership.is_some(), "meshd is up"
    );

    let (stop_gossip, stopped) = tokio::sync::oneshot::channel();
    let mut gossip_task = membership.map(|m| tokio::spawn(m.run(stopped)));

    // Wait for a signal, or for gossip to fail (it only stops on its own when a lease cannot be
    // persisted or applied: fatal, see `Membership::run`), then stop.
    let failure = tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            None
        }
        e = gossip_failure(&mut gossip_task) => {
            gossip_task = None;
            Some(e)
        }
    };
    tracing::info!("stopping; the bridge stays so pods keep their addresses");
    if let Some(task) = gossip_task {
        let _ = stop_gossip.send(());
        match tokio::time::timeout(std::time::Duration::from_secs(2), task).await {
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %format!("{e:#}"), "gossip stopped with an error")
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("gossip did not stop within 2 s"),
        }
    }
    let _ = stop_paths.send(());
    let joined = tokio::task::spawn_blocking(move || paths_task.join());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), joined).await;
    server.abort();
    let _ = std::fs::remove_file(&socket);
    datapath.stop();
    failure.map_or(Ok(()), Err)
}

/// Resolves when the gossip task ends by itself, with why; never without gossip.
async fn gossip_failure(task: &mut Option<tokio::task::JoinHandle<Result<()>>>) -> anyhow::Error {
    match task {
        Some(t) => match t.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow::anyhow!("gossip stopped unasked"),
            Err(e) => anyhow::Error::new(e).context("the gossip task failed"),
        },
        None => std::future::pending().await,
    }
}

/// What the status says of this node whatever happens later.
fn base_status(
    cfg: &Config,
    (address, source): (std::net::IpAddr, &underlay::AddressSource),
    subnet: Option<Ipv4Net>,
    crypto: Option<&NodeCrypto>,
    datapath: &DataPath,
) -> Status {
    Status {
        node: cfg.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        address: address.to_string(),
        address_source: Some(source.to_string()),
        public: None,
        relaying: Vec::new(),
        subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
        cluster: Some(cfg.cluster_cidr.to_string()),
        vtep_mac: vtep_mac(&cfg.node_name).to_string(),
        encryption: match cfg.encryption {
            Encryption::Wireguard => format!("wireguard (UDP {})", cfg.wireguard.port),
            Encryption::None => "none (VXLAN cleartext)".into(),
        },
        public_key: crypto.map(|c| c.public.to_base64()),
        cookie_replies_sent: 0,
        refusals_over_source_limit: 0,
        mtu: cfg.overlay_mtu(),
        tiers: datapath.tiers.clone(),
        peers: Vec::new(),
        unattributed: Default::default(),
        members: None,
        gossip: None,
        secrets: None,
        kernel: None,
        egress: None,
        queues: Vec::new(),
        refused: Vec::new(),
        refusals: 0,
    }
}

async fn setup_host(host: &Host, cfg: &Config, subnet: Option<Ipv4Net>) -> Result<()> {
    match subnet {
        // The bridge, the cluster route from its address, network.json; with gossip, a later
        // lease redoes all three.
        Some(subnet) => subnet::apply(host, cfg, subnet).await?,
        // Pods cannot exist yet; the route gets its preferred source with the lease.
        None => host.route_cluster(&cfg.tun, cfg.cluster_cidr, None).await?,
    }
    host::enable_forwarding()
}

fn static_peers(cfg: &Config) -> Vec<Peer> {
    cfg.peers
        .iter()
        .map(|p| Peer {
            name: p.name.clone(),
            // A static peer listens on the cluster's data port, as this node does.
            endpoints: vec![Endpoint {
                addr: std::net::SocketAddr::new(p.address, cfg.data_port()),
                source: EndpointSource::Configured,
            }],
            subnet: p.subnet,
            key: p.key().map(PeerKey::fixed),
            kernel_vxlan: false,
        })
        .collect()
}

/// The node key (created under the state directory on first start) and the cluster secrets.
fn node_crypto(cfg: &Config, keyring: meshd_crypto::Keyring) -> Result<NodeCrypto> {
    let (key, how) = preflight::node_key(cfg, true)?.context("no node key")?;
    if how == meshd_crypto::KeyFileStatus::Created {
        tracing::info!(path = %cfg.node_key_path().display(), "created the node key");
    }
    tracing::info!(public_key = %key.public_key(), "WireGuard node key");
    Ok(NodeCrypto::new(
        key,
        keyring,
        cfg.wireguard.handshakes_per_second,
    ))
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// `meshd cleanup`: remove what meshd created on this host. Refuses while meshd runs.
pub async fn cleanup(cfg: &Config) -> Result<()> {
    if runfiles::RunLock::held(&cfg.run_dir) || crate::status::query(&cfg.run_dir).is_ok() {
        anyhow::bail!("meshd is running (it holds its run directory's lock); stop it first");
    }
    let host = Host::connect()?;
    fastpath::cleanup(&host, cfg).await;
    for name in [&cfg.tun, &cfg.bridge] {
        match host.remove_owned(name).await {
            Ok(true) => println!("removed link {name}"),
            Ok(false) => {}
            Err(e) => eprintln!("{e:#}"),
        }
    }
    for f in [
        runfiles::NETWORK_FILE,
        runfiles::SOCKET_NAME,
        crate::control::CONTROL_SOCKET,
        runfiles::LOCK_FILE,
    ] {
        let p = cfg.run_dir.join(f);
        if std::fs::remove_file(&p).is_ok() {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}
