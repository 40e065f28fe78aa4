//! Traffic leaving the easy path, as `meshd status` shows it: egress masquerade and MSS
//! clamping, each on or off and why, with what its counters counted.

use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Masquerade and MSS clamping on this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressStatus {
    /// Pod traffic to destinations outside the cluster CIDR is masqueraded.
    pub masquerade: bool,
    /// Why masquerade is off (`masquerade = false`, no `nft`, the kernel refused the table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade_off: Option<String>,
    /// Destinations that see pod addresses (`no-masquerade-cidrs`).
    pub no_masquerade_cidrs: Vec<String>,
    /// Connections masqueraded since start.
    pub masqueraded: u64,
    /// TCP SYNs into the overlay are clamped to the MTU of the peer they go to.
    pub mss_clamping: bool,
    /// Why clamping is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss_clamping_off: Option<String>,
    /// Each MSS in use and how many peers get it.
    pub mss: Vec<MssStatus>,
    /// SYNs whose MSS was lowered, since start.
    pub clamped: u64,
    /// meshd's underlay datagrams and in-cluster traffic skip connection tracking.
    #[serde(default)]
    pub untracked: bool,
    /// Why they are tracked (masquerade off, another netfilter user, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untracked_off: Option<String>,
}

/// One clamp value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MssStatus {
    pub mss: u16,
    pub peers: usize,
}

impl EgressStatus {
    /// Its lines in `meshd status`.
    pub(crate) fn render(&self, o: &mut String) {
        if self.masquerade {
            let exempt = if self.no_masquerade_cidrs.is_empty() {
                String::new()
            } else {
                format!("; not to {}", self.no_masquerade_cidrs.join(", "))
            };
            let _ = writeln!(
                o,
                "egress      masquerade on ({} connections{exempt})",
                self.masqueraded
            );
        } else {
            let why = self.masquerade_off.as_deref().unwrap_or("off");
            let _ = writeln!(o, "egress      masquerade off ({why})");
        }
        if self.mss_clamping {
            let values: Vec<String> = self
                .mss
                .iter()
                .map(|m| format!("{} for {} peers", m.mss, m.peers))
                .collect();
            let values = if values.is_empty() {
                "no peers yet".to_string()
            } else {
                values.join(", ")
            };
            let _ = writeln!(
                o,
                "  mss clamp         on ({values}; {} SYNs clamped)",
                self.clamped
            );
        } else {
            let why = self.mss_clamping_off.as_deref().unwrap_or("off");
            let _ = writeln!(o, "  mss clamp         off ({why})");
        }
        if self.untracked {
            let _ = writeln!(
                o,
                "  conntrack         skipped for the underlay and in-cluster traffic (no other netfilter user)"
            );
        } else {
            let why = self.untracked_off.as_deref().unwrap_or("tracked");
            let _ = writeln!(o, "  conntrack         every packet tracked ({why})");
        }
    }
}
