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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This node's name, unique in the cluster; its VTEP MAC derives from it.
    pub node_name: String,
    /// Underlay address other nodes send to. Required.
    pub address: Option<IpAddr>,
    /// This node's pod subnet. Required until gossip allocates subnets.
    pub subnet: Option<Ipv4Net>,
    /// All pod subnets together; routed into the overlay.
    pub cluster_cidr: Ipv4Net,
    /// "none": cleartext VXLAN framing for trusted networks.
    pub encryption: Encryption,
    pub vxlan: VxlanConfig,
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
    None,
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
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
            encryption: Encryption::None,
            vxlan: VxlanConfig::default(),
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
    cluster_cidr: Option<Ipv4Net>,
    encryption: Option<Encryption>,
    vxlan: Option<VxlanConfig>,
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
            cluster_cidr: f.cluster_cidr.unwrap_or(d.cluster_cidr),
            encryption: f.encryption.unwrap_or(d.encryption),
            vxlan: f.vxlan.unwrap_or(d.vxlan),
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
        let subnet = self.subnet.ok_or_else(|| {
            err(
                "subnet",
                "required: this node's pod subnet, e.g. 10.244.1.0/24",
            )
        })?;
        self.check_subnet("subnet", subnet)?;
        if subnet.prefix_len() > 30 {
            return Err(err(
                "subnet",
                format!("{subnet} is too small: a /30 or larger is needed"),
            ));
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
        let min_mtu = 576 + VXLAN_OVERHEAD as u16;
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
        self.validate_peers(address, subnet)
    }

    fn validate_peers(&self, address: IpAddr, subnet: Ipv4Net) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, IpAddr, Ipv4Net)> = vec![(&self.node_name, address, subnet)];
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
            seen.push((&p.name, p.address, p.subnet));
        }
        Ok(())
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
        self.underlay_mtu - VXLAN_OVERHEAD as u16
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
    "#;

    #[test]
    fn defaults_fill_the_rest() {
        let c = Config::from_toml(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.vxlan.port, 8472);
        assert_eq!(c.vxlan.vni, 1);
        assert_eq!(c.overlay_mtu(), 1450);
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
        ];
        for (extra, key) in cases {
            let e = invalid(extra);
            assert_eq!(e.key, key, "{extra}: {e}");
        }
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
        let e = Config::from_toml("address = \"198.18.0.1\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "subnet");
    }
}
