//! The egress keys: `masquerade`, `no-masquerade-cidrs`, `mss-clamping` (see
//! [`crate::kernel::egress`] and [`crate::kernel::mss`] for what they turn into).

use super::{err, Config, ConfigError};

impl Config {
    /// Each exemption is a network (no host bits) outside the cluster, and not everything.
    pub(super) fn validate_egress(&self) -> Result<(), ConfigError> {
        const KEY: &str = "no-masquerade-cidrs";
        for n in &self.no_masquerade_cidrs {
            if n.trunc() != *n {
                return Err(err(
                    KEY,
                    format!("{n} has host bits set; the network is {}", n.trunc()),
                ));
            }
            if n.prefix_len() == 0 {
                return Err(err(
                    KEY,
                    format!("{n} exempts every destination; set `masquerade = false` instead"),
                ));
            }
            if self.cluster_cidr.contains(n) {
                return Err(err(
                    KEY,
                    format!(
                        "{n} lies inside cluster-cidr {}, where nothing is masqueraded anyway",
                        self.cluster_cidr
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with(cidrs: &str) -> Result<(), ConfigError> {
        let text = format!(
            "node-name = \"a\"\naddress = \"198.18.0.1\"\nsubnet = \"10.244.1.0/24\"\n\
             no-masquerade-cidrs = [{cidrs}]"
        );
        Config::from_toml(&text)?.validate()
    }

    #[test]
    fn defaults_masquerade_and_clamp() {
        let c = Config::default();
        assert!(c.masquerade && c.mss_clamping && c.no_masquerade_cidrs.is_empty());
    }

    #[test]
    fn exemptions_are_checked() {
        with("\"192.0.2.0/24\", \"198.51.100.0/24\"").unwrap();
        for (bad, why) in [
            ("\"192.0.2.1/24\"", "host bits"),
            ("\"0.0.0.0/0\"", "masquerade = false"),
            ("\"10.244.9.0/24\"", "inside cluster-cidr"),
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.key, "no-masquerade-cidrs", "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let e = with("\"nowhere\"").unwrap_err();
        assert_eq!(e.key, "no-masquerade-cidrs", "{e}");
    }
}
