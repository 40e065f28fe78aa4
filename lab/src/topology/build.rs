//! Building a lab: the switch (and, for routed hosts, a second segment and a router), each
//! host's namespace and underlay link, the keys and secrets, the hosts' daemons or kernel VXLAN
//! devices, and the pods.

use anyhow::{bail, Context, Result};

use super::daemon::{wait_for_lease, wait_for_socket};
use super::{Formation, Host, HostKind, Topology, CLUSTER_CIDR, STATE_ROOT, UNDERLAY_PREFIX};
use crate::netns::{ip, run};
use crate::{neigh, recipe, wireguard};
use meshd::config::Encryption;

impl Topology {
    pub(super) fn build(&mut self) -> Result<()> {
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
        if self.spec.paths.nat {
            self.nat_routers()?;
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
        if self.spec.paths.nat {
            ip(&["netns", "add", &h.ns])?;
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            self.nat_host_link(h)?;
            std::fs::create_dir_all(&h.dir)
                .with_context(|| format!("creating {}", h.dir.display()))?;
            return Ok(());
        }
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
}
