//! `meshd lab`: a local cluster in network namespaces, for a newcomer's first five minutes and
//! for the end-to-end tests, which build the same topology through [`Topology`].

pub mod netns;
pub mod probe;
pub mod topology;
pub mod wireguard;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

use crate::config::Encryption;
pub use topology::{Backend, Membership, Spec, Topology};

/// Prefix of everything `meshd lab` makes unless told otherwise.
pub const DEFAULT_PREFIX: &str = "meshlab";

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build N hosts, run meshd in each, attach pods.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// How many of the hosts (the last ones) use a kernel VXLAN device instead of meshd
        /// (cleartext labs only).
        #[arg(long, default_value_t = 0)]
        kernel_vxlan: usize,
        /// How many of the hosts (the last ones) run Debian's wireguard-go instead of meshd
        /// (encrypted labs only).
        #[arg(long, default_value_t = 0)]
        wireguard_go: usize,
        /// `wireguard` (keys and a cluster secret are made for the lab) or `none` (VXLAN).
        #[arg(long, default_value = "wireguard")]
        encryption: Encryption,
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Extra arguments for each `meshd run`, e.g. `--meshd-arg=--no-tun-offload`.
        #[arg(long = "meshd-arg", allow_hyphen_values = true)]
        meshd_args: Vec<String>,
        /// Write every host's peers and subnet into its config instead of forming the cluster
        /// by gossip from host 1 (implied with --kernel-vxlan or --wireguard-go hosts).
        #[arg(long = "static")]
        static_peers: bool,
    },
    /// Ping every pod from every pod, then time a TCP transfer between two hosts.
    Check {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Megabytes for the TCP transfer.
        #[arg(long, default_value_t = 512)]
        megabytes: u64,
    },
    /// Remove the lab: daemons, namespaces, files. Safe after a crash of `up`.
    Down {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

pub fn main(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up {
            nodes,
            pods,
            kernel_vxlan,
            wireguard_go,
            encryption,
            prefix,
            meshd_args,
            static_peers,
        } => {
            if !(2..=200).contains(&nodes) {
                bail!("--nodes must be between 2 and 200");
            }
            if kernel_vxlan + wireguard_go > nodes || !(1..=200).contains(&pods) {
                bail!("--kernel-vxlan plus --wireguard-go must not exceed --nodes, and --pods must be 1 to 200");
            }
            let hosts = (0..nodes)
                .map(|i| {
                    if i >= nodes - kernel_vxlan {
                        Backend::KernelVxlan
                    } else if i >= nodes - kernel_vxlan - wireguard_go {
                        Backend::WireguardGo
                    } else {
                        Backend::Meshd
                    }
                })
                .collect();
            let spec = Spec {
                prefix: prefix.clone(),
                hosts,
                pods_per_host: pods,
                meshd_args,
                meshd_bin: std::env::current_exe().context("finding the meshd binary")?,
                underlay_mtu: 1500,
                encryption,
                membership: if static_peers || kernel_vxlan + wireguard_go > 0 {
                    Membership::Static
                } else {
                    Membership::Gossip
                },
            };
            let mut t = Topology::up(spec.clone())?;
            t.cleanup_on_drop = false;
            save(&spec)?;
            for h in &t.hosts {
                let pods: Vec<String> = h.pods.iter().map(|p| p.addr.to_string()).collect();
                println!(
                    "{:<12} {:<12} underlay {:<12} subnet {:<15} pods {}",
                    h.ns,
                    format!("{:?}", h.backend),
                    h.underlay,
                    h.subnet,
                    pods.join(" ")
                );
            }
            println!(
                "lab `{prefix}` is up: `meshd lab check` tests it, `meshd lab down` removes it"
            );
            println!(
                "status of a node: ip netns exec {} meshd status --run-dir {}",
                t.hosts[0].ns,
                t.hosts[0].dir.join("run").display()
            );
            Ok(())
        }
        LabCommand::Check { prefix, megabytes } => {
            let spec = load(&prefix)?;
            let mut t = Topology::attach(spec);
            t.refresh_pod_addrs();
            check(&t, megabytes)
        }
        LabCommand::Down { prefix } => {
            topology::down(&prefix);
            println!("lab `{prefix}` removed");
            Ok(())
        }
    }
}

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

fn spec_file(prefix: &str) -> PathBuf {
    Topology::state_dir(prefix).join("lab.json")
}

fn save(spec: &Spec) -> Result<()> {
    let v = serde_json::json!({
        "prefix": spec.prefix,
        "kernel_vxlan": spec.hosts.iter().map(|b| *b == Backend::KernelVxlan).collect::<Vec<_>>(),
        "wireguard_go": spec.hosts.iter().map(|b| *b == Backend::WireguardGo).collect::<Vec<_>>(),
        "encryption": spec.encryption.as_str(),
        "pods": spec.pods_per_host,
        "meshd_bin": spec.meshd_bin,
        "underlay_mtu": spec.underlay_mtu,
        "gossip": spec.membership == Membership::Gossip,
    });
    std::fs::write(spec_file(&spec.prefix), serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

fn load(prefix: &str) -> Result<Spec> {
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
    let (kernel, wg_go) = (flags("kernel_vxlan"), flags("wireguard_go"));
    if kernel.is_empty() {
        bail!("lab.json: kernel_vxlan missing");
    }
    let hosts = (0..kernel.len())
        .map(|i| {
            if kernel[i] {
                Backend::KernelVxlan
            } else if wg_go.get(i) == Some(&true) {
                Backend::WireguardGo
            } else {
                Backend::Meshd
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
        underlay_mtu: v["underlay_mtu"].as_u64().unwrap_or(1500) as u16,
        encryption,
        membership: if v["gossip"].as_bool() == Some(true) {
            Membership::Gossip
        } else {
            Membership::Static
        },
    })
}
