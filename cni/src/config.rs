//! The network configuration the runtime passes on stdin.
//!
//! Accepted keys: `cniVersion`, `name`, `type`, `runtimeDir` (default `/run/meshd`), `dataDir`
//! (default `/var/lib/meshd-cni`), `dns` (copied into the result), `prevResult`,
//! `cni.dev/valid-attachments` (GC). `ipMasq: true` and an `ipam` plugin are refused with code 2:
//! masquerade is meshd's job and addresses come from the built-in IPAM. Every other key
//! (`args`, `capabilities`, `runtimeConfig`, ...) is ignored, as the spec lets plugins do.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::env::validate_name;
use crate::error::{Error, Result};
use crate::version::Version;

/// Where meshd writes `network.json` unless the config says otherwise.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/meshd";
/// Where the IPAM state lives unless the config says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/meshd-cni";
/// Refuse stdin larger than this: a config with a prevResult is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A validated plugin configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub runtime_dir: PathBuf,
    pub data_dir: PathBuf,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    runtime_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    ip_masq: Option<bool>,
    ipam: Option<Value>,
    dns: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// Reads just enough of stdin to answer in the caller's version, even if the rest is broken.
pub fn sniff_version(bytes: &[u8]) -> Option<Version> {
    #[derive(Deserialize)]
    struct Sniff {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let s: Sniff = serde_json::from_slice(bytes).ok()?;
    Version::parse(s.cni_version.as_deref()?)
}

/// Parses and validates a network configuration.
pub fn parse(bytes: &[u8]) -> Result<NetConf> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(Error::InvalidConfig(format!(
            "configuration is {} bytes, more than the {MAX_CONFIG_BYTES} this plugin reads",
            bytes.len()
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        what: "network configuration".into(),
        source,
    })?;
    if !value.is_object() {
        return Err(Error::InvalidConfig(
            "network configuration must be a JSON object".into(),
        ));
    }
    let raw: Raw = serde_json::from_value(value).map_err(|source| Error::Decode {
        what: "network configuration".into(),
        source,
    })?;
    let version = Version::negotiate(raw.cni_version.as_deref())?;
    let name = raw
        .name
        .ok_or_else(|| Error::InvalidConfig("\"name\" is missing; set the network name".into()))?;
    validate_name(&name).map_err(|why| Error::InvalidConfig(format!("\"name\" {why}")))?;
    if raw.ip_masq == Some(true) {
        return Err(Error::UnsupportedField {
            field: "ipMasq".into(),
            value: "true".into(),
            why: "meshd masquerades pod traffic leaving the cluster itself (its `masquerade` key, on by default); remove ipMasq".into(),
        });
    }
    if let Some(ipam) = &raw.ipam {
        let empty = ipam.as_object().is_some_and(|o| o.is_empty());
        if !empty {
            return Err(Error::UnsupportedField {
                field: "ipam".into(),
                value: ipam.to_string(),
                why: "meshd-cni allocates from the node subnet itself; remove the ipam key".into(),
            });
        }
    }
    if let Some(dns) = &raw.dns {
        if !dns.is_object() {
            return Err(Error::InvalidConfig("\"dns\" must be an object".into()));
        }
    }
    if let Some(prev) = &raw.prev_result {
        if !prev.is_object() {
            return Err(Error::InvalidConfig(
                "\"prevResult\" must be an object".into(),
            ));
        }
    }
    let runtime_dir = absolute(
        "runtimeDir",
        raw.runtime_dir.unwrap_or(DEFAULT_RUNTIME_DIR.into()),
    )?;
    let data_dir = absolute("dataDir", raw.data_dir.unwrap_or(DEFAULT_DATA_DIR.into()))?;
    Ok(NetConf {
        version,
        name,
        runtime_dir,
        data_dir,
        dns: raw.dns,
        prev_result: raw.prev_result,
        valid_attachments: raw.valid_attachments,
    })
}

/// A path that must be absolute, as given in the configuration under `key`.
pub fn absolute(key: &str, path: PathBuf) -> Result<PathBuf> {
    if path.is_absolute()
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        Ok(path)
    } else {
        Err(Error::InvalidConfig(format!(
            "{key} must be an absolute path without '..', got {}",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn code(s: &str) -> u32 {
        parse(s.as_bytes()).unwrap_err().code()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(br#"{"cniVersion":"1.0.0","name":"mesh","type":"meshd-cni"}"#).unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.runtime_dir, PathBuf::from(DEFAULT_RUNTIME_DIR));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn unknown_top_level_keys_are_ignored() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"m","type":"meshd-cni","capabilities":{"portMappings":true},
                "runtimeConfig":{"x":1},"args":{"labels":{}},"ipam":{}}"#,
        )
        .unwrap();
        assert_eq!(c.name, "m");
    }

    #[test]
    fn malformed_configs_get_the_right_code() {
        assert_eq!(code("{"), 6);
        assert_eq!(code(""), 6);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":5}"#), 6);
        assert_eq!(code("[]"), 7);
        assert_eq!(code(r#"{"cniVersion":"0.2.0","name":"m"}"#), 1);
        assert_eq!(code(r#"{"name":"m"}"#), 1);
        assert_eq!(code(r#"{"cniVersion":"1.0.0"}"#), 7);
        assert_eq!(code(r#"{"cniVersion":"1.0.0","name":"../etc"}"#), 7);
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","dataDir":"rel"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","runtimeDir":"/a/../b"}"#),
            7
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","ipMasq":true}"#),
            2
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","ipam":{"type":"host-local"}}"#),
            2
        );
        assert_eq!(
            code(r#"{"cniVersion":"1.0.0","name":"m","prevResult":[]}"#),
            7
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(absolute("dataDir", "rel/x".into()).is_err());
        assert!(absolute("dataDir", "/a/../b".into()).is_err());
        assert!(absolute("dataDir", "/var/lib/x".into()).is_ok());
    }

    #[test]
    fn valid_attachments_parse() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"m","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }

    #[test]
    fn sniffing_survives_broken_configs() {
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0","name":7}"#),
            Some(Version::V0_4_0)
        );
        assert_eq!(sniff_version(b"{"), None);
    }
}
