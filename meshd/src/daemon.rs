//! `meshd run`: set up the host, start the data path, serve status, and wait for a signal.

use anyhow::{Context, Result};
use std::sync::Arc;

use crate::config::{Config, Encryption};
use crate::datapath::DataPath;
use crate::host::{self, Host};
use crate::routes::{Local, Peer, Routes};
use crate::status::{self, NetworkFile, Status, StatusSource};
use crate::wire::vtep_mac;

/// Run until SIGTERM or SIGINT. The configuration must already be validated.
pub async fn run(cfg: Config) -> Result<()> {
    let subnet = cfg.subnet.context("no subnet")?;
    let address = cfg.address.context("no address")?;
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("creating the run directory {}", cfg.run_dir.display()))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;

    let routes = Arc::new(Routes::new(Local {
        name: cfg.node_name.clone(),
        vni: cfg.vxlan.vni,
        port: cfg.vxlan.port,
    }));
    let host = Host::connect()?;
    // The TUN device exists from here until the data path stops.
    let datapath = DataPath::start(&cfg, routes.clone())?;
    if let Err(e) = setup_host(&host, &cfg).await {
        datapath.stop();
        return Err(e);
    }
    routes.update(&static_peers(&cfg));
    let t = &datapath.tiers;
    tracing::info!(
        node = %cfg.node_name, %subnet, %address, queues = t.queues,
        multi_queue = %t.multi_queue, tun_offload = %t.tun_offload,
        udp_gso = %t.udp_gso, udp_gro = %t.udp_gro,
        peers = cfg.peers.len(), "meshd is up"
    );

    let pid = std::process::id();
    let network = NetworkFile {
        node: cfg.node_name.clone(),
        subnet: subnet.to_string(),
        gateway: host::gateway(subnet).to_string(),
        bridge: cfg.bridge.clone(),
        mtu: cfg.overlay_mtu(),
        cluster_cidr: cfg.cluster_cidr.to_string(),
        pid,
    };
    status::write_atomic(&cfg.run_dir.join(status::NETWORK_FILE), &network)?;
    let source = Arc::new(StatusSource {
        base: Status {
            node: cfg.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid,
            address: address.to_string(),
            subnet: subnet.to_string(),
            vtep_mac: vtep_mac(&cfg.node_name).to_string(),
            encryption: match cfg.encryption {
                Encryption::None => "none (VXLAN cleartext)".into(),
            },
            mtu: cfg.overlay_mtu(),
            tiers: datapath.tiers.clone(),
            peers: Vec::new(),
            unattributed: Default::default(),
        },
        routes: routes.clone(),
    });
    let socket = cfg.run_dir.join(status::SOCKET_NAME);
    let server = tokio::spawn(status::serve(socket.clone(), source));

    wait_for_signal().await?;
    tracing::info!("stopping; the bridge stays so pods keep their addresses");
    server.abort();
    let _ = std::fs::remove_file(&socket);
    datapath.stop();
    Ok(())
}

async fn setup_host(host: &Host, cfg: &Config) -> Result<()> {
    let subnet = cfg.subnet.context("no subnet")?;
    host.ensure_bridge(
        &cfg.bridge,
        &cfg.node_name,
        subnet,
        cfg.cluster_cidr,
        cfg.overlay_mtu(),
    )
    .await?;
    host.route_cluster(&cfg.tun, cfg.cluster_cidr).await?;
    host::enable_forwarding()
}

fn static_peers(cfg: &Config) -> Vec<Peer> {
    cfg.peers
        .iter()
        .map(|p| Peer {
            name: p.name.clone(),
            address: p.address,
            subnet: p.subnet,
        })
        .collect()
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
    for f in [status::NETWORK_FILE, status::SOCKET_NAME] {
        let p = cfg.run_dir.join(f);
        if std::fs::remove_file(&p).is_ok() {
            println!("removed {}", p.display());
        }
    }
    Ok(())
}
