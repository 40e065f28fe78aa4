//! The `meshd-lab` command, which `meshd lab` runs: `up`, `check` and `down` for a local cluster
//! in network namespaces. The daemons it starts are the `meshd` binary next to this one (cargo
//! builds both into one directory), or `$MESHD_BIN`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use meshd::config::{Datapath, Encryption};
use meshd_lab::{topology, Formation, HostKind, LabPaths, Spec, Topology, DEFAULT_PREFIX};

#[derive(Parser)]
#[command(
    name = "meshd-lab",
    version,
    about = "A local cluster in network namespaces, for trying meshd out"
)]
struct Cli {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
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
        /// How many of the hosts (the last ones before the wireguard-go hosts) run boringtun's
        /// `boringtun-cli` instead of meshd (encrypted labs only): `$BORINGTUN_BIN`, or the
        /// one on the PATH (`cargo install boringtun-cli --locked`).
        #[arg(long, default_value_t = 0)]
        boringtun: usize,
        /// `wireguard` (keys and a cluster secret are made for the lab) or `none` (VXLAN).
        #[arg(long, default_value = "wireguard")]
        encryption: Encryption,
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Extra arguments for each `meshd run`, e.g. `--meshd-arg=--no-tun-offload`.
        #[arg(long = "meshd-arg", allow_hyphen_values = true)]
        meshd_args: Vec<String>,
        /// Write every host's peers and subnet into its config instead of forming the cluster
        /// by gossip from host 1 (implied with --kernel-vxlan, --wireguard-go or --boringtun
        /// hosts).
        #[arg(long = "static")]
        static_peers: bool,
        /// `auto` (kernel paths where they work, per peer), `kernel` or `userspace`: meshd's
        /// `datapath` on every meshd host but the --userspace-nodes.
        #[arg(long, default_value = "auto")]
        datapath: Datapath,
        /// How many meshd hosts (the last ones) run with `datapath = "userspace"`: a mixed
        /// cluster, so the paths can be seen side by side in `meshd status`.
        #[arg(long, default_value_t = 0)]
        userspace_nodes: usize,
        /// `host-gw = true` on the meshd hosts (cleartext labs).
        #[arg(long)]
        host_gw: bool,
        /// How many hosts (the last ones) sit behind a router on a second underlay segment.
        #[arg(long, default_value_t = 0)]
        routed: usize,
        /// The NAT lab: pub1 and pub2 public; a1 and a2 behind a masquerading router that keeps
        /// ports; b1 behind one that maps each destination anew (random-fully); c1 behind a
        /// 1:1 NAT. Six gossip hosts, encrypted, configured with nothing but the seed.
        #[arg(long)]
        nat: bool,
        /// With --nat: router-b keeps ports (plain masquerade), so a1↔b1 is hole punched.
        #[arg(long)]
        nat_b_keeps_ports: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up {
            nodes,
            pods,
            kernel_vxlan,
            wireguard_go,
            boringtun,
            encryption,
            prefix,
            meshd_args,
            static_peers,
            datapath,
            userspace_nodes,
            host_gw,
            routed,
            nat,
            nat_b_keeps_ports,
        } => {
            let nodes = if nat {
                if encryption != Encryption::Wireguard || static_peers || routed > 0 {
                    bail!("--nat builds an encrypted gossip lab of its own shape: no --static, --routed or --encryption none");
                }
                meshd_lab::NAT_ROLES.len()
            } else {
                nodes
            };
            if userspace_nodes > nodes || routed > nodes {
                bail!("--userspace-nodes and --routed must not exceed --nodes");
            }
            if !(2..=200).contains(&nodes) {
                bail!("--nodes must be between 2 and 200");
            }
            let others = kernel_vxlan + wireguard_go + boringtun;
            if others > nodes || !(1..=200).contains(&pods) {
                bail!("--kernel-vxlan plus --wireguard-go plus --boringtun must not exceed --nodes, and --pods must be 1 to 200");
            }
            let hosts = (0..nodes)
                .map(|i| {
                    if i >= nodes - kernel_vxlan {
                        HostKind::KernelVxlan
                    } else if i >= nodes - kernel_vxlan - wireguard_go {
                        HostKind::WireguardGo
                    } else if i >= nodes - others {
                        HostKind::Boringtun
                    } else {
                        HostKind::Meshd
                    }
                })
                .collect();
            let meshd_bin = meshd_bin()?;
            // Every lab needs it: meshd hosts run it, the others' recipes call `meshd psk` or
            // `meshd vtep-mac`.
            if !meshd_bin.is_file() {
                bail!(
                    "the meshd binary {} is missing: the lab runs it in its hosts; build it next \
                     to meshd-lab (`cargo build --release`), or name it with MESHD_BIN",
                    meshd_bin.display()
                );
            }
            let spec = Spec {
                prefix: prefix.clone(),
                hosts,
                pods_per_host: pods,
                meshd_args,
                meshd_bin,
                sandbox: Default::default(),
                underlay_mtu: 1500,
                encryption,
                formation: if static_peers || others > 0 {
                    Formation::Static
                } else {
                    Formation::Gossip
                },
                paths: LabPaths {
                    datapath,
                    userspace_nodes,
                    host_gw,
                    routed,
                    nat,
                    nat_b_keeps_ports,
                },
            };
            let mut t = Topology::up(spec.clone())?;
            t.cleanup_on_drop = false;
            for c in &t.neigh_changes {
                println!("raised {c} (the kernel's neighbour table, shared by every namespace; `meshd lab down` puts it back)");
            }
            meshd_lab::save(&spec)?;
            for h in &t.hosts {
                let pods: Vec<String> = h.pods.iter().map(|p| p.addr.to_string()).collect();
                let kind = if nat {
                    meshd_lab::topology::nat::role(h).to_string()
                } else {
                    format!("{:?}", h.kind)
                };
                println!(
                    "{:<12} {:<12} underlay {:<12} subnet {:<15} pods {}",
                    h.ns,
                    kind,
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
            let spec = meshd_lab::load(&prefix)?;
            let mut t = Topology::attach(spec);
            t.refresh_pod_addrs();
            meshd_lab::check(&t, megabytes)
        }
        LabCommand::Down { prefix } => {
            let restored = topology::down(&prefix)?;
            for c in &restored {
                println!("restored {c}");
            }
            let root = std::path::Path::new(topology::STATE_ROOT);
            if root.join(meshd_lab::neigh::ORIGINALS).exists() {
                println!(
                    "neighbour-table limits left raised: lab(s) {} still up",
                    meshd_lab::neigh::other_labs(root, &prefix).join(", ")
                );
            }
            println!("lab `{prefix}` removed");
            Ok(())
        }
    }
}

/// The `meshd` binary the lab's hosts run: `$MESHD_BIN`, or the one next to this binary.
fn meshd_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHD_BIN") {
        return Ok(PathBuf::from(p));
    }
    Ok(std::env::current_exe()
        .context("finding the meshd-lab binary")?
        .with_file_name("meshd"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn meshd_arguments_may_start_with_hyphens() {
        let argv = [
            "meshd lab",
            "up",
            "--meshd-arg=--no-tun-offload",
            "--meshd-arg",
            "--no-udp-gso",
        ];
        let meshd_args = match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(LabCommand::Up { meshd_args, .. }) => meshd_args,
            _ => Vec::new(),
        };
        assert_eq!(meshd_args, ["--no-tun-offload", "--no-udp-gso"]);
    }

    #[test]
    fn boringtun_hosts_are_counted_like_wireguard_go_hosts() {
        let argv = ["meshd lab", "up", "--boringtun", "2", "--wireguard-go", "1"];
        let counts = match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(LabCommand::Up {
                boringtun,
                wireguard_go,
                ..
            }) => Some((boringtun, wireguard_go)),
            _ => None,
        };
        assert_eq!(counts, Some((2, 1)));
    }
}
