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

use super::{Config, Encryption, GossipConfig, PeerConfig, Tiers, VxlanConfig, WireguardConfig};

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
    /// This node's name, unique in the cluster.
    #[arg(long, env = "MESHD_NODE_NAME")]
    node_name: Option<String>,
    /// Underlay address other nodes reach this one at (default: from the route towards the
    /// first seed, else the default route).
    #[arg(long, env = "MESHD_ADDRESS")]
    address: Option<IpAddr>,
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
    /// UDP port of WireGuard datagrams.
    #[arg(long, env = "MESHD_WIREGUARD_PORT")]
    wireguard_port: Option<u16>,
    /// Handshake initiations per second answered before cookies are required.
    #[arg(long, env = "MESHD_WIREGUARD_HANDSHAKES_PER_SECOND")]
    wireguard_handshakes_per_second: Option<u64>,
    /// File holding the cluster secret (mode 0600). MESHD_CLUSTER_SECRET may carry the secret
    /// itself instead.
    #[arg(long, env = "MESHD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// MTU of the underlay path.
    #[arg(long, env = "MESHD_UNDERLAY_MTU")]
    underlay_mtu: Option<u16>,
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
    /// Where the node keeps state across restarts.
    #[arg(long, env = "MESHD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Where the node puts runtime files (network.json, meshd.sock).
    #[arg(long, env = "MESHD_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// A tracing filter: error, warn, info, debug, trace, or per-module directives.
    #[arg(long, env = "MESHD_LOG_LEVEL")]
    log_level: Option<String>,
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
    pub fn apply(&self, cfg: &mut Config) {
        // No `..` here: a key added to Config does not compile until it has a flag below.
        let Config {
            node_name,
            address,
            subnet,
            seeds,
            gossip,
            cluster_cidr,
            encryption,
            vxlan,
            wireguard,
            cluster_secret_file,
            underlay_mtu,
            bridge,
            tun,
            queues,
            socket_buffer,
            tun_txqueuelen,
            tiers,
            state_dir,
            run_dir,
            log_level,
            peers,
        } = cfg;
        let GossipConfig { enabled, port } = gossip;
        let VxlanConfig {
            port: vxlan_port,
            vni,
        } = vxlan;
        let WireguardConfig {
            port: wg_port,
            handshakes_per_second: handshakes,
        } = wireguard;
        let Tiers {
            multi_queue,
            tun_offload,
            udp_gso,
            udp_gro,
        } = tiers;
        set(node_name, &self.node_name);
        set_some(address, &self.address);
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
        set_some(cluster_secret_file, &self.cluster_secret_file);
        set(underlay_mtu, &self.underlay_mtu);
        set(bridge, &self.bridge);
        set(tun, &self.tun);
        set(queues, &self.queues);
        set(socket_buffer, &self.socket_buffer);
        set(tun_txqueuelen, &self.tun_txqueuelen);
        set(multi_queue, &self.tiers_multi_queue);
        set(tun_offload, &self.tiers_tun_offload);
        set(udp_gso, &self.tiers_udp_gso);
        set(udp_gro, &self.tiers_udp_gro);
        // Switching a speed-up off is how an operator rules it out, so the `--no-*` form wins.
        *multi_queue &= !self.no_multi_queue;
        *tun_offload &= !self.no_tun_offload;
        *udp_gso &= !self.no_udp_gso;
        *udp_gro &= !self.no_udp_gro;
        set(state_dir, &self.state_dir);
        set(run_dir, &self.run_dir);
        set(log_level, &self.log_level);
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::file::tests::{leaves, FULL};
    use super::*;
    use clap::{Command, FromArgMatches};

    /// Each flag with a value other than its key's default, and the key it must change. A
    /// switch has no value (its variable is set to `true`).
    const FLAGS: &[(&str, &str, &str)] = &[
        ("--node-name", "flagged", "node-name"),
        ("--address", "198.18.0.7", "address"),
        ("--subnet", "10.244.7.0/24", "subnet"),
        ("--join", "198.18.0.2:7946,198.18.0.3:7946", "seeds"),
        ("--gossip-enabled", "false", "gossip.enabled"),
        ("--gossip-port", "7000", "gossip.port"),
        ("--cluster-cidr", "10.250.0.0/16", "cluster-cidr"),
        ("--encryption", "none", "encryption"),
        ("--vxlan-port", "4789", "vxlan.port"),
        ("--vxlan-vni", "42", "vxlan.vni"),
        ("--wireguard-port", "51000", "wireguard.port"),
        (
            "--wireguard-handshakes-per-second",
            "7",
            "wireguard.handshakes-per-second",
        ),
        ("--cluster-secret-file", "/etc/f.secret", "cluster-secret-file"),
        ("--underlay-mtu", "9000", "underlay-mtu"),
        ("--bridge", "flagbr0", "bridge"),
        ("--tun", "flag0", "tun"),
        ("--queues", "3", "queues"),
        ("--socket-buffer", "1048576", "socket-buffer"),
        ("--tun-txqueuelen", "500", "tun-txqueuelen"),
        ("--tiers-multi-queue", "false", "tiers.multi-queue"),
        ("--tiers-tun-offload", "false", "tiers.tun-offload"),
        ("--tiers-udp-gso", "false", "tiers.udp-gso"),
        ("--tiers-udp-gro", "false", "tiers.udp-gro"),
        ("--no-multi-queue", "", "tiers.multi-queue"),
        ("--no-tun-offload", "", "tiers.tun-offload"),
        ("--no-udp-gso", "", "tiers.udp-gso"),
        ("--no-udp-gro", "", "tiers.udp-gro"),
        ("--state-dir", "/var/lib/f", "state-dir"),
        ("--run-dir", "/run/f", "run-dir"),
        ("--log-level", "debug", "log-level"),
        (
            "--peer",
            "name=p,address=198.18.0.10,subnet=10.244.4.0/24;name=q,address=198.18.0.11,subnet=10.244.5.0/24,public-key=U1o8m1yUdU0cGWJAPZ5ch6xvnQuAoMTqlbQDTujHiH4=",
            "peers",
        ),
    ];

    /// The `meshd run` flags, with every variable renamed by `env` (`None`: read none), so a
    /// test never sees the environment it runs in, nor races another test over it.
    fn command(env: impl Fn(&str) -> Option<String>) -> Command {
        RunArgs::augment_args(Command::new("meshd")).mut_args(|a| {
            let name = a.get_env().map(|n| env(&n.to_string_lossy()));
            match name {
                Some(Some(n)) => a.env(&*Box::leak(n.into_boxed_str())),
                _ => a.env(None::<&'static str>),
            }
        })
    }

    /// `meshd run` with `line`, split at whitespace, and no environment.
    fn parse(line: &str) -> Result<RunArgs, clap::Error> {
        let args = std::iter::once("meshd").chain(line.split_whitespace());
        RunArgs::from_arg_matches(&command(|_| None).try_get_matches_from(args)?)
    }

    fn applied(args: &RunArgs, mut cfg: Config) -> Config {
        args.apply(&mut cfg);
        cfg
    }

    #[test]
    fn every_flag_sets_its_key_and_only_that() {
        let default = leaves(&Config::default());
        for &(flag, value, key) in FLAGS {
            let got = leaves(&applied(
                &parse(&format!("{flag} {value}")).unwrap(),
                Config::default(),
            ));
            let changed: std::collections::BTreeSet<&String> = got
                .keys()
                .chain(default.keys())
                .filter(|k| got.get(*k) != default.get(*k))
                .collect();
            assert_eq!(changed.into_iter().collect::<Vec<_>>(), [key], "{flag}");
            let shown = match &got[key] {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(a) => a.len().to_string(),
                v => v.to_string(),
            };
            let want = match (key, value) {
                (_, "") => "false".to_string(),
                ("seeds", v) => v.split(',').count().to_string(),
                ("peers", v) => v.split(';').count().to_string(),
                (_, v) => v.to_string(),
            };
            assert_eq!(shown, want, "{flag}");
        }
        // And every key has one: the keys of a file that sets them all.
        let mut flagged: Vec<&str> = FLAGS.iter().map(|f| f.2).collect();
        flagged.sort_unstable();
        flagged.dedup();
        let full = leaves(&Config::from_toml(FULL).unwrap());
        assert_eq!(flagged, full.keys().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn flags_lie_over_the_file() {
        let file = Config::from_toml(FULL).unwrap();
        // No flag: the file stands, whatever the flags' own defaults.
        let none = applied(&parse("").unwrap(), file.clone());
        assert_eq!(leaves(&none), leaves(&file));
        // Lists append (without repeating a seed); other keys are replaced.
        let args = parse(
            "--join 198.18.0.2:7000,198.18.0.5:7000 --underlay-mtu 1400 --tiers-udp-gso true \
             --peer name=z,address=198.18.0.20,subnet=10.250.9.0/24",
        );
        let c = applied(&args.unwrap(), file.clone());
        assert_eq!(c.seeds, ["198.18.0.2:7000", "198.18.0.5:7000"]);
        let names: Vec<&str> = c.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["p", "z"]);
        assert_eq!(c.underlay_mtu, 1400);
        assert!(c.tiers.udp_gso);
        c.validate().unwrap();
        // Switching off wins over switching on.
        let both = parse("--tiers-udp-gro true --no-udp-gro").unwrap();
        assert!(!applied(&both, Config::default()).tiers.udp_gro);
    }

    /// The README's promise: MESHD_ and the flag's name (`--peer` reads MESHD_PEERS).
    fn env_name(long: &str) -> String {
        match long {
            "peer" => "MESHD_PEERS".into(),
            _ => format!("MESHD_{}", long.to_uppercase().replace('-', "_")),
        }
    }

    #[test]
    fn every_flag_reads_its_env_var() {
        for a in command(|n| Some(n.to_string())).get_arguments() {
            let long = a.get_long().unwrap();
            let want = (long != "check-config").then(|| env_name(long));
            let got = a.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(got, want, "--{long}");
        }
        // The values, through variables of this test's own. clap reads a variable when the
        // command is built, so it is built after they are set.
        let tag = format!("MESHD_TEST_{}_", std::process::id());
        let ours = |flag: &str| format!("{tag}{}", env_name(&flag[2..]));
        let renamed = || command(|n| Some(format!("{tag}{n}"))).try_get_matches_from(["meshd"]);
        let mut line = String::new();
        for &(flag, value, _) in FLAGS {
            std::env::set_var(ours(flag), if value.is_empty() { "true" } else { value });
            line += &format!(" {flag} {value}");
        }
        let from_env = renamed().map(|m| RunArgs::from_arg_matches(&m));
        std::env::set_var(ours("--vxlan-vni"), "lots");
        let bad = renamed().map(|_| ()).unwrap_err();
        for &(flag, _, _) in FLAGS {
            std::env::remove_var(ours(flag));
        }
        let from_env = applied(&from_env.unwrap().unwrap(), Config::default());
        let from_flags = applied(&parse(&line).unwrap(), Config::default());
        assert_eq!(leaves(&from_env), leaves(&from_flags));
        assert_ne!(leaves(&from_env), leaves(&Config::default()));
        assert!(bad.to_string().contains("--vxlan-vni"), "{bad}");
    }

    #[test]
    fn bad_flags_are_named() {
        for (line, named) in [
            ("--vxlan-vni lots", "--vxlan-vni"),
            ("--gossip-enabled yes", "--gossip-enabled"),
            ("--encryption wg", "wireguard or none"),
            ("--vxlan-vnii 3", "--vxlan-vnii"),
            ("--peer name=b", "has no `address=`"),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(named), "{line}: {e}");
        }
        // A value that parses but cannot work is validate's, with the key it lands on.
        let args = parse("--address 198.18.0.1 --subnet 10.244.1.0/24 --vxlan-vni 0").unwrap();
        let e = applied(&args, Config::default()).validate().unwrap_err();
        assert_eq!(e.key, "vxlan.vni");
    }

    #[test]
    fn the_readme_lists_every_flag_and_variable() {
        let readme = include_str!("../../../README.md");
        for a in command(|n| Some(n.to_string())).get_arguments() {
            let flag = format!("`--{}", a.get_long().unwrap());
            assert!(readme.contains(&flag), "README.md does not list {flag}`");
            if let Some(env) = a.get_env() {
                let env = format!("`{}`", env.to_string_lossy());
                assert!(readme.contains(&env), "README.md does not list {env}");
            }
        }
    }
}
