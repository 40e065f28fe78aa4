//! Pods: the bridge of a host without meshd, attaching a pod through `meshd-cni` or by hand,
//! and reading pod addresses back for `lab check`.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{Host, HostKind, Pod, Topology};
use crate::netns::{ip, run};
use meshd::config::Encryption;

impl Topology {
    /// Pod MTU on a host without meshd: the underlay MTU minus the overhead of what the host runs.
    fn overlay_mtu(&self, h: &Host) -> u16 {
        let overhead = match h.kind {
            HostKind::WireguardGo | HostKind::Boringtun => Encryption::Wireguard.overhead(),
            _ => Encryption::None.overhead(),
        };
        self.spec.underlay_mtu - overhead as u16
    }

    /// A host without meshd: the pods' bridge with the gateway address, and forwarding on.
    pub(super) fn pod_bridge(&self, h: &Host) -> Result<()> {
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

    pub(super) fn add_pod(&self, h: &Host, j: usize, p: &mut Pod) -> Result<()> {
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
}
