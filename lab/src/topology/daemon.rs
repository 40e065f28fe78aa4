//! A meshd host's daemon: its config file, starting and stopping it, and waiting until it
//! answers and has its subnet.

use anyhow::{bail, Result};
use std::time::{Duration, Instant};

use super::{Formation, Host, HostKind, Topology, GOSSIP_PORT};
use crate::wireguard;
use meshd::config::{Datapath, Encryption};

impl Topology {
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

    pub(super) fn start_meshd_with(&self, h: &Host, cfg: &str) -> Result<()> {
        let path = h.dir.join("meshd.toml");
        std::fs::write(&path, cfg)?;
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["run".as_ref(), "--config".as_ref(), path.as_os_str()];
        args.extend(self.spec.meshd_args.iter().map(std::ffi::OsStr::new));
        let log = h.dir.join("meshd.log");
        let pid =
            crate::sandbox::spawn(&h.ns, &self.spec.sandbox, &self.spec.meshd_bin, &args, &log)?;
        std::fs::write(h.dir.join("meshd.pid"), pid.to_string())?;
        Ok(())
    }

    /// The config file a meshd host runs with. Public so tests can start a variant of it.
    pub fn meshd_config(&self, h: &Host) -> String {
        let gossip = self.spec.formation == Formation::Gossip;
        // The NAT lab configures nothing but the seed: each node finds its address.
        let address = if self.spec.paths.nat {
            String::new()
        } else {
            format!("address = \"{}\"\n", h.underlay)
        };
        let mut c = format!(
            "node-name = \"{}\"\n{address}encryption = \"{}\"\nunderlay-mtu = {}\nrun-dir = \"{}\"\nstate-dir = \"{}\"\nlog-level = \"info\"\n",
            h.name,
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

pub(super) fn wait_for_socket(h: &Host) -> Result<()> {
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
