//! The CNI verbs: dispatch, VERSION and STATUS here; ADD, DEL/GC and CHECK in their modules.

mod add;
mod check;
mod del;

use serde_json::{json, Value};

use crate::config::{self, NetConf};
use crate::env::{Command, Env};
use crate::error::{Error, Result};
use crate::ipam::Store;
use crate::link::Nl;
use crate::liveness;
use crate::node::{self, NodeState};
use crate::version::Version;

/// Host-side veth names start with this; GC only ever deletes links named so.
pub const HOST_PREFIX: &str = "vmesh";
/// Host-side veths carry the alias `meshd-cni <network>`: GC of one network tells its veths from
/// another's by it, even for a veth whose record is lost.
pub const ALIAS_PREFIX: &str = "meshd-cni ";
/// The kernel keeps at most this many bytes of a link alias (`IFALIASZ` less the NUL).
const MAX_ALIAS: usize = 255;

/// Runs one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)` prints nothing.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = config::parse(stdin)?;
    match env.command {
        Command::Add => add::add(env, &conf).map(Some),
        Command::Del => del::del(env, &conf).map(|()| None),
        Command::Check => check::check(env, &conf).map(|()| None),
        Command::Gc => del::gc(&conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => Ok(Some(version(stdin))),
    }
}

/// VERSION: the versions we speak, answered in the caller's version when we know it.
fn version(stdin: &[u8]) -> Value {
    let asked = config::sniff_version(stdin).unwrap_or(Version::LATEST);
    json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": Version::ALL.map(|v| v.as_str()),
    })
}

/// STATUS: ready only when meshd answers, has a subnet, its bridge exists and an address is free.
///
/// Code 50 when no pod is attached yet or attached pods are unaffected (meshd never came up
/// here, no subnet yet, our state unusable, the subnet full); 51 when pods already attached may
/// have lost connectivity: meshd wrote its network but stopped answering (its routes and peers
/// are no longer kept), or the bridge is gone.
fn status(conf: &NetConf) -> Result<()> {
    conf.version
        .require("STATUS", conf.version.has_gc_and_status(), "1.1.0")?;
    let net = match node::read(&conf.runtime_dir) {
        Ok(NodeState::Ready(n)) => n,
        Ok(NodeState::Missing(p)) => {
            return Err(Error::NotAvailable(format!(
                "meshd is not running: {} does not exist",
                p.display()
            )))
        }
        Ok(NodeState::NoSubnet) => {
            return Err(Error::NotAvailable("meshd has no node subnet yet".into()))
        }
        Err(e) => {
            return Err(Error::NotAvailable(format!(
                "meshd's runtime file is unusable: {e}"
            )))
        }
    };
    liveness::probe(&conf.runtime_dir).map_err(|e| Error::Degraded(e.to_string()))?;
    let nl = Nl::new().map_err(|e| Error::NotAvailable(e.to_string()))?;
    if nl
        .link(&net.bridge)
        .map_err(|e| Error::NotAvailable(e.to_string()))?
        .is_none()
    {
        return Err(Error::Degraded(format!(
            "bridge {} does not exist",
            net.bridge
        )));
    }
    let store = Store::open(&conf.data_dir)
        .map_err(|e| Error::NotAvailable(format!("IPAM state is unusable: {e}")))?;
    let free = store
        .next_free(net.subnet, net.gateway)
        .map_err(|e| Error::NotAvailable(format!("IPAM state is unusable: {e}")))?;
    if free.is_none() {
        return Err(Error::NotAvailable(format!(
            "every address of {} is in use",
            net.subnet
        )));
    }
    Ok(())
}

/// The host-side veth name of an attachment: stable, so DEL and GC find it without state.
///
/// `vmesh` + 10 hex digits of FNV-1a over (network, container, ifname) = 15 bytes, the
/// kernel's limit. 40 bits make a collision among a node's pods vanishingly unlikely, and a
/// collision fails ADD cleanly (the kernel refuses the duplicate name) rather than mixing pods.
pub fn host_link_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [network, container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{HOST_PREFIX}{:010x}", h >> 24)
}

/// The alias of a host-side veth of `network`; none if the name is too long for an alias (GC
/// then finds that network's veths through their records alone).
pub fn host_link_alias(network: &str) -> Option<String> {
    let alias = format!("{ALIAS_PREFIX}{network}");
    (alias.len() <= MAX_ALIAS).then_some(alias)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn host_names_fit_and_differ() {
        let a = host_link_name("net", "c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_PREFIX));
        assert_eq!(a, host_link_name("net", "c1", "eth0"));
        assert_ne!(a, host_link_name("net", "c1", "eth1"));
        assert_ne!(a, host_link_name("net", "c1e", "th0"));
        assert_ne!(a, host_link_name("net2", "c1", "eth0"));
    }

    #[test]
    fn aliases_name_the_network_and_fit_the_kernel() {
        assert_eq!(host_link_alias("meshd").as_deref(), Some("meshd-cni meshd"));
        assert!(host_link_alias(&"n".repeat(245)).is_some());
        assert!(host_link_alias(&"n".repeat(246)).is_none());
    }

    #[test]
    fn version_answers_in_the_callers_version() {
        let v = version(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        assert_eq!(version(b"")["cniVersion"], "1.1.0");
    }
}
