//! Every check on a [`Config`], whichever layer (file, flag, environment) a value came from.
//!
//! Checks run once, on the merged configuration, because most of them relate keys to each other
//! (a subnet inside `cluster-cidr`, a peer's address not this node's, the MTU against the
//! encryption's overhead): checking a layer alone would miss those and report the rest twice.
//! Errors use the file's key names, so one message format serves every layer.

use ipnet::Ipv4Net;
use std::net::IpAddr;

use super::{err, split_seed, Config, ConfigError, Encryption, PeerConfig};
use crate::peers::claims::to_subnet;

impl Config {
    /// Check that the configuration can work; nothing on the host is touched.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("node-name", &self.node_name)?;
        // Absent: `meshd run` takes the source address of the route towards the first seed,
        // else of the default route (see `daemon::underlay`).
        if let Some(address) = self.address {
            if address.is_unspecified() || address.is_multicast() {
                return Err(err(
                    "address",
                    format!("{address} is not a unicast address"),
                ));
            }
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
        self.validate_egress()?;
        validate_ifname("bridge", &self.bridge, 15)?;
        validate_ifname("tun", &self.tun, 15)?;
        if self.bridge == self.tun {
            return Err(err("tun", "must differ from `bridge`"));
        }
        validate_ifname("vxlan.device", &self.vxlan.device, 15)?;
        validate_ifname("wireguard.device", &self.wireguard.device, 15)?;
        for (key, name) in [
            ("vxlan.device", &self.vxlan.device),
            ("wireguard.device", &self.wireguard.device),
        ] {
            if name == &self.bridge || name == &self.tun {
                return Err(err(key, "must differ from `bridge` and `tun`"));
            }
        }
        if self.host_gw && self.encryption != super::Encryption::None {
            return Err(err(
                "host-gw",
                "routes pod packets unencapsulated, in the clear: it needs encryption = \"none\"",
            ));
        }
        if self.host_gw && self.datapath == super::Datapath::Userspace {
            return Err(err(
                "host-gw",
                "is a kernel path: it cannot be used with datapath = \"userspace\"",
            ));
        }
        if self.queues > 64 {
            return Err(err("queues", format!("{} is more than 64", self.queues)));
        }
        if self.socket_buffer < 64 << 10 || self.socket_buffer > 1 << 30 {
            return Err(err("socket-buffer", "must be between 64 KiB and 1 GiB"));
        }
        self.validate_metrics()?;
        self.validate_peers(self.address, self.subnet)
    }

    fn validate_metrics(&self) -> Result<(), ConfigError> {
        let text = self.metrics_address.trim();
        if text.is_empty() {
            return Ok(());
        }
        match text.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() == 0 => Err(err("metrics-address", "the port must not be 0")),
            Ok(_) => Ok(()),
            Err(_) => Err(err(
                "metrics-address",
                format!("`{text}` is not IP:port (e.g. 127.0.0.1:9472), nor empty (off)"),
            )),
        }
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
        // Checked as every other node checks this node's claim and its static peers' subnets
        // (gossip's pool): refused here, not silently by the cluster.
        if let Some(pool) = self.gossip_pool() {
            let claim = |subnet| meshd_gossip::SubnetClaim {
                subnet,
                stamp: 0,
                explicit: true,
            };
            if let Some(Err(e)) = self
                .subnet
                .and_then(to_subnet)
                .map(|s| pool.check(&claim(s)))
            {
                let (node, most) = (self.node_prefix(), meshd_gossip::MAX_CLAIM_SLOTS);
                let why =
                    format!("with gossip, a /{node} or an aligned block of at most {most}: {e}");
                return Err(err("subnet", why));
            }
            for (i, p) in self.peers.iter().enumerate() {
                if let Some(Err(e)) = to_subnet(p.subnet).map(|r| pool.check_reserved(&r)) {
                    return Err(err(format!("peers[{i}].subnet"), e.to_string()));
                }
            }
        }
        // Static peers' subnets are published in this node's gossip record, so that no member
        // is given one; a record carries so many.
        if self.peers.len() > meshd_gossip::MAX_RESERVED {
            return Err(err(
                "peers",
                format!(
                    "{} static peers next to gossip: at most {} (their subnets travel in this node's gossip record)",
                    self.peers.len(),
                    meshd_gossip::MAX_RESERVED
                ),
            ));
        }

        Ok(())
    }

    /// The node subnets gossip cuts `cluster-cidr` into.
    fn gossip_pool(&self) -> Option<meshd_gossip::Pool> {
        let cidr = to_subnet(self.cluster_cidr)?;
        meshd_gossip::Pool::new(cidr, self.node_prefix()).ok()
    }

    fn validate_peers(
        &self,
        address: Option<IpAddr>,
        subnet: Option<Ipv4Net>,
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, Option<IpAddr>, Ipv4Net)> = Vec::new();
        if let Some(subnet) = subnet {
            seen.push((&self.node_name, address, subnet));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            check_name(&format!("{key}.name"), &p.name)?;
            self.check_subnet(&format!("{key}.subnet"), p.subnet)?;
            for (name, addr, net) in &seen {
                if *name == p.name {
                    return Err(err(
                        format!("{key}.name"),
                        format!("`{}` is used twice", p.name),
                    ));
                }
                if *addr == Some(p.address) {
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
            seen.push((&p.name, Some(p.address), p.subnet));
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
}

/// Node names (this node's, static peers') reach logs, terminals and every member's gossip
/// state: the gossip crate's rule, which records from the wire are held to as well.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if meshd_gossip::is_valid_name(name) {
        return Ok(());
    }
    Err(err(
        key,
        format!(
            "`{}` is not a valid node name: {}",
            name.escape_default(),
            meshd_gossip::NAME_RULE
        ),
    ))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::tests::GOOD;
    use super::*;

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
            ("metrics-address = \"localhost:9472\"", "metrics-address"),
            ("metrics-address = \"127.0.0.1:0\"", "metrics-address"),
            ("metrics-address = \"127.0.0.1\"", "metrics-address"),
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
    fn names_are_held_to_the_gossip_rule() {
        let base = Config::from_toml(GOOD).unwrap();
        let long = "n".repeat(65);
        for bad in ["", "a b", "-x", "..", "n\u{1b}[31m", long.as_str()] {
            let mut c = base.clone();
            c.node_name = bad.into();
            let e = c.validate().unwrap_err();
            let text = e.to_string();
            assert_eq!(e.key, "node-name", "{bad:?}");
            assert!(
                text.contains("A-Z a-z 0-9") && !text.contains('\u{1b}'),
                "{text}"
            );
        }
        let e = invalid(
            "[[peers]]\nname = \"c d\"\naddress = \"198.18.0.3\"\nsubnet = \"10.244.3.0/24\"",
        );
        assert_eq!(e.key, "peers[1].name");
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
    fn missing_required_keys() {
        // No address: `run` finds it from the routes (towards the first seed, else the default
        // route); an explicit one must be unicast.
        Config::from_toml("").unwrap().validate().unwrap();
        assert_eq!(
            Config::from_toml("address = \"0.0.0.0\"")
                .unwrap()
                .validate()
                .unwrap_err()
                .key,
            "address"
        );
        let e = Config::from_toml("address = \"198.18.0.1\"\n[gossip]\nenabled = false")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "subnet");
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
        // An aligned block of node subnets is a claim gossip counts; smaller, or more than 16
        // of them, is not.
        let subnet = |s: &str| {
            Config::from_toml(&format!(
                "address = \"198.18.0.1\"\nsubnet = \"{s}\"\n[gossip]\nenabled = true"
            ))
            .unwrap()
            .validate()
        };
        subnet("10.244.0.0/23").unwrap();
        subnet("10.244.16.0/20").unwrap();
        for bad in ["10.244.0.0/25", "10.244.0.0/19"] {
            let e = subnet(bad).unwrap_err();
            assert_eq!(e.key, "subnet", "{bad}: {e}");
        }
        let many: String = (0..=meshd_gossip::MAX_RESERVED)
            .map(|i| {
                format!(
                    "[[peers]]\nname = \"p{i}\"\naddress = \"198.18.1.{i}\"\nsubnet = \"10.244.{}.0/24\"\n",
                    100 + i
                )
            })
            .collect();
        let text = format!("address = \"198.18.0.1\"\nencryption = \"none\"\n{many}");
        let e = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(e.key, "peers", "{e}");
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
