//! Reading the TOML file. serde reads it straight into [`Config`]; what is left here is the
//! error mapping, because an operator needs the key and the line, and the TOML parser names the
//! key only for unknown keys: a mistyped value comes with nothing but a byte span.

use std::collections::BTreeMap;
use std::path::Path;

use super::{err, Config, ConfigError};

impl Config {
    /// Parse TOML text; keys absent from it take their defaults. A syntax or type error names
    /// the key (and the line).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| toml_error(&e, text))
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text)
    }
}

impl Config {
    /// The configuration as dotted key → value (arrays such as `peers` are one value), so
    /// configurations can be compared key by key without listing the fields again: a reload
    /// names the keys that changed, tests check that each flag sets its own.
    pub(crate) fn leaves(&self) -> BTreeMap<String, toml::Value> {
        fn walk(prefix: String, v: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(key, v, out);
                    }
                }
                v => {
                    out.insert(prefix, v);
                }
            }
        }
        let mut out = BTreeMap::new();
        // Every field serializes (no maps with non-string keys): the error cannot happen.
        if let Ok(v) = toml::Value::try_from(self) {
            walk(String::new(), v, &mut out);
        }
        out
    }

    /// The keys whose values differ between `self` and `other`, in order.
    pub(crate) fn changed_keys(&self, other: &Config) -> Vec<String> {
        let (a, b) = (self.leaves(), other.leaves());
        let mut keys: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

fn toml_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let msg = e.message().trim().to_string();
    // serde names the key in unknown, missing and duplicate field errors. Other errors quote the
    // value if anything (a mistyped value, an unknown variant) and carry a span: name the key
    // that starts the line the span points into, and give the line number.
    let names_a_field = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| msg.starts_with(p));
    let named = msg.split('`').nth(1).filter(|_| names_a_field);
    if let Some(key) = named.filter(|k| !k.is_empty()) {
        return err(key, msg.clone());
    }
    let Some(span) = e.span() else {
        return err("<file>", msg);
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    if named.is_some() {
        // `"" = …`: serde names the empty string, which the operator cannot search for.
        return err(
            "<file>",
            format!("an empty key (\"\") is not a setting (line {line_no})"),
        );
    }
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

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every key, each at a value other than its default (and still a valid configuration).
    pub(in crate::config) const FULL: &str = r#"
        node-name = "full"
        address = "198.18.0.9"
        listen-address = "198.18.0.8"
        subnet = "10.250.3.0/24"
        seeds = ["198.18.0.2:7000"]
        cluster-cidr = "10.250.0.0/16"
        encryption = "none"
        datapath = "kernel"
        host-gw = true
        cluster-secret-file = "/etc/meshd/full.secret"
        underlay-mtu = 9000
        masquerade = false
        no-masquerade-cidrs = ["192.0.2.0/24"]
        mss-clamping = false
        path-mtu-discovery = false
        bridge = "fullbr0"
        tun = "full0"
        queues = 3
        socket-buffer = 1048576
        tun-txqueuelen = 500
        state-dir = "/var/lib/full"
        run-dir = "/run/full"
        log-level = "debug"
        log-format = "json"
        metrics-address = "[::1]:9999"
        metrics-per-peer = true
        [gossip]
        enabled = true
        port = 7000
        [vxlan]
        port = 4789
        vni = 42
        device = "fullvx0"
        [wireguard]
        port = 51000
        handshakes-per-second = 7
        device = "fullwg0"
        nat-keepalive = 9
        hole-punching = false
        [tiers]
        multi-queue = false
        tun-offload = false
        udp-gso = false
        udp-gro = false
        udp-flows = false
        [[peers]]
        name = "p"
        address = "198.18.0.10"
        subnet = "10.250.4.0/24"
        public-key = "U1o8m1yUdU0cGWJAPZ5ch6xvnQuAoMTqlbQDTujHiH4="
    "#;

    pub(in crate::config) fn leaves(c: &Config) -> BTreeMap<String, toml::Value> {
        c.leaves()
    }

    #[test]
    fn every_key_is_settable_from_the_file() {
        let full = Config::from_toml(FULL).unwrap();
        full.validate().unwrap();
        let (got, default) = (leaves(&full), leaves(&Config::default()));
        for (key, value) in &default {
            assert_ne!(
                got.get(key),
                Some(value),
                "FULL leaves `{key}` at its default"
            );
        }
        // The keys whose default is "absent" are set too.
        let optional: Vec<&str> = got
            .keys()
            .filter(|k| !default.contains_key(*k))
            .map(String::as_str)
            .collect();
        assert_eq!(
            optional,
            [
                "address",
                "cluster-secret-file",
                "gossip.enabled",
                "listen-address",
                "subnet"
            ]
        );
        // And what serializes reads back the same.
        let again = Config::from_toml(&toml::to_string(&full).unwrap()).unwrap();
        assert_eq!(leaves(&again), got);
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../meshd.example.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
    }

    /// The template is a working configuration once `address` is the host's: gossip on, no
    /// subnet, seed or peer of its own, on the first node as on the others.
    #[test]
    fn the_template_config_is_valid() {
        let text = include_str!("../../../meshd.template.toml");
        let first = Config::from_toml(text).unwrap();
        first.validate().unwrap();
        assert!(first.gossip_enabled());
        assert!(first.subnet.is_none() && first.seeds.is_empty() && first.peers.is_empty());
        assert!(first.cluster_secret_file.is_some());
        let seeds = text
            .lines()
            .find(|l| l.starts_with("# seeds = "))
            .expect("the template shows `seeds`, commented out");
        let others = Config::from_toml(&text.replace(seeds, &seeds[2..])).unwrap();
        others.validate().unwrap();
        assert_eq!(others.seeds.len(), 1);
    }

    #[test]
    fn the_example_config_shows_every_key() {
        let text = include_str!("../../../meshd.example.toml");
        for key in leaves(&Config::from_toml(FULL).unwrap()).keys() {
            let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
            let shown = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{name} =")) || l.starts_with(&format!("[[{name}]]"))
            });
            assert!(shown, "meshd.example.toml does not show `{key}`");
            if !table.is_empty() {
                assert!(text.contains(&format!("[{table}]")), "no [{table}]");
            }
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

    /// A key that is the empty string is named by its line, not as "unknown field ``".
    #[test]
    fn an_empty_key_is_named_by_its_line() {
        for text in [
            "\"\"=\"=\"",
            "node-name = \"x\"\n\"\" = 1",
            "[vxlan]\n'' = 2",
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert_eq!(e.key, "<file>", "{text}: {e}");
            assert!(e.reason.contains("empty key"), "{text}: {e}");
            assert!(e.reason.contains("line"), "{text}: {e}");
        }
    }

    #[test]
    fn keys_inside_tables_are_named_too() {
        let cases = [
            ("[vxlan]\nvnii = 2", "vnii", ""),
            ("[tiers]\nudp-gso = \"yes\"", "udp-gso", "line 3"),
            ("[gossip]\nenabled = 1", "enabled", "line 3"),
            ("encryption = \"wg\"", "encryption", "line 2"),
            ("[vxlan]\nport = 1.5", "port", "line 3"),
            (
                "[[peers]]\nname = \"c\"\naddress = \"198.18.0.3\"",
                "subnet",
                "",
            ),
            (
                "[[peers]]\nname = \"c\"\naddress = \"nowhere\"",
                "address",
                "line 4",
            ),
        ];
        for (text, key, line) in cases {
            let e = Config::from_toml(&format!("node-name = \"x\"\n{text}")).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(line), "{text}: {e}");
        }
    }
}
