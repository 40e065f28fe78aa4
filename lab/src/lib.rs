//! meshd-lab: a local meshd cluster in network namespaces, for a newcomer's first five minutes
//! (`meshd lab up|check|down`, which runs the `meshd-lab` binary) and for the end-to-end tests,
//! which build the same topology through [`Topology`].
//!
//! It is test and tryout tooling, not part of the daemon. It shells out to `ip`, `bridge`, `wg`,
//! `ethtool` and `sysctl` (a harness reads better as the commands an operator would type, and a
//! failure names the command); hosts without meshd are set up by docs/interop.md's recipes, run
//! word for word ([`recipe`]). It starts `meshd`, `meshd-cni`, `wireguard-go` and
//! `boringtun-cli` as processes of their own, and is never linked into the `meshd` binary. It
//! depends on the `meshd` library only for the contract the two share: config values and
//! constants (`meshd::config`), the runtime file names (`meshd::runfiles`), the status socket
//! (`meshd::status::query`), the pod gateway address (`meshd::host::gateway`) and the Internet
//! checksum its pings carry (`meshd::wire::checksum`). It makes nothing in the root namespace
//! but for the neighbour-table limits a large lab needs ([`neigh`]), and keeps its state under
//! `/run/meshd-lab/<prefix>/`.

pub mod neigh;
pub mod netns;
pub mod probe;
pub mod recipe;
pub mod sandbox;
pub mod topology;
pub mod wireguard;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub use topology::nat::NAT_ROLES;
pub use topology::{Formation, HostKind, LabPaths, Spec, Topology};

/// Prefix of everything `meshd lab` makes unless told otherwise.
pub const DEFAULT_PREFIX: &str = "meshlab";

/// Ping matrix plus one TCP transfer; fails if any pair fails.
pub fn check(t: &Topology, megabytes: u64) -> Result<()> {
    let pods: Vec<_> = t.pods().collect();
    let mut failures = 0;
    print!("{:<16}", "from \\ to");
    for (_, p) in &pods {
        print!(" {:>11}", p.addr);
    }
    println!();
    for (_, src) in &pods {
        print!("{:<16}", src.addr);
        for (_, dst) in &pods {
            let cell = match probe::ping(&src.ns, dst.addr, 5) {
                Ok(rtt) => format!("{:.2}ms", rtt.as_secs_f64() * 1e3),
                Err(_) => {
                    failures += 1;
                    "FAIL".into()
                }
            };
            print!(" {cell:>11}");
        }
        println!();
    }
    let (a, b) = (&t.hosts[0], &t.hosts[1]);
    let (src, dst) = (&a.pods[0], &b.pods[0]);
    let xfer = probe::tcp_transfer(&src.ns, &dst.ns, dst.addr, 5201, megabytes << 20);
    if failures > 0 {
        bail!(
            "{failures} of {} pod pairs cannot reach each other",
            pods.len() * pods.len()
        );
    }
    let x = xfer.context("TCP transfer")?;
    if !x.verified {
        bail!(
            "TCP transfer {} → {} arrived corrupted or short ({} bytes)",
            src.addr,
            dst.addr,
            x.bytes
        );
    }
    println!(
        "throughput: {:.2} Gbit/s (one TCP stream, {} → {}, {} MiB, SHA-256 verified)",
        x.gbit_per_s(),
        src.addr,
        dst.addr,
        megabytes
    );
    Ok(())
}

/// Record `spec` in the lab's state directory, so `check` (another process) can [`load`] it.
pub fn save(spec: &Spec) -> Result<()> {
    let v = serde_json::json!({
        "prefix": spec.prefix,
        "kernel_vxlan": spec.hosts.iter().map(|b| *b == HostKind::KernelVxlan).collect::<Vec<_>>(),
        "wireguard_go": spec.hosts.iter().map(|b| *b == HostKind::WireguardGo).collect::<Vec<_>>(),
        "boringtun": spec.hosts.iter().map(|b| *b == HostKind::Boringtun).collect::<Vec<_>>(),
        "encryption": spec.encryption.as_str(),
        "pods": spec.pods_per_host,
        "meshd_bin": spec.meshd_bin,
        "underlay_mtu": spec.underlay_mtu,
        "gossip": spec.formation == Formation::Gossip,
        "datapath": spec.paths.datapath.as_str(),
        "userspace_nodes": spec.paths.userspace_nodes,
        "host_gw": spec.paths.host_gw,
        "routed": spec.paths.routed,
        "nat": spec.paths.nat,
        "nat_b_keeps_ports": spec.paths.nat_b_keeps_ports,
    });
    std::fs::write(spec_file(&spec.prefix), serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

/// The spec [`save`] recorded for the lab named `prefix`.
pub fn load(prefix: &str) -> Result<Spec> {
    let path = spec_file(prefix);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no lab `{prefix}` here ({} missing); run `meshd lab up`",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let flags = |key: &str| -> Vec<bool> {
        v[key]
            .as_array()
            .map(|a| a.iter().map(|k| k.as_bool() == Some(true)).collect())
            .unwrap_or_default()
    };
    let (kernel, wg_go, bt) = (
        flags("kernel_vxlan"),
        flags("wireguard_go"),
        flags("boringtun"),
    );
    if kernel.is_empty() {
        bail!("lab.json: kernel_vxlan missing");
    }
    let hosts = (0..kernel.len())
        .map(|i| {
            if kernel[i] {
                HostKind::KernelVxlan
            } else if wg_go.get(i) == Some(&true) {
                HostKind::WireguardGo
            } else if bt.get(i) == Some(&true) {
                HostKind::Boringtun
            } else {
                HostKind::Meshd
            }
        })
        .collect();
    let encryption = v["encryption"]
        .as_str()
        .unwrap_or("none")
        .parse()
        .map_err(anyhow::Error::msg)?;
    Ok(Spec {
        prefix: prefix.into(),
        hosts,
        pods_per_host: v["pods"].as_u64().context("lab.json: pods")? as usize,
        meshd_args: Vec::new(),
        meshd_bin: PathBuf::from(v["meshd_bin"].as_str().unwrap_or("meshd")),
        sandbox: Default::default(),
        underlay_mtu: v["underlay_mtu"].as_u64().unwrap_or(1500) as u16,
        encryption,
        formation: if v["gossip"].as_bool() == Some(true) {
            Formation::Gossip
        } else {
            Formation::Static
        },
        paths: LabPaths {
            datapath: v["datapath"]
                .as_str()
                .unwrap_or("userspace")
                .parse()
                .map_err(anyhow::Error::msg)?,
            userspace_nodes: v["userspace_nodes"].as_u64().unwrap_or(0) as usize,
            host_gw: v["host_gw"].as_bool() == Some(true),
            routed: v["routed"].as_u64().unwrap_or(0) as usize,
            nat: v["nat"].as_bool() == Some(true),
            nat_b_keeps_ports: v["nat_b_keeps_ports"].as_bool() == Some(true),
        },
    })
}

fn spec_file(prefix: &str) -> PathBuf {
    Topology::state_dir(prefix).join("lab.json")
}
