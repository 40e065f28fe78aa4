//! The lab's WireGuard pieces: a cluster secret per lab (copied to a file per host), a node
//! key per host (files 0600
//! under the lab's state directory, made before any daemon starts so every config can name
//! its peers' public keys), and hosts that run a userspace WireGuard daemon instead of meshd:
//! Debian's `wireguard-go`, or boringtun's `boringtun-cli` (both serve the UAPI socket `wg`
//! speaks, so one recipe configures either).
//!
//! ```text
//!   <prefix>-hN (wireguard-go or boringtun-cli):
//!                                wgXXXXXXXX (TUN, 10.244.0.0/16 routed into it, MTU − 80)
//!                                meshbr0 10.244.N.1/24 ── veth ── <prefix>-hN-p1 ...
//!   peers = every other host: endpoint 198.18.0.M:51820, allowed-ips = its subnet,
//!           preshared key = what `meshd psk` prints for the pair
//! ```
//!
//! Once the daemon has made its device, the host is configured by docs/interop.md's recipe,
//! word for word ([`crate::recipe`]).

use anyhow::{bail, Context, Result};
use meshd_crypto::{ClusterSecret, PublicKey};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::netns;
use crate::recipe;
use crate::topology::{Host, Spec};
use meshd::config::NODE_KEY_FILE;

/// The lab's cluster secret file.
pub const SECRET_FILE: &str = "cluster.secret";
/// Where wireguard-go and boringtun-cli put their control sockets (one per interface, whatever
/// the namespace).
const WG_RUN_DIR: &str = "/var/run/wireguard";

/// Make the lab's cluster secret (once) and return it.
pub fn cluster_secret(lab_dir: &Path) -> Result<ClusterSecret> {
    let path = lab_dir.join(SECRET_FILE);
    if !path.exists() {
        ClusterSecret::generate()
            .write_new_file(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    ClusterSecret::read_file(&path).with_context(|| format!("reading {}", path.display()))
}

/// The host's own copy of the lab's cluster secret, `<host dir>/cluster.secret`, made once:
/// each node reads its own file, as on real machines, so a rotation can go node by node.
pub fn host_secret(h: &Host, secret: &ClusterSecret) -> Result<PathBuf> {
    let path = host_secret_path(h);
    if !path.exists() {
        std::fs::create_dir_all(&h.dir).with_context(|| format!("creating {}", h.dir.display()))?;
        secret
            .write_new_file(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Where [`host_secret`] puts a host's cluster secret file.
pub fn host_secret_path(h: &Host) -> PathBuf {
    h.dir.join(SECRET_FILE)
}

/// The host's node key file (created 0600 on first use) and its public key. meshd finds the
/// same file as `<state-dir>/node.key`.
pub fn node_key(h: &Host) -> Result<PublicKey> {
    let state = h.dir.join("state");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let (key, _) = meshd_crypto::load_or_create_private_key(&state.join(NODE_KEY_FILE))
        .with_context(|| format!("node key of {}", h.name))?;
    Ok(key.public_key())
}

/// Name of a wireguard-go or boringtun host's interface: unique per namespace (its control
/// socket lives in one directory shared by every namespace), and short enough for an interface
/// name.
pub fn ifname(ns: &str) -> String {
    let hash = ns.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("wg{hash:08x}")
}

/// A userspace WireGuard daemon the lab runs on a host instead of meshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// Debian's `wireguard-go`, found on the `PATH`.
    WireguardGo,
    /// boringtun's `boringtun-cli`: `$BORINGTUN_BIN`, or found on the `PATH`.
    Boringtun,
}

/// The variable naming the `boringtun-cli` binary the lab runs (else the one on the `PATH`).
pub const BORINGTUN_BIN_ENV: &str = "BORINGTUN_BIN";

impl Daemon {
    /// The program's name, which also names its log and pid files in the host's directory.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::WireguardGo => "wireguard-go",
            Daemon::Boringtun => "boringtun-cli",
        }
    }

    fn program(self) -> PathBuf {
        match self {
            Daemon::Boringtun => std::env::var_os(BORINGTUN_BIN_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| self.name().into()),
            Daemon::WireguardGo => self.name().into(),
        }
    }

    /// Arguments for a daemon in the foreground (the lab keeps its pid and kills it with the
    /// namespace). boringtun-cli keeps root: it would drop to the user `getlogin` names, and a
    /// daemon of its own session has none, so it would exit. It runs its default thread count
    /// (4, or `$WG_THREADS`).
    fn args(self, dev: &str) -> Vec<std::ffi::OsString> {
        let args: &[&str] = match self {
            Daemon::WireguardGo => &["-f"],
            Daemon::Boringtun => &["--foreground", "--disable-drop-privileges"],
        };
        let mut v: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        v.push(dev.into());
        v
    }

    fn install_hint(self) -> &'static str {
        match self {
            Daemon::WireguardGo => "apt-get install wireguard-go",
            Daemon::Boringtun => {
                "cargo install boringtun-cli --locked, then put it on the PATH or name it in $BORINGTUN_BIN"
            }
        }
    }

    fn log(self, h: &Host) -> PathBuf {
        h.dir.join(format!("{}.log", self.name()))
    }
}

/// Start `daemon` in `h`'s namespace, then configure it as docs/interop.md says: our key, port
/// 51820, and every other host as a peer with the preshared key `meshd psk` gives. Pods hang
/// off a bridge as on a kernel-VXLAN host.
pub fn start_daemon(
    daemon: Daemon,
    h: &Host,
    peers: &[&Host],
    spec: &Spec,
    cluster_cidr: &str,
) -> Result<()> {
    let ns = &h.ns;
    let dev = ifname(ns);
    let args = daemon.args(&dev);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let program = daemon.program();
    let pid = netns::spawn_daemon(ns, &program, &args, &daemon.log(h))
        .with_context(|| format!("starting {} ({})", program.display(), daemon.install_hint()))?;
    std::fs::write(
        h.dir.join(format!("{}.pid", daemon.name())),
        pid.to_string(),
    )?;
    wait_for_uapi(daemon, &dev, h)?;

    let key_file = h
        .dir
        .join("state")
        .join(NODE_KEY_FILE)
        .display()
        .to_string();
    let host = [
        ("DEV", dev.clone()),
        ("KEY_FILE", key_file.clone()),
        ("UNDERLAY_MTU", spec.underlay_mtu.to_string()),
        ("CLUSTER_CIDR", cluster_cidr.to_string()),
    ];
    recipe::run(ns, "wireguard-host", &host, &spec.meshd_bin)?;
    for p in peers {
        let theirs = p.public_key.context("peer without a key")?;
        let peer = [
            ("DEV", dev.clone()),
            ("KEY_FILE", key_file.clone()),
            ("SECRET_FILE", host_secret_path(h).display().to_string()),
            ("PEER_KEY", theirs.to_base64()),
            ("PEER_ADDRESS", p.underlay.to_string()),
            ("PEER_SUBNET", p.subnet.to_string()),
        ];
        recipe::run(ns, "wireguard-peer", &peer, &spec.meshd_bin)?;
    }
    Ok(())
}

fn wait_for_uapi(daemon: Daemon, dev: &str, h: &Host) -> Result<()> {
    let sock = uapi_socket(dev);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(daemon.log(h)).unwrap_or_default();
            bail!(
                "{} in {} did not create {} within 10 s; its log:\n{log}",
                daemon.name(),
                h.ns,
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn uapi_socket(dev: &str) -> PathBuf {
    Path::new(WG_RUN_DIR).join(format!("{dev}.sock"))
}

/// Remove the control socket a killed wireguard-go or boringtun-cli may have left for namespace
/// `ns`.
pub fn remove_leftovers(ns: &str) {
    let _ = std::fs::remove_file(uapi_socket(&ifname(ns)));
}
