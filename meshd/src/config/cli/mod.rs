//! The flags of `meshd run`: one per config key, named after it (`vxlan.port` is `--vxlan-port`
//! and `MESHD_VXLAN_PORT`), laid over the file by [`RunArgs::apply`].
//!
//! The key list is written four times, and that is the fewest that works: [`Config`] (types,
//! docs, serde names: what the crate reads), its `Default` (the values), [`RunArgs`] and
//! [`RunArgs::apply`]. The flags cannot be `Config` itself: clap needs "not given" to differ
//! from "given the default", so that a flag's default never overrides the file; hence a flag
//! struct of `Option`s and lists. And `apply` cannot be one generic loop, because a flag does not
//! always replace its key: list flags append (`--join`, `--peer`), `--no-*` switches only turn a
//! tier off, and optional keys become `Some`. A macro generating both from one table would hide
//! the clap attributes and help texts that are the CLI's interface. Instead `apply` destructures
//! [`Config`] without `..`, so a key added to it does not compile until it has a flag, and the
//! tests check that every flag changes exactly its own key.

use clap::Args;
use ipnet::Ipv4Net;
use std::net::IpAddr;
use std::path::PathBuf;

use super::{
    Config, Datapath, Encryption, GossipConfig, LogFormat, PeerConfig, Tiers, VxlanConfig,
    WireguardConfig,
};

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
    pub(crate) config: ConfigArgs,
    /// Validate the configuration (and read the cluster secrets) and exit without touching
    /// the host.
    #[arg(long)]
    pub check_config: bool,
    /// This node's name, unique in the cluster.
    #[arg(long, env = "MESHD_NODE_NAME")]
    node_name: Option<String>,
    /// Underlay address other nodes reach this one at (default: from the route towards the
    /// first seed, else the default route).
    #[arg(long, env = "MESHD_ADDRESS")]
    address: Option<IpAddr>,
    /// Address the UDP sockets bind to (default: all).
    #[arg(long, env = "MESHD_LISTEN_ADDRESS")]
    listen_address: Option<IpAddr>,
    /// Relay for pairs without a direct path (default: on behind no NAT).
    #[arg(long, env = "MESHD_RELAY")]
    relay: Option<bool>,
    /// This node's pod subnet.
    #[arg(long, env = "MESHD_SUBNET")]
    subnet: Option<Ipv4Net>,
    /// Gossip seed `host:port` to join through (repeatable; MESHD_JOIN takes a comma-separated
    /// list). Added to the config's `seeds`; turns gossip on.
    #[arg(long = "join", env = "MESHD_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// Run gossip (`gossip.enabled`); absent: on with seeds or without a subnet.
    #[arg(long, env = "MESHD_GOSSIP_ENABLED", value_name = "true|false")]
    gossip_enabled: Option<bool>,
    /// UDP port of the gossip socket.
    #[arg(long, env = "MESHD_GOSSIP_PORT")]
    gossip_port: Option<u16>,
    /// All pod subnets together.
    #[arg(long, env = "MESHD_CLUSTER_CIDR")]
    cluster_cidr: Option<Ipv4Net>,
    /// `wireguard` (the default) or `none` (cleartext VXLAN, trusted networks only).
    #[arg(long, env = "MESHD_ENCRYPTION")]
    encryption: Option<Encryption>,
    /// Cleartext mode: UDP port of VXLAN datagrams.
    #[arg(long, env = "MESHD_VXLAN_PORT")]
    vxlan_port: Option<u16>,
    /// Cleartext mode: VXLAN network identifier.
    #[arg(long, env = "MESHD_VXLAN_VNI")]
    vxlan_vni: Option<u32>,
    /// Cleartext mode: name of the kernel VXLAN device.
    #[arg(long, env = "MESHD_VXLAN_DEVICE")]
    vxlan_device: Option<String>,
    /// Name of the kernel WireGuard device.
    #[arg(long, env = "MESHD_WIREGUARD_DEVICE")]
    wireguard_device: Option<String>,
    /// `auto` (the default: the kernel's data path per peer where it works), `kernel` (or fail
    /// at start) or `userspace`.
    #[arg(long, env = "MESHD_DATAPATH")]
    datapath: Option<Datapath>,
    /// Cleartext mode: plain routes to peers on this node's L2 segment (`host-gw`).
    #[arg(long, env = "MESHD_HOST_GW", value_name = "true|false")]
    host_gw: Option<bool>,
    /// UDP port of WireGuard datagrams.
    #[arg(long, env = "MESHD_WIREGUARD_PORT")]
    wireguard_port: Option<u16>,
    /// Handshake initiations per second answered before cookies are required.
    #[arg(long, env = "MESHD_WIREGUARD_HANDSHAKES_PER_SECOND")]
    wireguard_handshakes_per_second: Option<u64>,
    /// Seconds between keepalives to peers reached through a NAT (0: off).
    #[arg(long, env = "MESHD_WIREGUARD_NAT_KEEPALIVE")]
    wireguard_nat_keepalive: Option<u16>,
    /// Hole punching for pairs behind NATs on both ends (default true).
    #[arg(long, env = "MESHD_WIREGUARD_HOLE_PUNCHING")]
    wireguard_hole_punching: Option<bool>,
    /// File holding the cluster secret (mode 0600). MESHD_CLUSTER_SECRET may carry the secret
    /// itself instead.
    #[arg(long, env = "MESHD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// MTU of the underlay path.
    #[arg(long, env = "MESHD_UNDERLAY_MTU")]
    underlay_mtu: Option<u16>,
    /// Masquerade pod traffic leaving the cluster CIDR to the node's address.
    #[arg(long, env = "MESHD_MASQUERADE", value_name = "true|false")]
    masquerade: Option<bool>,
    /// A destination that sees pod addresses, not masqueraded (repeatable; the variable takes a
    /// comma-separated list). Added to the config's `no-masquerade-cidrs`.
    #[arg(long, env = "MESHD_NO_MASQUERADE_CIDRS", value_delimiter = ',')]
    no_masquerade_cidrs: Vec<Ipv4Net>,
    /// Clamp the MSS of TCP SYNs into the overlay to the MTU of the peer they go to.
    #[arg(long, env = "MESHD_MSS_CLAMPING", value_name = "true|false")]
    mss_clamping: Option<bool>,
    /// Find each peer's path MTU with probes (`path-mtu-discovery`).
    #[arg(long, env = "MESHD_PATH_MTU_DISCOVERY", value_name = "true|false")]
    path_mtu_discovery: Option<bool>,
    /// Name of the pod bridge.
    #[arg(long, env = "MESHD_BRIDGE")]
    bridge: Option<String>,
    /// Name of the TUN device.
    #[arg(long, env = "MESHD_TUN")]
    tun: Option<String>,
    /// Data-path queues; 0 = one per CPU (up to 8).
    #[arg(long, env = "MESHD_QUEUES")]
    queues: Option<usize>,
    /// Send and receive buffer of each UDP socket, bytes.
    #[arg(long, env = "MESHD_SOCKET_BUFFER")]
    socket_buffer: Option<usize>,
    /// Transmit queue length of the TUN device, packets.
    #[arg(long, env = "MESHD_TUN_TXQUEUELEN")]
    tun_txqueuelen: Option<u32>,
    /// Use multi-queue TUN where the kernel has it.
    #[arg(long, env = "MESHD_TIERS_MULTI_QUEUE", value_name = "true|false")]
    tiers_multi_queue: Option<bool>,
    /// Use TUN TSO/GRO offload (virtio-net header) where the kernel has it.
    #[arg(long, env = "MESHD_TIERS_TUN_OFFLOAD", value_name = "true|false")]
    tiers_tun_offload: Option<bool>,
    /// Send with UDP GSO where the kernel has it.
    #[arg(long, env = "MESHD_TIERS_UDP_GSO", value_name = "true|false")]
    tiers_udp_gso: Option<bool>,
    /// Receive with UDP GRO where the kernel has it.
    #[arg(long, env = "MESHD_TIERS_UDP_GRO", value_name = "true|false")]
    tiers_udp_gro: Option<bool>,
    /// Send each queue's datagrams from a source port of its own (several UDP flows per peer).
    #[arg(long, env = "MESHD_TIERS_UDP_FLOWS", value_name = "true|false")]
    tiers_udp_flows: Option<bool>,
    /// Do not use multi-queue TUN even where the kernel has it (wins over --tiers-multi-queue).
    #[arg(long, env = "MESHD_NO_MULTI_QUEUE")]
    no_multi_queue: bool,
    /// Do not use TUN TSO/GRO offload (wins over --tiers-tun-offload).
    #[arg(long, env = "MESHD_NO_TUN_OFFLOAD")]
    no_tun_offload: bool,
    /// Do not send with UDP GSO (wins over --tiers-udp-gso).
    #[arg(long, env = "MESHD_NO_UDP_GSO")]
    no_udp_gso: bool,
    /// Do not receive with UDP GRO (wins over --tiers-udp-gro).
    #[arg(long, env = "MESHD_NO_UDP_GRO")]
    no_udp_gro: bool,
    /// Send every datagram from the data port, one UDP flow per peer (wins over
    /// --tiers-udp-flows).
    #[arg(long, env = "MESHD_NO_UDP_FLOWS")]
    no_udp_flows: bool,
    /// Where the node keeps state across restarts.
    #[arg(long, env = "MESHD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where the node puts runtime files (network.json, meshd.sock).
    #[arg(long, env = "MESHD_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// A tracing filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, env = "MESHD_LOG_LEVEL")]
    log_level: Option<String>,
    /// `text` (the default) or `json`: one JSON object per log line.
    #[arg(long, env = "MESHD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Where `/metrics` and the picture of the mesh (`/`) are served, `IP:port`; an empty value
    /// turns it off.
    #[arg(long, env = "MESHD_METRICS_ADDRESS")]
    metrics_address: Option<String>,
    /// Per-peer metric series (label `peer`), one set per member.
    #[arg(long, env = "MESHD_METRICS_PER_PEER", value_name = "true|false")]
    metrics_per_peer: Option<bool>,
    /// A static peer, the keys of a `[[peers]]` table (repeatable; MESHD_PEERS separates peers
    /// with `;`). Added after the file's peers, so errors name it `peers[N]` counting those.
    #[arg(
        long = "peer",
        env = "MESHD_PEERS",
        value_delimiter = ';',
        value_parser = super::peer_flag::parse,
        value_name = "name=NAME,address=ADDR,subnet=CIDR[,public-key=KEY]"
    )]
    peers: Vec<PeerConfig>,
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
    pub(crate) fn apply(&self, cfg: &mut Config) {
        // No `..` here: a key added to Config does not compile until it has a flag below.
        let Config {
            node_name,
            address,
            listen_address,
            relay,
            subnet,
            seeds,
            gossip,
            cluster_cidr,
            encryption,
            vxlan,
            wireguard,
            datapath,
            host_gw,
            cluster_secret_file,
            underlay_mtu,
            masquerade,
            no_masquerade_cidrs,
            mss_clamping,
            path_mtu_discovery,
            bridge,
            tun,
            queues,
            socket_buffer,
            tun_txqueuelen,
            tiers,
            state_dir,
            run_dir,
            log_level,
            log_format,
            metrics_address,
            metrics_per_peer,
            peers,
        } = cfg;
        let GossipConfig { enabled, port } = gossip;
        let VxlanConfig {
            port: vxlan_port,
            vni,
            device: vxlan_device,
        } = vxlan;
        let WireguardConfig {
            port: wg_port,
            handshakes_per_second: handshakes,
            device: wg_device,
            nat_keepalive,
            hole_punching,
        } = wireguard;
        let Tiers {
            multi_queue,
            tun_offload,
            udp_gso,
            udp_gro,
            udp_flows,
        } = tiers;
        set(node_name, &self.node_name);
        set_some(address, &self.address);
        set_some(listen_address, &self.listen_address);
        set_some(relay, &self.relay);
        set_some(subnet, &self.subnet);
        for seed in &self.join {
            if !seeds.contains(seed) {
                seeds.push(seed.clone());
            }
        }
        set_some(enabled, &self.gossip_enabled);
        set(port, &self.gossip_port);
        set(cluster_cidr, &self.cluster_cidr);
        set(encryption, &self.encryption);
        set(vxlan_port, &self.vxlan_port);
        set(vni, &self.vxlan_vni);
        set(wg_port, &self.wireguard_port);
        set(handshakes, &self.wireguard_handshakes_per_second);
        set(nat_keepalive, &self.wireguard_nat_keepalive);
        set(hole_punching, &self.wireguard_hole_punching);
        set(vxlan_device, &self.vxlan_device);
        set(wg_device, &self.wireguard_device);
        set(datapath, &self.datapath);
        set(host_gw, &self.host_gw);
        set_some(cluster_secret_file, &self.cluster_secret_file);
        set(underlay_mtu, &self.underlay_mtu);
        set(masquerade, &self.masquerade);
        for n in &self.no_masquerade_cidrs {
            if !no_masquerade_cidrs.contains(n) {
                no_masquerade_cidrs.push(*n);
            }
        }
        set(mss_clamping, &self.mss_clamping);
        set(path_mtu_discovery, &self.path_mtu_discovery);
        set(bridge, &self.bridge);
        set(tun, &self.tun);
        set(queues, &self.queues);
        set(socket_buffer, &self.socket_buffer);
        set(tun_txqueuelen, &self.tun_txqueuelen);
        set(multi_queue, &self.tiers_multi_queue);
        set(tun_offload, &self.tiers_tun_offload);
        set(udp_gso, &self.tiers_udp_gso);
        set(udp_gro, &self.tiers_udp_gro);
        set(udp_flows, &self.tiers_udp_flows);
        // Switching a speed-up off is how an operator rules it out, so the `--no-*` form wins.
        *multi_queue &= !self.no_multi_queue;
        *tun_offload &= !self.no_tun_offload;
        *udp_gso &= !self.no_udp_gso;
        *udp_gro &= !self.no_udp_gro;
        *udp_flows &= !self.no_udp_flows;
        set(state_dir, &self.state_dir);
        set(run_dir, &self.run_dir);
        set(log_level, &self.log_level);
        set(log_format, &self.log_format);
        set(metrics_address, &self.metrics_address);
        set(metrics_per_peer, &self.metrics_per_peer);
        peers.extend(self.peers.iter().cloned());
    }
}

fn set<T: Clone>(key: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        key.clone_from(v);
    }
}

fn set_some<T: Clone>(key: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        key.clone_from(flag);
    }
}

#[cfg(test)]
mod tests;
