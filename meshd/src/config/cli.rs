//! The flags of `meshd run`, laid over the file by [`RunArgs::apply`]. They live beside
//! [`Config`] rather than in the binary so that the one place that maps a flag to its key is
//! next to the key, and tests can parse and apply flags without running the command.

use clap::Args;
use ipnet::Ipv4Net;
use std::net::IpAddr;
use std::path::PathBuf;

use super::{Config, Encryption};

/// The configuration file, shared by the subcommands that read it.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "MESHD_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `meshd run`: the file, then these flags over it (each also read from its `MESHD_*`
/// variable), then [`Config::validate`].
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Validate the configuration (and read the cluster secrets) and exit without touching
    /// the host.
    #[arg(long)]
    pub check_config: bool,
    #[arg(long, env = "MESHD_NODE_NAME")]
    node_name: Option<String>,
    /// Underlay address other nodes reach this one at.
    #[arg(long, env = "MESHD_ADDRESS")]
    address: Option<IpAddr>,
    /// This node's pod subnet.
    #[arg(long, env = "MESHD_SUBNET")]
    subnet: Option<Ipv4Net>,
    /// Gossip seed `host:port` to join through (repeatable; MESHD_JOIN takes a comma-separated
    /// list). Added to the config's `seeds`; turns gossip on.
    #[arg(long = "join", env = "MESHD_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// UDP port of the gossip socket.
    #[arg(long, env = "MESHD_GOSSIP_PORT")]
    gossip_port: Option<u16>,
    #[arg(long, env = "MESHD_RUN_DIR")]
    run_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_LOG_LEVEL")]
    log_level: Option<String>,
    #[arg(long, env = "MESHD_QUEUES")]
    queues: Option<usize>,
    /// `wireguard` (the default) or `none` (cleartext VXLAN, trusted networks only).
    #[arg(long, env = "MESHD_ENCRYPTION")]
    encryption: Option<Encryption>,
    /// File holding the cluster secret (mode 0600). MESHD_CLUSTER_SECRET may carry the secret
    /// itself instead.
    #[arg(long, env = "MESHD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Do not use multi-queue TUN even where the kernel has it.
    #[arg(long, env = "MESHD_NO_MULTI_QUEUE")]
    no_multi_queue: bool,
    /// Do not use TUN TSO/GRO offload (virtio-net header).
    #[arg(long, env = "MESHD_NO_TUN_OFFLOAD")]
    no_tun_offload: bool,
    /// Do not send with UDP GSO.
    #[arg(long, env = "MESHD_NO_UDP_GSO")]
    no_udp_gso: bool,
    /// Do not receive with UDP GRO.
    #[arg(long, env = "MESHD_NO_UDP_GRO")]
    no_udp_gro: bool,
}

impl RunArgs {
    /// The configuration to run with: the file (or the defaults), these flags over it, checked.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Lay the flags that were given over `cfg`; absent flags leave their key alone.
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.node_name {
            c.node_name = v.clone();
        }
        if self.address.is_some() {
            c.address = self.address;
        }
        if self.subnet.is_some() {
            c.subnet = self.subnet;
        }
        for seed in &self.join {
            if !c.seeds.contains(seed) {
                c.seeds.push(seed.clone());
            }
        }
        if let Some(v) = self.gossip_port {
            c.gossip.port = v;
        }
        if let Some(v) = &self.run_dir {
            c.run_dir = v.clone();
        }
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = self.queues {
            c.queues = v;
        }
        if let Some(v) = self.encryption {
            c.encryption = v;
        }
        if let Some(v) = &self.cluster_secret_file {
            c.cluster_secret_file = Some(v.clone());
        }
        c.tiers.multi_queue &= !self.no_multi_queue;
        c.tiers.tun_offload &= !self.no_tun_offload;
        c.tiers.udp_gso &= !self.no_udp_gso;
        c.tiers.udp_gro &= !self.no_udp_gro;
    }
}
