//! The configuration's modes: one enum per key whose value is one of a few words
//! (`encryption`, `datapath`, `log-format`), each read from the file (serde) and from its flag
//! (`FromStr`, whose error lists the words).

use serde::{Deserialize, Serialize};

use super::WIREGUARD_OVERHEAD;
use crate::wire::VXLAN_OVERHEAD;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    #[default]
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

/// How log lines are written (`log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not a log format: text or json")),
        }
    }
}

/// What carries pod packets (`datapath`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl Datapath {
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::Auto => "auto",
            Datapath::Kernel => "kernel",
            Datapath::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for Datapath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Datapath::Auto),
            "kernel" => Ok(Datapath::Kernel),
            "userspace" => Ok(Datapath::Userspace),
            _ => Err(format!(
                "`{s}` is not a datapath: auto, kernel or userspace"
            )),
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
