//! Every flag sets its key, reads its variable, and is in the README.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::super::file::tests::{leaves, FULL};
use super::*;
use clap::{Command, FromArgMatches};

/// Each flag with a value other than its key's default, and the key it must change. A
/// switch has no value (its variable is set to `true`).
const FLAGS: &[(&str, &str, &str)] = &[
    ("--node-name", "flagged", "node-name"),
    ("--address", "198.18.0.7", "address"),
    ("--listen-address", "198.18.0.8", "listen-address"),
    ("--subnet", "10.244.7.0/24", "subnet"),
    ("--join", "198.18.0.2:7946,198.18.0.3:7946", "seeds"),
    ("--gossip-enabled", "false", "gossip.enabled"),
    ("--gossip-port", "7000", "gossip.port"),
    ("--cluster-cidr", "10.250.0.0/16", "cluster-cidr"),
    ("--encryption", "none", "encryption"),
    ("--vxlan-port", "4789", "vxlan.port"),
    ("--vxlan-vni", "42", "vxlan.vni"),
    ("--vxlan-device", "flagvx0", "vxlan.device"),
    ("--wireguard-device", "flagwg0", "wireguard.device"),
    ("--datapath", "kernel", "datapath"),
    ("--host-gw", "true", "host-gw"),
    ("--wireguard-port", "51000", "wireguard.port"),
    (
        "--wireguard-handshakes-per-second",
        "7",
        "wireguard.handshakes-per-second",
    ),
    ("--wireguard-nat-keepalive", "9", "wireguard.nat-keepalive"),
    ("--wireguard-hole-punching", "false", "wireguard.hole-punching"),
    ("--cluster-secret-file", "/etc/f.secret", "cluster-secret-file"),
    ("--underlay-mtu", "9000", "underlay-mtu"),
    ("--masquerade", "false", "masquerade"),
    (
        "--no-masquerade-cidrs",
        "192.0.2.0/24,198.51.100.0/24",
        "no-masquerade-cidrs",
    ),
    ("--mss-clamping", "false", "mss-clamping"),
    ("--path-mtu-discovery", "false", "path-mtu-discovery"),
    ("--bridge", "flagbr0", "bridge"),
    ("--tun", "flag0", "tun"),
    ("--queues", "3", "queues"),
    ("--socket-buffer", "1048576", "socket-buffer"),
    ("--tun-txqueuelen", "500", "tun-txqueuelen"),
    ("--tiers-multi-queue", "false", "tiers.multi-queue"),
    ("--tiers-tun-offload", "false", "tiers.tun-offload"),
    ("--tiers-udp-gso", "false", "tiers.udp-gso"),
    ("--tiers-udp-gro", "false", "tiers.udp-gro"),
    ("--tiers-udp-flows", "false", "tiers.udp-flows"),
    ("--no-multi-queue", "", "tiers.multi-queue"),
    ("--no-tun-offload", "", "tiers.tun-offload"),
    ("--no-udp-gso", "", "tiers.udp-gso"),
    ("--no-udp-gro", "", "tiers.udp-gro"),
    ("--no-udp-flows", "", "tiers.udp-flows"),
    ("--state-dir", "/var/lib/f", "state-dir"),
    ("--run-dir", "/run/f", "run-dir"),
    ("--log-level", "debug", "log-level"),
    ("--log-format", "json", "log-format"),
    ("--metrics-address", "10.0.0.1:9999", "metrics-address"),
    ("--metrics-per-peer", "true", "metrics-per-peer"),
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
            ("no-masquerade-cidrs", v) => v.split(',').count().to_string(),
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
    let flows = parse("--tiers-udp-flows true --no-udp-flows").unwrap();
    assert!(!applied(&flows, Config::default()).tiers.udp_flows);
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
    let readme = include_str!("../../../../README.md");
    for a in command(|n| Some(n.to_string())).get_arguments() {
        let flag = format!("`--{}", a.get_long().unwrap());
        assert!(readme.contains(&flag), "README.md does not list {flag}`");
        if let Some(env) = a.get_env() {
            let env = format!("`{}`", env.to_string_lossy());
            assert!(readme.contains(&env), "README.md does not list {env}");
        }
    }
}
