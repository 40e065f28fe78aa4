//! meshd's configuration: one TOML file (kebab-case keys, a default for everything that can have
//! one), overridden by command-line flags, each of which also reads a `MESHD_*` variable.
//!
//! Validation happens in one place, [`Config::validate`], and every error names the key and says
//! what is wrong with it, so `meshd run --check-config` is useful to an operator.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::wire::VXLAN_OVERHEAD;

/// Bytes a WireGuard data message adds to a pod packet on an IPv6 underlay: IPv6 (40), UDP (8),
/// WireGuard header and tag (32). wg-quick subtracts the same 80 whatever the underlay, so an
/// MTU chosen for IPv4 keeps working when a peer moves to IPv6.
pub const WIREGUARD_OVERHEAD: usize = 80;
pub use crate::runfiles::NODE_KEY_FILE;
/// Environment variable that carries the cluster secret itself (base64).
pub const CLUSTER_SECRET_ENV: &str = "MESHD_CLUSTER_SECRET";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This node's name, unique in the cluster; its VTEP MAC derives from it.
    pub node_name: String,
    /// Underlay address other nodes send to. Required.
    pub address: Option<IpAddr>,
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
    /// File holding the cluster secret (base64, mode 0600); `MESHD_CLUSTER_SECRET` may carry the
    /// secret itself instead. Required with `encryption = "wireguard"`.
    pub cluster_secret_file: Option<PathBuf>,
    /// MTU of the underlay path; the TUN MTU is this minus the encapsulation overhead.
    pub underlay_mtu: u16,
    pub bridge: String,
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
    pub log_level: String,
    /// Peers known without gossip.
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    Wireguard,
    None,
}

impl Encryption {
    /// Bytes the encapsulation adds to a pod packet: the TUN MTU is the underlay MTU minus this.
    pub fn overhead(self) -> usize {
        match self {
            Encryption::Wireguard => WIREGUARD_OVERHEAD,
            Encryption::None => VXLAN_OVERHEAD,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Wireguard => "wireguard",
            Encryption::None => "none",
        }
    }
}

impl std::str::FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wireguard" => Ok(Encryption::Wireguard),
            "none" => Ok(Encryption::None),
            _ => Err(format!(
                "`{s}` is not an encryption mode: wireguard or none"
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WireguardConfig {
    /// UDP port for WireGuard datagrams, on this node and on every peer.
    pub port: u16,
    /// Handshake initiations per second answered before initiators must show a cookie.
    pub handshakes_per_second: u64,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            port: 51820,
            handshakes_per_second: meshd_crypto::handshake::DEFAULT_HANDSHAKES_PER_SECOND,
        }
    }
}

/// Membership and subnet allocation by gossip (UDP, every datagram sealed with a key derived
/// from the cluster secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GossipConfig {
    /// Run gossip. Absent: on when `seeds` are given or `subnet` is not (a seed node with an
    /// explicit subnet sets `enabled = true`).
    pub enabled: Option<bool>,
    /// UDP port of the gossip socket, on this node and (unless a seed says otherwise) on peers.
    pub port: u16,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            enabled: None,
            port: 7946,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct VxlanConfig {
    pub port: u16,
    pub vni: u32,
}

/// Each optional speed-up can be switched off to exercise the path an older kernel takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Tiers {
    pub multi_queue: bool,
    pub tun_offload: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub address: IpAddr,
    pub subnet: Ipv4Net,
    /// The peer's WireGuard public key (base64, as `meshd pubkey` or `wg pubkey` prints it).
    /// Required with `encryption = "wireguard"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
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
    pub reason: String,
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
            subnet: None,
            seeds: Vec::new(),
            gossip: GossipConfig::default(),
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            encryption: Encryption::Wireguard,
            vxlan: VxlanConfig::default(),
            wireguard: WireguardConfig::default(),
            cluster_secret_file: None,
            underlay_mtu: 1500,
            bridge: "meshbr0".into(),
            tun: "mesh0".into(),
            queues: 0,
            socket_buffer: 8 << 20,
            tun_txqueuelen: 1000,
            tiers: Tiers::default(),
            state_dir: "/var/lib/meshd".into(),
            run_dir: "/run/meshd".into(),
            log_level: "info".into(),
            peers: Vec::new(),
        }
    }
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig { port: 8472, vni: 1 }
    }
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers {
            multi_queue: true,
            tun_offload: true,
            udp_gso: true,
            udp_gro: true,
        }
    }
}

/// Read from a TOML file, keys absent from the file take their defaults.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    address: Option<IpAddr>,
    subnet: Option<Ipv4Net>,
    #[serde(default)]
    seeds: Vec<String>,
    gossip: Option<GossipConfig>,
    cluster_cidr: Option<Ipv4Net>,
    encryption: Option<Encryption>,
    vxlan: Option<VxlanConfig>,
    wireguard: Option<WireguardConfig>,
    cluster_secret_file: Option<PathBuf>,
    underlay_mtu: Option<u16>,
    bridge: Option<String>,
    tun: Option<String>,
    queues: Option<usize>,
    socket_buffer: Option<usize>,
    tun_txqueuelen: Option<u32>,
    tiers: Option<Tiers>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    log_level: Option<String>,
    #[serde(default)]
    peers: Vec<PeerConfig>,
}

impl Config {
    /// Parse TOML text; a syntax or type error names the key through the TOML parser's message.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(text).map_err(|e| toml_error(&e, text))?;
        let d = Config::default();
        Ok(Config {
            node_name: f.node_name.unwrap_or(d.node_name),
            address: f.address.or(d.address),
            subnet: f.subnet.or(d.subnet),
            seeds: f.seeds,
            gossip: f.gossip.unwrap_or(d.gossip),
            cluster_cidr: f.cluster_cidr.unwrap_or(d.cluster_cidr),
            encryption: f.encryption.unwrap_or(d.encryption),
            vxlan: f.vxlan.unwrap_or(d.vxlan),
            wireguard: f.wireguard.unwrap_or(d.wireguard),
            cluster_secret_file: f.cluster_secret_file.or(d.cluster_secret_file),
            underlay_mtu: f.underlay_mtu.unwrap_or(d.underlay_mtu),
            bridge: f.bridge.unwrap_or(d.bridge),
            tun: f.tun.unwrap_or(d.tun),
            queues: f.queues.unwrap_or(d.queues),
            socket_buffer: f.socket_buffer.unwrap_or(d.socket_buffer),
            tun_txqueuelen: f.tun_txqueuelen.unwrap_or(d.tun_txqueuelen),
            tiers: f.tiers.unwrap_or(d.tiers),
            state_dir: f.state_dir.unwrap_or(d.state_dir),
            run_dir: f.run_dir.unwrap_or(d.run_dir),
            log_level: f.log_level.unwrap_or(d.log_level),
            peers: f.peers,
        })
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text)
    }

    /// Check that the configuration can work; nothing on the host is touched.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_ifname("node-name", &self.node_name, 253)?;
        if self.node_name.is_empty() || self.node_name.chars().any(|c| c.is_whitespace()) {
            return Err(err(
                "node-name",
                "must be non-empty and contain no whitespace",
            ));
        }
        let address = self.address.ok_or_else(|| {
            err(
                "address",
                "required: the underlay address other nodes reach this node at",
            )
        })?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(err(
                "address",
                format!("{address} is not a unicast address"),
            ));
        }
        if self.subnet.is_none() && !self.gossip_enabled() {
            return Err(err(
                "subnet",
                "required without gossip: this node's pod subnet, e.g. 10.244.1.0/24",
            ));
        }
        if let Some(subnet) = self.subnet {
            self.check_subnet("subnet", subnet)?;
            if subnet.prefix_len() > 30 {
                return Err(err(
                    "subnet",
                    format!("{subnet} is too small: a /30 or larger is needed"),
                ));
            }
        }
        if self.gossip_enabled() {
            self.validate_gossip()?;
        }
        if self.cluster_cidr.prefix_len() > 30 {
            return Err(err(
                "cluster-cidr",
                format!("{} is too small", self.cluster_cidr),
            ));
        }
        if self.vxlan.vni == 0 || self.vxlan.vni >= 1 << 24 {
            return Err(err(
                "vxlan.vni",
                format!("{} is outside 1..=16777215", self.vxlan.vni),
            ));
        }
        if self.vxlan.port == 0 {
            return Err(err("vxlan.port", "must not be 0"));
        }
        if self.wireguard.port == 0 {
            return Err(err("wireguard.port", "must not be 0"));
        }
        if self.wireguard.handshakes_per_second == 0 {
            return Err(err("wireguard.handshakes-per-second", "must not be 0"));
        }
        let min_mtu = 576 + self.encryption.overhead() as u16;
        if self.underlay_mtu < min_mtu {
            return Err(err(
                "underlay-mtu",
                format!(
                    "{} leaves less than 576 bytes for pod packets; at least {min_mtu}",
                    self.underlay_mtu
                ),
            ));
        }
        validate_ifname("bridge", &self.bridge, 15)?;
        validate_ifname("tun", &self.tun, 15)?;
        if self.bridge == self.tun {
            return Err(err("tun", "must differ from `bridge`"));
        }
        if self.queues > 64 {
            return Err(err("queues", format!("{} is more than 64", self.queues)));
        }
        if self.socket_buffer < 64 << 10 || self.socket_buffer > 1 << 30 {
            return Err(err("socket-buffer", "must be between 64 KiB and 1 GiB"));
        }
        self.validate_peers(address, self.subnet)
    }

    fn validate_gossip(&self) -> Result<(), ConfigError> {
        if self.gossip.port == 0 {
            return Err(err("gossip.port", "must not be 0"));
        }
        for (i, s) in self.seeds.iter().enumerate() {
            if split_seed(s).is_none() {
                return Err(err(
                    format!("seeds[{i}]"),
                    format!("`{s}` is not host:port (e.g. 192.0.2.10:7946)"),
                ));
            }
        }
        if let Some(subnet) = self.subnet {
            if subnet.prefix_len() != self.node_prefix() {
                return Err(err(
                    "subnet",
                    format!(
                        "with gossip, node subnets are /{}: {subnet} is not",
                        self.node_prefix()
                    ),
                ));
            }
        }
        if self.node_name.len() > meshd_gossip::MAX_NAME_LEN {
            return Err(err(
                "node-name",
                format!(
                    "longer than {} bytes, the gossip limit",
                    meshd_gossip::MAX_NAME_LEN
                ),
            ));
        }
        Ok(())
    }

    /// Whether this node runs gossip: `gossip.enabled`, else on with seeds or without a subnet.
    pub fn gossip_enabled(&self) -> bool {
        self.gossip
            .enabled
            .unwrap_or(!self.seeds.is_empty() || self.subnet.is_none())
    }

    /// Prefix length of node subnets cut from the cluster CIDR by gossip.
    pub fn node_prefix(&self) -> u8 {
        24u8.max(self.cluster_cidr.prefix_len())
    }

    fn validate_peers(&self, address: IpAddr, subnet: Option<Ipv4Net>) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, IpAddr, Ipv4Net)> = Vec::new();
        if let Some(subnet) = subnet {
            seen.push((&self.node_name, address, subnet));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            if p.name.is_empty() {
                return Err(err(format!("{key}.name"), "must not be empty"));
            }
            self.check_subnet(&format!("{key}.subnet"), p.subnet)?;
            for (name, addr, net) in &seen {
                if *name == p.name {
                    return Err(err(
                        format!("{key}.name"),
                        format!("`{}` is used twice", p.name),
                    ));
                }
                if *addr == p.address {
                    return Err(err(
                        format!("{key}.address"),
                        format!("{} is also the address of `{name}`", p.address),
                    ));
                }
                if net.contains(&p.subnet) || p.subnet.contains(net) {
                    return Err(err(
                        format!("{key}.subnet"),
                        format!("{} overlaps {net} of `{name}`", p.subnet),
                    ));
                }
            }
            self.check_public_key(&key, p)?;
            seen.push((&p.name, p.address, p.subnet));
        }
        Ok(())
    }

    fn check_public_key(&self, key: &str, p: &PeerConfig) -> Result<(), ConfigError> {
        let key = format!("{key}.public-key");
        match (&p.public_key, self.encryption) {
            (None, Encryption::Wireguard) => Err(err(
                key,
                format!(
                    "required with encryption = \"wireguard\": peer `{}`'s public key (`meshd pubkey < its node.key`)",
                    p.name
                ),
            )),
            (None, Encryption::None) => Ok(()),
            (Some(k), _) => k
                .parse::<meshd_crypto::PublicKey>()
                .map(|_| ())
                .map_err(|e| err(key, format!("`{k}` is not a WireGuard public key: {e}"))),
        }
    }

    fn check_subnet(&self, key: &str, subnet: Ipv4Net) -> Result<(), ConfigError> {
        if subnet.network() != subnet.addr() {
            return Err(err(
                key,
                format!(
                    "{subnet} has host bits set; did you mean {}?",
                    subnet.trunc()
                ),
            ));
        }
        if !self.cluster_cidr.contains(&subnet) {
            return Err(err(
                key,
                format!("{subnet} is outside cluster-cidr {}", self.cluster_cidr),
            ));
        }
        Ok(())
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
pub fn split_seed(seed: &str) -> Option<(&str, u16)> {
    let (host, port) = seed.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

fn validate_ifname(key: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > max {
        return Err(err(key, format!("`{name}` must be 1 to {max} bytes long")));
    }
    if name.contains(['/', ':', '\0']) || name.chars().any(char::is_whitespace) {
        return Err(err(
            key,
            format!("`{name}` contains '/', ':', NUL or whitespace"),
        ));
    }
    Ok(())
}

fn toml_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let msg = e.message().trim().to_string();
    // Unknown keys are named in the message; type errors only carry a span: name the key that
    // starts the line the span points into, and give the line number.
    if let Some(key) = msg.split('`').nth(1) {
        return err(key, msg.clone());
    }
    let Some(span) = e.span() else {
        return err("<file>", msg);
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let key = if key.is_empty() || key.starts_with('[') {
        "<file>"
    } else {
        key
    };
    err(key, format!("{msg} (line {line_no})"))
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

    const GOOD: &str = r#"
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
        assert_eq!(c.peers.len(), 1);
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../meshd.example.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
    }

    fn invalid(extra: &str) -> ConfigError {
        let c = Config::from_toml(&format!("{GOOD}\n{extra}"));
        match c {
            Err(e) => e,
            Ok(c) => c.validate().unwrap_err(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[vxlan]\nvni = 0", "vxlan.vni"),
            ("underlay-mtu = 600", "underlay-mtu"),
            ("bridge = \"a-name-that-is-far-too-long\"", "bridge"),
            (
                "[[peers]]\nname = \"c\"\naddress = \"198.18.0.3\"\nsubnet = \"10.244.2.128/25\"",
                "peers[1].subnet",
            ),
            (
                "[[peers]]\nname = \"b\"\naddress = \"198.18.0.3\"\nsubnet = \"10.244.3.0/24\"",
                "peers[1].name",
            ),
            (
                "[[peers]]\nname = \"c\"\naddress = \"198.18.0.3\"\nsubnet = \"10.9.3.0/24\"",
                "peers[1].subnet",
            ),
            ("socket-buffer = 10", "socket-buffer"),
            ("[wireguard]\nport = 0", "wireguard.port"),
            // 576 + 80 is the least WireGuard can carry; VXLAN would get by with 626.
            ("underlay-mtu = 640", "underlay-mtu"),
            (
                "[[peers]]\nname = \"c\"\naddress = \"198.18.0.3\"\nsubnet = \"10.244.3.0/24\"",
                "peers[1].public-key",
            ),
            (
                "[[peers]]\nname = \"c\"\naddress = \"198.18.0.3\"\nsubnet = \"10.244.3.0/24\"\npublic-key = \"bm90IGEga2V5\"",
                "peers[1].public-key",
            ),
        ];
        for (extra, key) in cases {
            let e = invalid(extra);
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn cleartext_peers_need_no_key() {
        let text = "node-name = \"a\"\naddress = \"198.18.0.1\"\nsubnet = \"10.244.1.0/24\"\nencryption = \"none\"\n[[peers]]\nname = \"b\"\naddress = \"198.18.0.2\"\nsubnet = \"10.244.2.0/24\"";
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.peers[0].key(), None);
        let e = Config::from_toml(&text.replace("\"none\"", "\"wireguard\""))
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "peers[0].public-key");
        assert!(e.reason.contains("`b`"), "{e}");
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
    fn unknown_and_mistyped_keys_are_named() {
        let e = Config::from_toml("node-nmae = \"x\"").unwrap_err();
        assert!(e.to_string().contains("node-nmae"), "{e}");
        let e = Config::from_toml("node-name = \"x\"\nunderlay-mtu = \"big\"").unwrap_err();
        assert_eq!(e.key, "underlay-mtu", "{e}");
        assert!(e.reason.contains("line 2"), "{e}");
        let e = Config::from_toml("subnet = \"10.244.1.1/24\"\naddress=\"1.2.3.4\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "subnet");
        assert!(e.reason.contains("10.244.1.0/24"), "{e}");
    }

    #[test]
    fn missing_required_keys() {
        assert_eq!(
            Config::from_toml("").unwrap().validate().unwrap_err().key,
            "address"
        );
        let e = Config::from_toml("address = \"198.18.0.1\"\n[gossip]\nenabled = false")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "subnet");
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

    #[test]
    fn gossip_keys_are_checked() {
        let seeds = |s: &str| {
            Config::from_toml(&format!("address = \"198.18.0.1\"\nseeds = [\"{s}\"]"))
                .unwrap()
                .validate()
                .unwrap_err()
                .key
        };
        assert_eq!(seeds("no-port"), "seeds[0]");
        assert_eq!(seeds("h:0"), "seeds[0]");
        let e = Config::from_toml(
            "address = \"198.18.0.1\"\nsubnet = \"10.244.0.0/23\"\n[gossip]\nenabled = true",
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(e.key, "subnet");
        assert_eq!(
            split_seed("[2001:db8::1]:7946"),
            Some(("2001:db8::1", 7946))
        );
        assert_eq!(
            split_seed("seed.example:7946"),
            Some(("seed.example", 7946))
        );
    }
}
