//! The daemon's on-disk contract: the files it keeps under the run and state directories, their
//! names and formats, and how they are written (atomically, so a reader sees the old file or the
//! new one, never half of one). The CNI plugin and `meshd status` read these; nothing else here
//! depends on the rest of the daemon.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The control socket under the run directory (`meshd status` talks to it).
pub const SOCKET_NAME: &str = "meshd.sock";
/// What the CNI plugin reads under the run directory: [`NetworkFile`].
pub const NETWORK_FILE: &str = "network.json";
/// The persisted gossip subnet lease under the state directory.
pub const LEASE_FILE: &str = "lease.json";
/// The node's WireGuard private key under the state directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// What the CNI plugin needs to wire a pod; written atomically whenever it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkFile {
    pub node: String,
    pub subnet: String,
    pub gateway: String,
    pub bridge: String,
    pub mtu: u16,
    pub cluster_cidr: String,
    pub pid: u32,
}

/// Write `value` as JSON to `path` so readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
