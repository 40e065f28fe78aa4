//! `meshd run`: set up the host, start the data path, serve status, and wait for a signal.

use anyhow::{Context, Result};
use std::sync::Arc;

use crate::config::{Config, Encryption};
use crate::datapath::wg::NodeCrypto;
use crate::datapath::DataPath;
use crate::gossip::{apply_subnet, Membership};
use crate::host::{self, Host};
use crate::routes::{Local, Peer, PeerKey, Routes};
use crate::status::{self, Status, StatusSource};
use crate::wire::vtep_mac;
use ipnet::Ipv4Net;

/// Run until SIGTERM or SIGINT. The configuration must already be validated.
pub async fn run(cfg: Config) -> Result<()> {
    let address = cfg.address.context("no address")?;
    // Read before anything is created. The cluster secrets seal gossip and key WireGuard;
    // cleartext static peers need none.
    let keyring = if cfg.encryption == Encryption::Wireguard || cfg.gossip_enabled() {
        let ring = cfg.cluster_keyring()?;
        tracing::info!(
            sealing = %ring.primary_id(), held = ?crate::secrets::ids_text(&ring.ids()),
            "cluster secrets"
        );
        Some(ring)
    } else {
        None
    };
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating the run directory {}", cfg.run_dir.display()))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;

    if meshd_crypto::MOCK_CLOCK {
        anyhow::bail!("this meshd was built with meshd-crypto's mock-clock feature (tests only): its WireGuard timers would never fire");
    }
    let crypto = match (cfg.encryption, &keyring) {
        (Encryption::Wireguard, Some(ring)) => Some(Arc::new(node_crypto(&cfg, ring.clone())?)),
        _ => None,
    };
    let public_key = crypto.as_ref().map(|c| c.public.to_base64());
    let public = crypto.as_ref().map(|c| c.public);
    let routes = Arc::new(Routes::with_crypto(
        Local {
            name: cfg.node_name.clone(),
            vni: cfg.vxlan.vni,
            port: cfg.data_port(),
        },
        crypto,
    ));
    let keyring = match keyring {
        Some(ring) => Some(crate::secrets::spawn(cfg.clone(), ring, routes.clone())?),
        None => None,
    };
    let membership = match (&keyring, cfg.gossip_enabled()) {
        (Some(ring), true) => Some(
            Membership::start(
                &cfg,
                routes.clone(),
                static_peers(&cfg),
                public,
                ring.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    // Without gossip the subnet is configured; with it, the explicit or persisted one (a new
    // lease reconfigures the bridge later), or none yet: the data path does not need it.
    let subnet = match &membership {
        Some(m) => *m.subnet.lock().unwrap_or_else(|p| p.into_inner()),
        None => Some(cfg.subnet.context("no subnet")?),
    };
    let host = Host::connect()?;
    // The TUN device exists from here until the data path stops.
    let datapath = DataPath::start(&cfg, routes.clone())?;
    if let Err(e) = setup_host(&host, &cfg, subnet).await {
        datapath.stop();
        return Err(e);
    }
    routes.update_keyed(&static_peers(&cfg));
    let t = &datapath.tiers;
    tracing::info!(
        node = %cfg.node_name, subnet = ?subnet, %address, queues = t.queues,
        multi_queue = %t.multi_queue, tun_offload = %t.tun_offload,
        udp_gso = %t.udp_gso, udp_gro = %t.udp_gro,
        peers = cfg.peers.len(), gossip = membership.is_some(), "meshd is up"
    );

    let pid = std::process::id();
    let source = Arc::new(StatusSource {
        base: Status {
            node: cfg.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid,
            address: address.to_string(),
            subnet: subnet.map(|s| s.to_string()).unwrap_or_default(),
            vtep_mac: vtep_mac(&cfg.node_name).to_string(),
            encryption: match cfg.encryption {
                Encryption::Wireguard => format!("wireguard (UDP {})", cfg.wireguard.port),
                Encryption::None => "none (VXLAN cleartext)".into(),
            },
            public_key,
            cookie_replies_sent: 0,
            mtu: cfg.overlay_mtu(),
            tiers: datapath.tiers.clone(),
            peers: Vec::new(),
            unattributed: Default::default(),
            members: None,
            gossip: None,
            secrets: None,
        },
        routes: routes.clone(),
        gossip: membership.as_ref().map(|m| m.shared.clone()),
        subnet: membership.as_ref().map(|m| m.subnet.clone()),
    });
    let socket = cfg.run_dir.join(status::SOCKET_NAME);
    let server = tokio::spawn(status::serve(socket.clone(), source));
    let (stop_gossip, stopped) = tokio::sync::oneshot::channel();
    let gossip_task = membership.map(|m| tokio::spawn(m.run(stopped)));

    wait_for_signal().await?;
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
    server.abort();
    let _ = std::fs::remove_file(&socket);
    datapath.stop();
    Ok(())
}

async fn setup_host(host: &Host, cfg: &Config, subnet: Option<Ipv4Net>) -> Result<()> {
    if let Some(subnet) = subnet {
        // The bridge and network.json; with gossip, a later lease redoes both.
        apply_subnet(host, cfg, subnet).await?;
    }
    host.route_cluster(&cfg.tun, cfg.cluster_cidr).await?;
    host::enable_forwarding()
}

fn static_peers(cfg: &Config) -> Vec<(Peer, Option<PeerKey>)> {
    cfg.peers
        .iter()
        .map(|p| {
            let peer = Peer {
                name: p.name.clone(),
                address: p.address,
                subnet: p.subnet,
            };
            (peer, p.key().map(PeerKey::fixed))
        })
        .collect()
}

/// The node key (created under the state directory on first start) and the cluster secrets.
fn node_crypto(cfg: &Config, keyring: meshd_crypto::Keyring) -> Result<NodeCrypto> {
    let path = cfg.node_key_path();
    let (key, how) = meshd_crypto::load_or_create_private_key(&path)
        .with_context(|| format!("loading the node key {}", path.display()))?;
    if how == meshd_crypto::KeyFileStatus::Created {
        tracing::info!(path = %path.display(), "created the node key");
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
    if status::query(&cfg.run_dir).is_ok() {
        anyhow::bail!("meshd is running (its status socket answers); stop it first");
    }
    let host = Host::connect()?;
    for name in [&cfg.tun, &cfg.bridge] {
        match host.remove_owned(name).await {
            Ok(true) => println!("removed link {name}"),
            Ok(false) => {}
            Err(e) => eprintln!("{e:#}"),
        }
    }
    for f in [crate::runfiles::NETWORK_FILE, crate::runfiles::SOCKET_NAME] {
        let p = cfg.run_dir.join(f);
        if std::fs::remove_file(&p).is_ok() {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}
