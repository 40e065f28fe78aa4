//! The CNI spec versions this plugin speaks, and what each allows.

use crate::error::{Error, Result};

/// A spec version we support. Ordered: later versions compare greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// The newest version, used where the caller gave none we could read.
    pub const LATEST: Version = Version::V1_1_0;

    /// Every supported version, oldest first, as VERSION reports them.
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// Parses a `cniVersion` string; `None` if unsupported.
    pub fn parse(s: &str) -> Option<Version> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Parses a `cniVersion` string, or says which versions we do speak.
    pub fn negotiate(s: Option<&str>) -> Result<Version> {
        let asked = s.unwrap_or("");
        Self::parse(asked).ok_or_else(|| Error::IncompatibleVersion {
            asked: asked.to_owned(),
            why: format!(
                "set \"cniVersion\" to one of {}",
                Self::ALL.map(|v| v.as_str()).join(", ")
            ),
        })
    }

    /// The version string as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK appeared in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS appeared in 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Before 1.0.0 each IP config carried `"version": "4"|"6"`.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interface `mtu` in results appeared in 1.1.0.
    pub fn interface_mtu(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Refuses a verb the configured version does not have.
    pub fn require(self, verb: &str, ok: bool, since: &str) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::IncompatibleVersion {
                asked: self.as_str().to_owned(),
                why: format!("{verb} needs cniVersion {since} or later"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()), Some(v));
        }
        for bad in ["", "0.1.0", "0.2.0", "1.2.0", "1.0", "v1.0.0", "1.0.0 "] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn negotiation_error_lists_what_we_speak() {
        let e = Version::negotiate(Some("9.9.9")).unwrap_err();
        assert_eq!(e.code(), 1);
        let j = e.to_json(None);
        assert!(j["details"].as_str().unwrap().contains("1.1.0"));
        assert_eq!(Version::negotiate(None).unwrap_err().code(), 1);
    }

    #[test]
    fn features_by_version() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status());
        assert!(Version::V1_1_0.has_gc_and_status());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
    }
}
