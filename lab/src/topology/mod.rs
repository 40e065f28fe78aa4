//! A cluster in network namespaces: a switch namespace holding the underlay bridge, one
//! namespace per host, and pod namespaces behind each host's `meshbr0`.
//!
//! ```text
//!             ┌──────────── <prefix>-sw ────────────┐
//!             │  br0 ── h1   h2   h3 (veth ends)     │   underlay 198.18.0.0/24
//!             └────────┬────┬────┬───────────────────┘
//!   <prefix>-h1 (u0 198.18.0.1)  <prefix>-h2 ...       meshd, or a kernel VXLAN device
//!     meshbr0 10.244.1.1/24 ── veth ── <prefix>-h1-p1 (eth0, address from meshd-cni)
//!                           └─ veth ── <prefix>-h1-p2
//! ```
//!
//! Nothing is made in the root namespace: on a machine running Docker the root namespace forwards
//! nothing, and the lab must work there too. The one root-namespace setting it touches is the
//! neighbour table's size, which only exists there ([`neigh`]). Dropping a `Topology` removes
//! all of it.

mod build;
mod daemon;
pub mod nat;
mod pods;

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::netns;
use crate::{neigh, wireguard};
use meshd::config::{Datapath, Encryption};

pub use daemon::wait_for_lease;

/// What runs on a lab host and carries its overlay traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A meshd daemon (userspace data path).
    Meshd,
    /// A Linux VXLAN device set up as flannel's vxlan backend does, with no meshd.
    KernelVxlan,
    /// Debian's `wireguard-go` configured with `wg`, with no meshd (encrypted labs only).
    WireguardGo,
    /// boringtun's userspace daemon `boringtun-cli` (`$BORINGTUN_BIN`, or on the `PATH`)
    /// configured with `wg`, with no meshd (encrypted labs only).
    Boringtun,
}

impl HostKind {
    /// The userspace WireGuard daemon a host of this kind runs instead of meshd, if any.
    pub fn wireguard_daemon(self) -> Option<wireguard::Daemon> {
        match self {
            HostKind::WireguardGo => Some(wireguard::Daemon::WireguardGo),
            HostKind::Boringtun => Some(wireguard::Daemon::Boringtun),
            HostKind::Meshd | HostKind::KernelVxlan => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    /// Prefix of every namespace name; also names the state directory.
    pub prefix: String,
    pub hosts: Vec<HostKind>,
    pub pods_per_host: usize,
    /// Extra arguments for every `meshd run` (tier switches, say).
    pub meshd_args: Vec<String>,
    /// The meshd binary to run in each host.
    pub meshd_bin: PathBuf,
    /// How meshd is confined (the shipped systemd unit's limits, say); by default it is not.
    pub sandbox: crate::sandbox::Sandbox,
    pub underlay_mtu: u16,
    /// What meshd hosts use between nodes; kernel-VXLAN hosts need `None`, wireguard-go and
    /// boringtun hosts `Wireguard`.
    pub encryption: Encryption,
    /// How meshd hosts find each other.
    pub formation: Formation,
    /// Which data paths meshd hosts may use, and the underlay's shape.
    pub paths: LabPaths,
}

/// The data paths of a lab's meshd hosts, and where its hosts sit on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPaths {
    /// `datapath` of every meshd host but the userspace ones.
    pub datapath: Datapath,
    /// How many meshd hosts (the last ones) run with `datapath = "userspace"` (mixed clusters).
    pub userspace_nodes: usize,
    /// `host-gw = true` on every meshd host that may use the kernel (cleartext labs).
    pub host_gw: bool,
    /// How many hosts (the last ones) sit on a second underlay segment, behind a router
    /// namespace: host-gw cannot reach them, VXLAN can.
    pub routed: usize,
    /// The NAT lab ([`nat`]): six hosts, two public, four behind three kinds of NAT router;
    /// every host configured with nothing but the seed.
    pub nat: bool,
    /// In the NAT lab, router-b keeps ports (plain masquerade) instead of mapping each
    /// destination anew: a1↔b1 can then be hole punched.
    pub nat_b_keeps_ports: bool,
}

impl Default for LabPaths {
    /// What the end-to-end tests of the userspace data path use: userspace everywhere, one
    /// segment.
    fn default() -> Self {
        LabPaths {
            datapath: Datapath::Userspace,
            userspace_nodes: 0,
            host_gw: false,
            routed: 0,
            nat: false,
            nat_b_keeps_ports: false,
        }
    }
}

/// How the lab's meshd hosts form the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formation {
    /// Every host's config lists every other host as a `[[peers]]` entry with a fixed subnet.
    Static,
    /// Host 1 is the gossip seed, the others join it, subnets are allocated by gossip.
    Gossip,
}

/// The lab's gossip port (meshd's default).
pub const GOSSIP_PORT: u16 = 7946;

#[derive(Debug, Clone)]
pub struct Host {
    pub index: usize,
    pub name: String,
    pub ns: String,
    pub kind: HostKind,
    pub underlay: Ipv4Addr,
    pub subnet: ipnet::Ipv4Net,
    pub dir: PathBuf,
    pub pods: Vec<Pod>,
    /// The host's WireGuard public key, once `up` has made its key (encrypted labs).
    pub public_key: Option<meshd_crypto::PublicKey>,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub addr: Ipv4Addr,
}

pub struct Topology {
    pub spec: Spec,
    pub hosts: Vec<Host>,
    /// Remove everything on drop (tests); `lab up` keeps it.
    pub cleanup_on_drop: bool,
    /// The neighbour-table limits `up` raised for the lab's size ([`neigh::size`]).
    pub neigh_changes: Vec<neigh::Change>,
}

pub const UNDERLAY_PREFIX: u8 = 24;
/// Where every lab keeps its state, one directory per prefix.
pub const STATE_ROOT: &str = "/run/meshd-lab";
const CLUSTER_CIDR: &str = "10.244.0.0/16";

impl Topology {
    /// Build the whole topology and start its daemons; on any failure, remove what was made.
    pub fn up(spec: Spec) -> Result<Topology> {
        // Checked before anything is made: the cleanup of a failed `up` removes every namespace
        // of the prefix, which here would be another lab's.
        if !netns::list(&format!("{}-", spec.prefix)).is_empty() {
            bail!(
                "namespaces named {}-* exist already; run `meshd lab down` first",
                spec.prefix
            );
        }
        let mut t = Topology {
            hosts: plan(&spec),
            spec,
            cleanup_on_drop: true,
            neigh_changes: Vec::new(),
        };
        t.build().inspect_err(|_| t.down())?;
        Ok(t)
    }

    /// The topology `spec` describes, without building or cleaning anything (for `lab check`).
    pub fn attach(spec: Spec) -> Topology {
        Topology {
            hosts: plan(&spec),
            spec,
            cleanup_on_drop: false,
            neigh_changes: Vec::new(),
        }
    }

    pub fn state_dir(prefix: &str) -> PathBuf {
        PathBuf::from(STATE_ROOT).join(prefix)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.spec.prefix)
    }

    /// Stop every daemon and remove every namespace and file of this topology.
    pub fn down(&self) {
        if let Err(e) = down(&self.spec.prefix) {
            eprintln!("meshd lab: {e:#}");
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = (&Host, &Pod)> {
        self.hosts
            .iter()
            .flat_map(|h| h.pods.iter().map(move |p| (h, p)))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.cleanup_on_drop {
            self.down();
        }
    }
}

/// Remove a topology by prefix, whatever state a crash left it in; once no other lab is left,
/// put back the neighbour-table limits the first one raised. Returns what that changed.
pub fn down(prefix: &str) -> Result<Vec<neigh::Change>> {
    // Pods and the switch first, hosts (with their daemons) last: order does not matter for
    // correctness, every namespace is killed and deleted on its own.
    for ns in netns::list(&format!("{prefix}-")) {
        netns::destroy(&ns);
        wireguard::remove_leftovers(&ns);
    }
    let _ = std::fs::remove_dir_all(Topology::state_dir(prefix));
    neigh::restore(std::path::Path::new(STATE_ROOT), prefix)
        .context("restoring the neighbour-table limits")
}

fn plan(spec: &Spec) -> Vec<Host> {
    let dir = Topology::state_dir(&spec.prefix);
    spec.hosts
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let n = i + 1;
            let name = format!("{}-h{n}", spec.prefix);
            let subnet =
                ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, n as u8, 0), 24).unwrap_or_default();
            Host {
                index: n,
                ns: name.clone(),
                name,
                kind,
                underlay: if spec.paths.nat {
                    nat::place(n).0
                } else {
                    Ipv4Addr::new(
                        198,
                        18,
                        u8::from(i >= spec.hosts.len().saturating_sub(spec.paths.routed)),
                        n as u8,
                    )
                },
                subnet,
                dir: dir.join(format!("h{n}")),
                pods: (0..spec.pods_per_host)
                    .map(|j| Pod {
                        ns: format!("{}-h{n}-p{}", spec.prefix, j + 1),
                        addr: Ipv4Addr::new(10, 244, n as u8, (j + 2) as u8),
                    })
                    .collect(),
                public_key: None,
            }
        })
        .collect()
}
