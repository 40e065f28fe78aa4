//! What the end-to-end tests share: where the binaries are, per-test names, a node's status,
//! waiting on a condition within one time budget ([`SETTLE`]), nftables and logs in a lab host,
//! packet captures ([`capture`]) and datagrams sent with a forged source ([`RawUdp`]).
//!
//! The tests build their own topologies through [`meshd_lab::Topology`], under a name prefix
//! unique to the test and the process ([`prefix`]); the topology's `Drop` removes it even when
//! the test fails. A test waits for what it needs with [`wait_for`] or [`wait_until`], never
//! with a sleep of a guessed length: a loaded machine then costs time, not a failure.

pub mod capture;

use std::fmt::Debug;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use meshd::status::Status;
use meshd_lab::netns::{in_netns, ip};
use meshd_lab::Topology;

/// How long a lab may take to reach a state a test waits for (joins, deaths, heals, a path
/// moving, a counter counting) on a busy 2-core machine. A deadline for a condition, not a
/// speed asserted: a condition that holds returns at once.
pub const SETTLE: Duration = Duration::from_secs(30);

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// The `meshd` binary next to this test binary, or `$MESHD_BIN`.
///
/// `cargo test -p meshd-tests` builds the `meshd` library for the tests, not the `meshd`
/// binary the labs run: that one would be whatever an earlier build left in `target/`, older
/// than the tree under test (and silently so). So, run by cargo and without `$MESHD_BIN`, the
/// first call builds the binaries the labs run (`meshd`, `meshd-cni`) with the same profile,
/// once per test process; a no-op when they are current.
pub fn meshd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHD_BIN") {
        return PathBuf::from(p);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = sibling("meshd");
            build_bins(&bin);
            bin
        })
        .clone()
}

/// Builds the labs' binaries into the directory of `bin` (`target/<profile>`), with the cargo
/// that runs this test; nothing when not run by cargo.
fn build_bins(bin: &std::path::Path) {
    let Some(cargo) = std::env::var_os("CARGO") else {
        eprintln!("not run by cargo: {} is used as it is", bin.display());
        return;
    };
    let profile = bin
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .map(|n| if n == "debug" { "dev" } else { n })
        .unwrap_or("dev")
        .to_string();
    let status = Command::new(cargo)
        .args(["build", "--locked", "--profile", &profile])
        .args(["-p", "meshd", "-p", "meshd-cni", "--bins"])
        .stdout(Stdio::null())
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "building meshd for the labs: {status:?}"
    );
}

fn sibling(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// A name prefix unique to this test in this process: `<tag><pid>x<n>`. Short, because it ends
/// up in namespace names, and distinct, so parallel tests never share a namespace.
pub fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Fails unless the tests can build namespaces (root, /dev/net/tun). Tests fail rather than
/// skip: CI runs as root and a silent skip would hide a broken setup.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (network namespaces, TUN devices)"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing"
    );
}

/// Host `i`'s status, or `None` while its meshd does not answer (starting, stopped).
pub fn try_status(t: &Topology, i: usize) -> Option<Status> {
    meshd::status::query(&t.hosts[i].dir.join("run")).ok()
}

/// Host `i`'s status; fails the test, naming the host, when its meshd does not answer.
pub fn status(t: &Topology, i: usize) -> Status {
    match meshd::status::query(&t.hosts[i].dir.join("run")) {
        Ok(s) => s,
        Err(e) => panic!("h{}: no status: {e:#}", i + 1),
    }
}

/// Calls `f` until it returns `Ok`, and returns that; fails with `what` and the last `Err`
/// (what was seen instead) once `within` has passed.
pub fn wait_within<T, E: Debug>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {last:#?}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_within`] [`SETTLE`].
pub fn wait_until<T, E: Debug>(what: &str, f: impl FnMut() -> Result<T, E>) -> T {
    wait_within(what, SETTLE, f)
}

/// Host `i`'s status once `cond` holds for it (fails with the last status after [`SETTLE`]).
pub fn wait_for(t: &Topology, i: usize, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
    wait_until(&format!("h{}: {what}", i + 1), || match try_status(t, i) {
        Some(s) if cond(&s) => Ok(s),
        other => Err(Box::new(other)),
    })
}

/// How many packets `peer` (or, with `None`, no peer) dropped for `reason`, per a status.
pub fn drops(s: &Status, peer: Option<&str>, reason: &str) -> u64 {
    let stats = match peer {
        Some(name) => &s.peers.iter().find(|p| p.name == name).unwrap().stats,
        None => &s.unattributed,
    };
    stats
        .drops
        .iter()
        .find(|(r, _)| r == reason)
        .map_or(0, |(_, n)| *n)
}

/// `nft ARGS` in namespace `ns`, fed `stdin`; fails the test unless nft succeeds. Its output.
pub fn nft(ns: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(stdin.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "nft {args:?} in {ns}: {}{stdin}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds the nftables `ruleset` (`nft -f -`) in namespace `ns`.
pub fn nft_load(ns: &str, ruleset: &str) {
    nft(ns, &["-f", "-"], ruleset);
}

/// Deletes nftables table `family name` in namespace `ns`.
pub fn nft_delete(ns: &str, family: &str, name: &str) {
    nft(ns, &["delete", "table", family, name], "");
}

/// Whether a TCP connection to port `port` is established in namespace `ns`.
pub fn tcp_established(ns: &str, port: u16) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .unwrap();
    assert!(out.status.success(), "ss in {ns}: {out:?}");
    !out.stdout.is_empty()
}

/// The pid of host `i`'s meshd (the lab keeps it in `meshd.pid`).
pub fn meshd_pid(t: &Topology, i: usize) -> i32 {
    std::fs::read_to_string(t.hosts[i].dir.join("meshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until process `pid` has exited (reaping it when it is our child).
pub fn wait_gone(pid: i32) {
    wait_until(&format!("meshd {pid} should exit"), || {
        // SAFETY: waitpid with WNOHANG on a pid; no memory is involved.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            Err("still running")
        } else {
            Ok(())
        }
    })
}

/// Host `i`'s meshd log so far.
pub fn log(t: &Topology, i: usize) -> String {
    let path = t.hosts[i].dir.join("meshd.log");
    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
}

/// Where host `i`'s meshd log ends now: what [`log_since`] reads from.
pub fn log_mark(t: &Topology, i: usize) -> usize {
    log(t, i).len()
}

/// The lines host `i`'s meshd logged since `mark` that contain every one of `words`.
pub fn log_since(t: &Topology, i: usize, mark: usize, words: &[&str]) -> Vec<String> {
    log(t, i)
        .get(mark..)
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Host `i`'s log once it contains `what` (fails with the log after [`SETTLE`]).
pub fn wait_for_log(t: &Topology, i: usize, what: &str) -> String {
    wait_until(&format!("h{}: `{what}` in its log", i + 1), || {
        let log = log(t, i);
        if log.contains(what) {
            Ok(log)
        } else {
            Err(log)
        }
    })
}

/// A namespace on the lab's switch at 198.18.0.200 that is no node of the cluster (the lab's
/// `Drop` removes it with the rest: its name has the lab's prefix).
pub fn add_stranger(t: &Topology) -> String {
    let sw = format!("{}-sw", t.spec.prefix);
    let x = format!("{}-x", t.spec.prefix);
    ip(&["netns", "add", &x]).unwrap();
    ip(&[
        "-n", &sw, "link", "add", "x", "type", "veth", "peer", "name", "u0", "netns", &x,
    ])
    .unwrap();
    ip(&["-n", &sw, "link", "set", "x", "master", "br0", "up"]).unwrap();
    ip(&["-n", &x, "addr", "add", "198.18.0.200/24", "dev", "u0"]).unwrap();
    ip(&["-n", &x, "link", "set", "u0", "up"]).unwrap();
    x
}

/// A raw IPv4 socket (`IPPROTO_RAW`: the test writes the IPv4 header) opened in a namespace,
/// for UDP datagrams with a source of the test's choosing: from a port a daemon holds (so a NAT
/// router maps it as it maps the daemon's own datagrams), or from an address the namespace does
/// not have (a forged inner source, routed into meshd's TUN device). Nothing is bound, so the
/// daemon's sockets lose nothing to it; it sends from whichever thread holds it.
pub struct RawUdp(OwnedFd);

impl RawUdp {
    /// Opens one in namespace `ns`.
    pub fn open(ns: &str) -> RawUdp {
        let fd = in_netns(ns, || {
            // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: a descriptor just opened and owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .unwrap();
        RawUdp(fd)
    }

    /// Sends `payload` as a UDP datagram from `from` to `to` (UDP checksum 0: none, as IPv4
    /// allows; the kernel fills in the IP header's checksum and identification).
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let packet = udp_packet(from, to, payload);
        // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        // SAFETY: sendto with a buffer and an address that outlive the call.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            packet.len() as isize,
            "raw send {from} → {to}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// An IPv4 packet carrying one UDP datagram.
pub fn udp_packet(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend([0x45, 0]);
    p.extend((total as u16).to_be_bytes());
    p.extend([0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend(from.ip().octets());
    p.extend(to.ip().octets());
    p.extend(from.port().to_be_bytes());
    p.extend(to.port().to_be_bytes());
    p.extend((udp_len as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}
