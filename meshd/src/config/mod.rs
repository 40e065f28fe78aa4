//! meshd's configuration: one TOML file (kebab-case keys, a default for everything that can have
//! one), overridden by the flags of `meshd run` ([`cli`]), each of which also reads a `MESHD_*`
//! variable.
//!
//! The file is read straight into [`Config`]: serde's `default` fills what the file leaves out,
//! so there is no second, all-`Option` copy of the struct to keep in step with this one. Every
//! check lives in [`Config::validate`] (`validate.rs`), and every error names the key and says
//! what is wrong with it, so `meshd run --check-config` is useful to an operator.

pub mod cli;
mod egress;
mod file;
mod modes;
mod mtu;
mod peer_flag;
mod underlay;
mod validate;

pub use modes::{Datapath, Encryption, LogFormat};
/// The parser of one `--peer` value (public for its fuzz target).
pub use peer_flag::parse as parse_peer_flag;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Bytes a WireGuard data message adds to a pod packet on an IPv6 underlay: IPv6 (40), UDP (8),
/// WireGuard header and tag (32). wg-quick subtracts the same 80 whatever the underlay, so an
/// MTU chosen for IPv4 keeps working when a peer moves to IPv6.
pub(crate) const WIREGUARD_OVERHEAD: usize = 80;
pub use crate::runfiles::NODE_KEY_FILE;
/// Where `/metrics` is served unless configured: loopback, so neither pods nor other hosts
/// reach it (9472: beside node_exporter's 9100 range, unused in Prometheus's port list).
pub(crate) const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9472";
/// Environment variable that carries the cluster secret itself (base64).
pub(crate) const CLUSTER_SECRET_ENV: &str = "MESHD_CLUSTER_SECRET";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// This node's name, unique in the cluster; its VTEP MAC derives from it.
    pub node_name: String,
    /// Underlay address other nodes send to (advertised; it need not be assigned here: a cloud
    /// VM behind a 1:1 NAT sets its public address). Absent: the source address of the route
    /// towards the first seed, else of the default route (`meshd status` says which), and
    /// with gossip, whatever public endpoints other members observe this node at.
    pub address: Option<IpAddr>,
    /// Address the UDP sockets (data and gossip) bind to. Absent: all addresses.
    pub listen_address: Option<IpAddr>,
    /// Relay WireGuard datagrams for pairs of members that have no direct path (encrypted
    /// mode, with gossip; the relay cannot open them). Absent: on while this node is behind no
    /// NAT (members observe it at the address it advertises), off behind one.
    pub relay: Option<bool>,
    /// This node's pod subnet. Required without gossip; with gossip, an explicit claim (absent:
    /// the lease persisted under `state-dir`, else a free subnet picked by the cluster).
    pub subnet: Option<Ipv4Net>,
    /// Gossip seeds, `host:port`: any live member will do. Turns gossip on.
    pub seeds: Vec<String>,
    pub gossip: GossipConfig,
    /// All pod subnets together; routed into the overlay.
    pub cluster_cidr: Ipv4Net,
    /// "wireguard" (the default): standard WireGuard between nodes. "none": cleartext VXLAN
    /// framing, for trusted networks only.
    pub encryption: Encryption,
    pub vxlan: VxlanConfig,
    pub wireguard: WireguardConfig,
    /// Which data path carries pod packets: "auto" (the default: the kernel's where it has
    /// one and it passes probes, per peer, else meshd's userspace path), "kernel" (the kernel's
    /// or fail at start) or "userspace" (never the kernel's).
    pub datapath: Datapath,
    /// Cleartext only: route straight to a peer's underlay address, without encapsulation,
    /// when it is on this node's L2 segment and probes pass (flannel's host-gw, per peer).
    pub host_gw: bool,
    /// File holding the cluster secret (base64, mode 0600); `MESHD_CLUSTER_SECRET` may carry the
    /// secret itself instead. Required with `encryption = "wireguard"`.
    pub cluster_secret_file: Option<PathBuf>,
    /// MTU of the underlay path; the TUN MTU is this minus the encapsulation overhead.
    pub underlay_mtu: u16,
    /// Masquerade pod traffic leaving `cluster-cidr` to the node's address ([`egress`]).
    pub masquerade: bool,
    /// Destinations outside the cluster that see pod addresses (never masqueraded).
    pub no_masquerade_cidrs: Vec<Ipv4Net>,
    /// Clamp the MSS of TCP SYNs into the overlay to the MTU of the peer they go to.
    pub mss_clamping: bool,
    /// Find each peer's path MTU with probes and give its pod packets that MTU (see
    /// `config/mtu.rs`); off: every peer gets the TUN MTU.
    pub path_mtu_discovery: bool,
    /// Name of the pod bridge meshd creates.
    pub bridge: String,
    /// Name of the TUN device meshd creates.
    pub tun: String,
    /// Data-path queues (TUN queues and UDP sockets, one worker pair each); 0 = one per CPU.
    pub queues: usize,
    /// Send and receive buffer of each UDP socket, in bytes (forced as root).
    pub socket_buffer: usize,
    /// Transmit queue length of the TUN device, in packets.
    pub tun_txqueuelen: u32,
    pub tiers: Tiers,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// A `tracing` filter. Changed by SIGHUP without a restart.
    pub log_level: String,
    /// How log lines are written: "text" (the default) or "json" (one object per line).
    pub log_format: LogFormat,
    /// Where `/metrics` (Prometheus text format) and the picture of the mesh (`/`) are served,
    /// `IP:port`; empty turns it off.
    /// Changed by SIGHUP without a restart.
    pub metrics_address: String,
    /// Per-peer series (label `peer`) besides the node's totals: one set per member, so off by
    /// default (the node's series then do not grow with the cluster).
    pub metrics_per_peer: bool,
    /// Peers known without gossip.
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WireguardConfig {
    /// UDP port for WireGuard datagrams, on this node and on every peer.
    pub(crate) port: u16,
    /// Handshake initiations per second answered before initiators must show a cookie.
    pub(crate) handshakes_per_second: u64,
    /// Name of the kernel WireGuard device, where the kernel has WireGuard.
    pub(crate) device: String,
    /// Seconds between keepalives to a peer reached through a NAT (either side behind one),
    /// holding the NAT's mapping open while the pair is idle; 0 turns them off (a test switch:
    /// an idle NAT mapping then expires). Public-only pairs never send them.
    pub(crate) nat_keepalive: u16,
    /// Hole punching for pairs behind NATs on both ends (on by default). Off, such a pair is
    /// never sent to at its public endpoints: a test switch, showing what punching does.
    pub(crate) hole_punching: bool,
}

/// Membership and subnet allocation by gossip (UDP, every datagram sealed with a key derived
/// from the cluster secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GossipConfig {
    /// Run gossip. Absent: on when `seeds` are given or `subnet` is not (a seed node with an
    /// explicit subnet sets `enabled = true`).
    pub(crate) enabled: Option<bool>,
    /// UDP port of the gossip socket, on this node and (unless a seed says otherwise) on peers.
    pub(crate) port: u16,
}

/// Cleartext mode: the VXLAN UDP port and network identifier, the same on every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct VxlanConfig {
    pub(crate) port: u16,
    pub(crate) vni: u32,
    /// Name of the kernel VXLAN device, where the kernel has VXLAN.
    pub(crate) device: String,
}

/// Each optional speed-up can be switched off to exercise the path an older kernel takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Tiers {
    pub(crate) multi_queue: bool,
    pub(crate) tun_offload: bool,
    pub(crate) udp_gso: bool,
    pub(crate) udp_gro: bool,
    /// Send each queue's datagrams from a source port of its own, so that one peer's inner
    /// flows reach the receiver as several UDP flows (spread over its queues, and over a
    /// NIC's RSS queues).
    pub(crate) udp_flows: bool,
}

/// A peer known without gossip. No `default` here, unlike the tables above: a peer without a
/// name, an address or a subnet is a mistake to report, not a gap to fill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerConfig {
    pub(crate) name: String,
    pub(crate) address: IpAddr,
    pub(crate) subnet: Ipv4Net,
    /// The peer's WireGuard public key (base64, as `meshd pubkey` or `wg pubkey` prints it).
    /// Required with `encryption = "wireguard"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_key: Option<String>,
}

impl PeerConfig {
    /// The peer's public key, once [`Config::validate`] has accepted it.
    pub fn key(&self) -> Option<meshd_crypto::PublicKey> {
        self.public_key.as_deref().and_then(|k| k.parse().ok())
    }
}

/// A configuration value that cannot work, with the key it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub(crate) reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: default_node_name(),
            address: None,
            listen_address: None,
            relay: None,
            subnet: None,
            seeds: Vec::new(),
            gossip: GossipConfig::default(),
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            encryption: Encryption::default(),
            vxlan: VxlanConfig::default(),
            wireguard: WireguardConfig::default(),
            datapath: Datapath::default(),
            host_gw: false,
            cluster_secret_file: None,
            underlay_mtu: 1500,
            masquerade: true,
            no_masquerade_cidrs: Vec::new(),
            mss_clamping: true,
            path_mtu_discovery: true,
            bridge: "meshbr0".into(),
            tun: "mesh0".into(),
            queues: 0,
            socket_buffer: 8 << 20,
            tun_txqueuelen: 1000,
            tiers: Tiers::default(),
            state_dir: "/var/lib/meshd".into(),
            run_dir: "/run/meshd".into(),
            log_level: "info".into(),
            log_format: LogFormat::default(),
            metrics_address: DEFAULT_METRICS_ADDRESS.into(),
            metrics_per_peer: false,
            peers: Vec::new(),
        }
    }
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            enabled: None,
            port: 7946,
        }
    }
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            port: 8472,
            vni: 1,
            device: "meshvx0".into(),
        }
    }
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            port: 51820,
            handshakes_per_second: meshd_crypto::handshake::DEFAULT_HANDSHAKES_PER_SECOND,
            device: "meshwg0".into(),
            nat_keepalive: 25,
            hole_punching: true,
        }
    }
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            multi_queue: true,
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
            udp_flows: true,
        }
    }
}

impl Config {
    /// Whether this node runs gossip: `gossip.enabled`, else on with seeds or without a subnet.
    pub(crate) fn gossip_enabled(&self) -> bool {
        self.gossip
            .enabled
            .unwrap_or(!self.seeds.is_empty() || self.subnet.is_none())
    }

    /// Prefix length of node subnets cut from the cluster CIDR by gossip.
    pub(crate) fn node_prefix(&self) -> u8 {
        24u8.max(self.cluster_cidr.prefix_len())
    }

    /// MTU of the TUN device and of pods.
    pub fn overlay_mtu(&self) -> u16 {
        self.underlay_mtu
            .saturating_sub(self.encryption.overhead() as u16)
    }

    /// UDP port of the data path in the configured mode.
    pub fn data_port(&self) -> u16 {
        match self.encryption {
            Encryption::Wireguard => self.wireguard.port,
            Encryption::None => self.vxlan.port,
        }
    }

    /// Where the node's WireGuard private key lives.
    pub fn node_key_path(&self) -> PathBuf {
        self.state_dir.join(NODE_KEY_FILE)
    }

    /// The cluster secrets (one, or several during a rotation, primary first):
    /// `MESHD_CLUSTER_SECRET` (the secrets themselves, separated by commas) if set, otherwise
    /// the file named by `cluster-secret-file` (one per line; refused when group or others can
    /// read it). Read again on SIGHUP and whenever the file changes.
    pub fn cluster_keyring(&self) -> Result<meshd_crypto::Keyring, ConfigError> {
        if let Ok(v) = std::env::var(CLUSTER_SECRET_ENV) {
            return meshd_crypto::Keyring::parse(&v)
                .map_err(|e| err(CLUSTER_SECRET_ENV, e.to_string()));
        }
        let path = self.cluster_secret_file.as_ref().ok_or_else(|| {
            err(
                "cluster-secret-file",
                format!("required with encryption = \"wireguard\" or gossip unless {CLUSTER_SECRET_ENV} is set; `meshd secret > FILE` makes one"),
            )
        })?;
        meshd_crypto::Keyring::read_file(path)
            .map_err(|e| err("cluster-secret-file", e.to_string()))
    }

    /// The metrics listener's address; `None` when `metrics-address` is empty (off). Valid
    /// once [`Config::validate`] accepted it.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address.trim().parse().ok()
    }

    /// Number of data-path queues to ask for.
    pub fn queue_count(&self) -> usize {
        if self.queues > 0 {
            return self.queues;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    }
}

/// `host:port` split at the last colon (IPv6 literals in brackets); `None` when malformed.
pub(crate) fn split_seed(seed: &str) -> Option<(&str, u16)> {
    let (host, port) = seed.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "meshd-node".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::path::Path;

    pub(super) const GOOD: &str = r#"
        node-name = "a"
        address = "198.18.0.1"
        subnet = "10.244.1.0/24"
        [[peers]]
        name = "b"
        address = "198.18.0.2"
        subnet = "10.244.2.0/24"
        public-key = "U1o8m1yUdU0cGWJAPZ5ch6xvnQuAoMTqlbQDTujHiH4="
    "#;

    #[test]
    fn defaults_fill_the_rest() {
        let c = Config::from_toml(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.vxlan.port, 8472);
        assert_eq!(c.vxlan.vni, 1);
        assert_eq!(c.encryption, Encryption::Wireguard);
        assert_eq!(c.wireguard.port, 51820);
        assert_eq!(c.data_port(), 51820);
        assert_eq!(c.overlay_mtu(), 1420);
        assert_eq!(c.node_key_path(), Path::new("/var/lib/meshd/node.key"));
        let mut clear = c.clone();
        clear.encryption = Encryption::None;
        assert_eq!(clear.overlay_mtu(), 1450);
        assert_eq!(clear.data_port(), 8472);
        assert!(c.tiers.tun_offload && c.tiers.udp_gso && c.tiers.udp_gro && c.tiers.multi_queue);
        assert!(c.tiers.udp_flows);
        assert_eq!(c.peers.len(), 1);
    }

    #[test]
    fn cluster_secret_from_a_file() {
        let dir = std::env::temp_dir().join(format!("meshd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        let secret = meshd_crypto::ClusterSecret::generate();
        secret.write_new_file(&path).unwrap();
        let mut c = Config::from_toml(GOOD).unwrap();
        if std::env::var_os(CLUSTER_SECRET_ENV).is_none() {
            assert_eq!(c.cluster_keyring().unwrap_err().key, "cluster-secret-file");
            c.cluster_secret_file = Some(path.clone());
            assert_eq!(
                c.cluster_keyring().unwrap().ids(),
                vec![meshd_crypto::SecretId::of(&secret)]
            );
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(c.cluster_keyring().unwrap_err().key, "cluster-secret-file");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn gossip_makes_the_subnet_optional() {
        let c =
            Config::from_toml("address = \"198.18.0.1\"\nseeds = [\"198.18.0.2:7946\"]").unwrap();
        c.validate().unwrap();
        assert!(c.gossip_enabled());
        assert_eq!(c.gossip.port, 7946);
        // No subnet and no seeds: the first node of a gossip cluster.
        let first = Config::from_toml("address = \"198.18.0.1\"").unwrap();
        first.validate().unwrap();
        assert!(first.gossip_enabled());
        // Static peers alone keep gossip off.
        assert!(!Config::from_toml(GOOD).unwrap().gossip_enabled());
    }
}
