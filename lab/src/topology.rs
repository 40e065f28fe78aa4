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

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{self, ip, run};
use crate::{neigh, recipe, wireguard};
use meshd::config::{Datapath, Encryption};

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

    fn build(&mut self) -> Result<()> {
        for h in &self.hosts {
            match (h.kind, self.spec.encryption) {
                (HostKind::KernelVxlan, Encryption::Wireguard) => {
                    bail!("a kernel-VXLAN host needs a cleartext lab (--encryption none)")
                }
                (HostKind::WireguardGo | HostKind::Boringtun, Encryption::None) => {
                    bail!(
                        "a {:?} host needs an encrypted lab (--encryption wireguard)",
                        h.kind
                    )
                }
                _ => {}
            }
        }
        self.neigh_changes = neigh::size(
            std::path::Path::new(STATE_ROOT),
            &self.spec.prefix,
            self.hosts.len(),
            self.spec.pods_per_host,
        )?;
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        if self.spec.paths.routed > 0 {
            self.router()?;
        }
        for h in self.hosts.clone() {
            self.build_host(&h)?;
        }
        if self.spec.formation == Formation::Gossip
            && self.hosts.iter().any(|h| h.kind != HostKind::Meshd)
        {
            bail!(
                "a gossip lab runs meshd on every host; use static peers with other kinds of host"
            );
        }
        let secret = match (self.spec.encryption, self.spec.formation) {
            (Encryption::Wireguard, _) => {
                for h in &mut self.hosts {
                    h.public_key = Some(wireguard::node_key(h)?);
                }
                Some(wireguard::cluster_secret(&Topology::state_dir(
                    &self.spec.prefix,
                ))?)
            }
            (Encryption::None, Formation::Gossip) => Some(wireguard::cluster_secret(
                &Topology::state_dir(&self.spec.prefix),
            )?),
            (Encryption::None, Formation::Static) => None,
        };
        if let Some(secret) = &secret {
            for h in self
                .hosts
                .iter()
                .filter(|h| h.kind != HostKind::KernelVxlan)
            {
                wireguard::host_secret(h, secret)?;
            }
        }
        for h in self.hosts.clone() {
            match h.kind {
                HostKind::Meshd => self.start_meshd_with(&h, &self.meshd_config(&h))?,
                HostKind::KernelVxlan => self.kernel_vxlan(&h)?,
                HostKind::WireguardGo | HostKind::Boringtun => {
                    let peers: Vec<&Host> =
                        self.hosts.iter().filter(|p| p.index != h.index).collect();
                    if secret.is_none() {
                        bail!("no cluster secret for the {:?} host", h.kind);
                    }
                    let daemon = h.kind.wireguard_daemon().context("no WireGuard daemon")?;
                    wireguard::start_daemon(daemon, &h, &peers, &self.spec, CLUSTER_CIDR)?;
                    self.pod_bridge(&h)?;
                }
            }
        }
        for i in 0..self.hosts.len() {
            let mut h = self.hosts[i].clone();
            if h.kind == HostKind::Meshd {
                wait_for_socket(&h)?;
                // meshd answers on its socket before it has set the host up and written
                // network.json, which the plugin attaching the pods below needs.
                let subnet = wait_for_lease(&h)?;
                if self.spec.formation == Formation::Gossip {
                    h.subnet = subnet;
                }
            }
            let host = h.clone();
            for (j, p) in h.pods.iter_mut().enumerate() {
                self.add_pod(&host, j, p)?;
            }
            self.hosts[i] = h;
        }
        Ok(())
    }

    /// A second segment (switch `sw2`) and a router namespace `rt` between the two, for the
    /// routed hosts: 198.18.0.254 on the first segment, 198.18.1.254 on the second.
    fn router(&self) -> Result<()> {
        let p = &self.spec.prefix;
        let (sw2, rt) = (format!("{p}-sw2"), format!("{p}-rt"));
        let mtu = self.spec.underlay_mtu.to_string();
        ip(&["netns", "add", &sw2])?;
        ip(&["-n", &sw2, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw2, "link", "set", "br0", "up"])?;
        ip(&["netns", "add", &rt])?;
        ip(&["-n", &rt, "link", "set", "lo", "up"])?;
        for (i, sw) in [self.switch(), sw2].iter().enumerate() {
            let (port, inside) = (format!("rt{i}"), format!("u{i}"));
            ip(&[
                "-n", sw, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
                &inside, "mtu", &mtu, "netns", &rt,
            ])?;
            ip(&["-n", sw, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("198.18.{i}.254/{UNDERLAY_PREFIX}");
            ip(&["-n", &rt, "addr", "add", &addr, "dev", &inside])?;
            ip(&["-n", &rt, "link", "set", &inside, "up"])?;
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                &rt,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
    }

    fn build_host(&self, h: &Host) -> Result<()> {
        let routed = h.underlay.octets()[2] == 1;
        let sw = if routed {
            format!("{}-sw2", self.spec.prefix)
        } else {
            self.switch()
        };
        let port = format!("h{}", h.index);
        let mtu = self.spec.underlay_mtu.to_string();
        ip(&["netns", "add", &h.ns])?;
        ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &sw, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "u0",
            "mtu", &mtu, "netns", &h.ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{}/{UNDERLAY_PREFIX}", h.underlay),
            "dev",
            "u0",
        ])?;
        ip(&["-n", &h.ns, "link", "set", "u0", "up"])?;
        if self.spec.paths.routed > 0 {
            let (other, via) = if routed {
                ("198.18.0.0/24", "198.18.1.254")
            } else {
                ("198.18.1.0/24", "198.18.0.254")
            };
            ip(&["-n", &h.ns, "route", "add", other, "via", via])?;
        }
        std::fs::create_dir_all(&h.dir).with_context(|| format!("creating {}", h.dir.display()))?;
        Ok(())
    }

    /// Stop host `i`'s meshd, and start it again with `config` (a variant of
    /// [`Topology::meshd_config`], say); returns once its status socket answers.
    pub fn restart_meshd(&self, i: usize, config: &str) -> Result<()> {
        self.stop_meshd(i)?;
        let h = &self.hosts[i];
        self.start_meshd_with(h, config)?;
        wait_for_socket(h)
    }

    /// Start host `i`'s meshd again with its usual config (after [`Topology::stop_meshd`]);
    /// returns once its status socket answers.
    pub fn start_meshd(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        self.start_meshd_with(h, &self.meshd_config(h))?;
        wait_for_socket(h)
    }

    /// Stop host `i`'s meshd (SIGTERM) and wait until it has exited.
    pub fn stop_meshd(&self, i: usize) -> Result<()> {
        let h = &self.hosts[i];
        let pid_file = h.dir.join("meshd.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        // SAFETY: kill(2) on the pid of the meshd this topology started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: waitpid with WNOHANG on a pid; no memory is involved.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
            if Instant::now() > deadline {
                bail!("meshd {pid} in {} did not stop", h.ns);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(h.dir.join("run").join(meshd::runfiles::SOCKET_NAME));
        Ok(())
    }

    fn start_meshd_with(&self, h: &Host, cfg: &str) -> Result<()> {
        let path = h.dir.join("meshd.toml");
        std::fs::write(&path, cfg)?;
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["run".as_ref(), "--config".as_ref(), path.as_os_str()];
        args.extend(self.spec.meshd_args.iter().map(std::ffi::OsStr::new));
        let pid =
            netns::spawn_daemon(&h.ns, &self.spec.meshd_bin, &args, &h.dir.join("meshd.log"))?;
        std::fs::write(h.dir.join("meshd.pid"), pid.to_string())?;
        Ok(())
    }

    /// The config file a meshd host runs with. Public so tests can start a variant of it.
    pub fn meshd_config(&self, h: &Host) -> String {
        let gossip = self.spec.formation == Formation::Gossip;
        let mut c = format!(
            "node-name = \"{}\"\naddress = \"{}\"\nencryption = \"{}\"\nunderlay-mtu = {}\nrun-dir = \"{}\"\nstate-dir = \"{}\"\nlog-level = \"info\"\n",
            h.name,
            h.underlay,
            self.spec.encryption.as_str(),
            self.spec.underlay_mtu,
            h.dir.join("run").display(),
            h.dir.join("state").display(),
        );
        let meshd_hosts: Vec<usize> = self
            .hosts
            .iter()
            .filter(|p| p.kind == HostKind::Meshd)
            .map(|p| p.index)
            .collect();
        let userspace_from = meshd_hosts
            .len()
            .saturating_sub(self.spec.paths.userspace_nodes);
        let forced = meshd_hosts
            .iter()
            .position(|i| *i == h.index)
            .is_some_and(|pos| pos >= userspace_from);
        let datapath = if forced {
            Datapath::Userspace
        } else {
            self.spec.paths.datapath
        };
        c.push_str(&format!("datapath = \"{}\"\n", datapath.as_str()));
        if self.spec.paths.host_gw && datapath != Datapath::Userspace {
            c.push_str("host-gw = true\n");
        }
        if gossip {
            // Subnets come from gossip; host 1 is the seed everyone else joins.
            if let Some(seed) = self.hosts.first().filter(|s| s.index != h.index) {
                c.push_str(&format!("seeds = [\"{}:{GOSSIP_PORT}\"]\n", seed.underlay));
            }
        } else {
            c.push_str(&format!("subnet = \"{}\"\n", h.subnet));
        }
        if self.spec.encryption == Encryption::Wireguard || gossip {
            c.push_str(&format!(
                "cluster-secret-file = \"{}\"\n",
                wireguard::host_secret_path(h).display()
            ));
        }
        if gossip {
            c.push_str(&format!(
                "\n[gossip]\nenabled = true\nport = {GOSSIP_PORT}\n"
            ));
            return c;
        }
        for p in self.hosts.iter().filter(|p| p.index != h.index) {
            c.push_str(&format!(
                "\n[[peers]]\nname = \"{}\"\naddress = \"{}\"\nsubnet = \"{}\"\n",
                p.name, p.underlay, p.subnet
            ));
            if let Some(k) = p.public_key {
                c.push_str(&format!("public-key = \"{k}\"\n"));
            }
        }
        c
    }

    /// flannel's vxlan backend, by hand, as docs/interop.md's recipe gives it (run word for word,
    /// see [`crate::recipe`]): device MAC = this node's VTEP MAC, the subnet's network address
    /// on the device, and per peer a static FDB entry, a neighbour and an onlink route.
    fn kernel_vxlan(&self, h: &Host) -> Result<()> {
        let bin = &self.spec.meshd_bin;
        let host = [
            ("NAME", h.name.clone()),
            ("ADDRESS", h.underlay.to_string()),
            ("SUBNET", h.subnet.to_string()),
            ("UNDERLAY_MTU", self.spec.underlay_mtu.to_string()),
        ];
        recipe::run(&h.ns, "kernel-vxlan-host", &host, bin)?;
        // The lab's underlay is veth, so with a userspace node among the peers the inner
        // checksums must be filled in here (see the recipe). An all-kernel lab (the benchmark's
        // baseline) keeps the offloads a real deployment would have.
        if self.hosts.iter().any(|p| p.kind != HostKind::KernelVxlan) {
            recipe::run(&h.ns, "kernel-vxlan-veth", &[], bin)?;
        }
        self.pod_bridge(h)?;
        for p in self.hosts.iter().filter(|p| p.index != h.index) {
            let peer = [
                ("PEER_NAME", p.name.clone()),
                ("PEER_ADDRESS", p.underlay.to_string()),
                ("PEER_SUBNET", p.subnet.to_string()),
            ];
            recipe::run(&h.ns, "kernel-vxlan-peer", &peer, bin)?;
        }
        Ok(())
    }

    /// Pod MTU on a host without meshd: the underlay MTU minus the overhead of what the host runs.
    fn overlay_mtu(&self, h: &Host) -> u16 {
        let overhead = match h.kind {
            HostKind::WireguardGo | HostKind::Boringtun => Encryption::Wireguard.overhead(),
            _ => Encryption::None.overhead(),
        };
        self.spec.underlay_mtu - overhead as u16
    }

    /// A host without meshd: the pods' bridge with the gateway address, and forwarding on.
    fn pod_bridge(&self, h: &Host) -> Result<()> {
        let ns = &h.ns;
        let mtu = self.overlay_mtu(h).to_string();
        ip(&[
            "-n", ns, "link", "add", "meshbr0", "mtu", &mtu, "type", "bridge",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!(
                "{}/{}",
                meshd::host::gateway(h.subnet),
                h.subnet.prefix_len()
            ),
            "dev",
            "meshbr0",
        ])?;
        ip(&["-n", ns, "link", "set", "meshbr0", "up"])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
    }

    fn add_pod(&self, h: &Host, j: usize, p: &mut Pod) -> Result<()> {
        ip(&["netns", "add", &p.ns])?;
        ip(&["-n", &p.ns, "link", "set", "lo", "up"])?;
        match h.kind {
            HostKind::Meshd => {
                p.addr = self.cni_add(h, p)?;
                Ok(())
            }
            HostKind::KernelVxlan | HostKind::WireguardGo | HostKind::Boringtun => {
                self.manual_pod(h, j, p)
            }
        }
    }

    /// Attach a pod as a container runtime would: `meshd-cni` with the CNI environment and a
    /// network configuration on stdin, in the host's namespace. Returns the pod's address.
    fn cni_add(&self, h: &Host, p: &Pod) -> Result<Ipv4Addr> {
        let bin = self.cni_bin();
        if !bin.is_file() {
            bail!(
                "the CNI plugin {} is missing: the lab attaches pods through it; build it next to \
                 meshd (`cargo build --release`, or `cargo build -p meshd-cni` for a debug lab)",
                bin.display()
            );
        }
        let conf = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "meshlab",
            "type": "meshd-cni",
            "runtimeDir": h.dir.join("run"),
            "dataDir": h.dir.join("cni"),
        });
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(&bin)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &p.ns)
            .env("CNI_NETNS", format!("/run/netns/{}", p.ns))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_PATH",
                bin.parent().unwrap_or(std::path::Path::new("/")),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running the CNI plugin {}", bin.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if !out.status.success() {
            bail!(
                "meshd-cni ADD for {} failed: {} {}",
                p.ns,
                result,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let addr = result["ips"][0]["address"].as_str().unwrap_or("");
        addr.split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("meshd-cni ADD for {} returned no address: {result}", p.ns))
    }

    /// The plugin binary next to the meshd binary (cargo builds both into one directory).
    fn cni_bin(&self) -> PathBuf {
        self.spec.meshd_bin.with_file_name("meshd-cni")
    }

    /// A kernel-VXLAN host has no meshd and so no CNI runtime file: wire its pods by hand.
    fn manual_pod(&self, h: &Host, j: usize, p: &Pod) -> Result<()> {
        let host_if = format!("v{}", j + 1);
        let mtu = self.overlay_mtu(h).to_string();
        ip(&[
            "-n", &h.ns, "link", "add", &host_if, "mtu", &mtu, "type", "veth", "peer", "name",
            "eth0", "mtu", &mtu, "netns", &p.ns,
        ])?;
        ip(&[
            "-n", &h.ns, "link", "set", &host_if, "master", "meshbr0", "up",
        ])?;
        ip(&[
            "-n",
            &p.ns,
            "addr",
            "add",
            &format!("{}/{}", p.addr, h.subnet.prefix_len()),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &p.ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &p.ns,
            "route",
            "add",
            "default",
            "via",
            &meshd::host::gateway(h.subnet).to_string(),
        ])?;
        Ok(())
    }

    /// Read each pod's address from its namespace (the CNI plugin chose it), for `lab check`.
    pub fn refresh_pod_addrs(&mut self) {
        for h in &mut self.hosts {
            for p in &mut h.pods {
                let out = Command::new("ip")
                    .args(["-n", &p.ns, "-4", "-o", "addr", "show", "dev", "eth0"])
                    .output();
                let text = out
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if let Some(a) = text.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
                    if let Some(addr) = a.split('/').next().and_then(|a| a.parse().ok()) {
                        p.addr = addr;
                    }
                }
            }
        }
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
                underlay: Ipv4Addr::new(
                    198,
                    18,
                    u8::from(i >= spec.hosts.len().saturating_sub(spec.paths.routed)),
                    n as u8,
                ),
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

/// The subnet of host `h` (configured, or the one gossip leased), once its `network.json`
/// names it.
pub fn wait_for_lease(h: &Host) -> Result<ipnet::Ipv4Net> {
    let path = h.dir.join("run").join(meshd::runfiles::NETWORK_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let file: Option<meshd::runfiles::NetworkFile> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(net) = file.and_then(|f| f.subnet.parse().ok()) {
            return Ok(net);
        }
        if Instant::now() > deadline {
            bail!("meshd in {} got no subnet lease within 20 s", h.ns);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_socket(h: &Host) -> Result<()> {
    let run_dir = h.dir.join("run");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if meshd::status::query(&run_dir).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(h.dir.join("meshd.log")).unwrap_or_default();
            bail!(
                "meshd in {} did not come up within 15 s; its log:\n{log}",
                h.ns
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
