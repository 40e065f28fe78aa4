//! The kernel paths hold what the userspace path holds (issue 21): kernel-received VXLAN is
//! checked against the sending peer's subnet (and without `nft` to check it, no kernel VXLAN
//! device receives), and forged probe replies do not keep a broken path up. (That the shipped
//! systemd unit lets meshd probe: `unit_limits.rs`.)
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, auto: kernel VXLAN) ── p1       the node under test
//!            ├─ h2 (meshd, auto) ── p1    forges VXLAN from its underlay address, and
//!            │                            echo replies from its bridge address
//!            ├─ h3 (meshd, userspace) ── p1   forges VXLAN too: h1's device receives from
//!            │                                 every peer, whatever path it sends them by
//!            └─ x (198.18.0.200, no member)  forges VXLAN from an address no peer has
//! ```

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::kernel_paths::{auto, break_kernel_path, spec, wait_path};
use crate::support::{
    add_stranger, drops, meshd_bin, meshd_pid, nft, nft_load, require_root, status, wait_for,
    wait_until, SETTLE,
};
use meshd::config::Encryption;
use meshd::host::gateway;
use meshd::wire::checksum::checksum;
use meshd_lab::netns::in_netns;
use meshd_lab::sandbox::Sandbox;
use meshd_lab::Topology;

const VNI: u32 = 1;
const POD_PORT: u16 = 7777;

#[test]
fn kernel_received_vxlan_with_a_foreign_inner_source_is_dropped_and_counted() {
    require_root();
    let t = Topology::up(spec("ktsrc", 3, Encryption::None, auto(1, false, 0))).unwrap();
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    // h3 receives in userspace, so h1 sends to it there (a kernel path would cost more on
    // this veth underlay); h1's device still receives what h3's underlay address sends.
    wait_path(&t, 0, 2, |p| {
        p.path == "userspace"
            && p.reason
                .as_deref()
                .is_some_and(|r| r.contains("receives in userspace"))
    });
    // What h1 refused from unknown sources while it did not know its peers yet was counted
    // when it learnt of them (the table's counters are read before each rewrite).
    let s = status(&t, 0);
    let unknown_before = drops(&s, None, "unknown-source");
    let h1_mac = mac(&s.vtep_mac);
    let pod = t.hosts[0].pods[0].clone();
    let listener = in_netns(&pod.ns, move || UdpSocket::bind((pod.addr, POD_PORT)))
        .unwrap()
        .unwrap();
    listener.set_read_timeout(Some(SETTLE)).unwrap();
    let h1 = t.hosts[0].underlay;
    let stranger = add_stranger(&t);

    // From the stranger: a packet from an address of h2's subnet. From h2's and h3's underlay
    // addresses: one from the peer's own pod (delivered: the datagrams are well formed), one
    // from an address of another node's subnet, and a last genuine one: the pod has had all
    // it can get from that sender once that one is in.
    let foreign = |i: usize| Ipv4Addr::from(u32::from(t.hosts[i].subnet.network()) + 77);
    let (p2, p3) = (t.hosts[1].pods[0].addr, t.hosts[2].pods[0].addr);
    let sends = [
        (stranger.clone(), vec![(p2, "stranger")]),
        (
            t.hosts[1].ns.clone(),
            vec![(p2, "h2-own"), (foreign(2), "h2-forged"), (p2, "h2-end")],
        ),
        (
            t.hosts[2].ns.clone(),
            vec![(p3, "h3-own"), (foreign(1), "h3-forged"), (p3, "h3-end")],
        ),
    ];
    let dst = t.hosts[0].pods[0].addr;
    for (ns, packets) in &sends {
        let datagrams: Vec<Vec<u8>> = packets
            .iter()
            .map(|(src, what)| vxlan_datagram(h1_mac, *src, dst, what.as_bytes()))
            .collect();
        in_netns(ns, move || -> std::io::Result<()> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            for d in &datagrams {
                s.send_to(d, (h1, 8472))?;
            }
            Ok(())
        })
        .unwrap()
        .unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|g| g == "h2-end") && got.iter().any(|g| g == "h3-end")) {
        let (n, _) = listener
            .recv_from(&mut buf)
            .expect("the pod should receive the genuine datagrams");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got.sort();
    assert_eq!(
        got,
        ["h2-end", "h2-own", "h3-end", "h3-own"],
        "what the pod received"
    );
    // The forged ones reached h1 and were counted against the peer that sent them (the
    // stranger's as from an unknown source).
    let (h2, h3) = (t.hosts[1].name.clone(), t.hosts[2].name.clone());
    let s = wait_for(&t, 0, "the forged datagrams counted", |s| {
        drops(s, Some(&h2), "spoofed-source") == 1
            && drops(s, Some(&h3), "spoofed-source") == 1
            && drops(s, None, "unknown-source") > unknown_before
    });
    assert_eq!(drops(&s, None, "unknown-source"), unknown_before + 1);
    let k = s.kernel.unwrap();
    assert!(
        k.vxlan
            .contains("inner sources checked: nft table inet meshd"),
        "{k:?}"
    );
}

#[test]
fn forged_probe_replies_do_not_keep_a_broken_kernel_path_up() {
    require_root();
    let t = Topology::up(spec("ktprb", 2, Encryption::None, auto(0, false, 0))).unwrap();
    wait_path(&t, 0, 1, |p| p.path == "kernel-vxlan");
    // A count, in h1, of the forged replies that reach it (they carry "FORG" after the 8
    // bytes where a probe's token is).
    let (from, to) = (gateway(t.hosts[1].subnet), gateway(t.hosts[0].subnet));
    nft_load(
        &t.hosts[0].ns,
        &format!(
            "table inet forged {{\n chain in {{\n type filter hook input priority -300;\n \
             ip saddr {from} ip daddr {to} icmp type echo-reply @th,128,32 0x464f5247 counter\n }}\n}}\n"
        ),
    );
    let forger = Forger::start(&t, from, to);
    wait_until("forged replies reach h1", || {
        let n = forged_count(&t.hosts[0].ns);
        (n > 0).then_some(n).ok_or(n)
    });
    break_kernel_path(&t.hosts[0].ns, t.hosts[1].underlay, "");
    let at_break = forged_count(&t.hosts[0].ns);
    let (p, took) = wait_path(&t, 0, 1, |p| p.path == "userspace");
    let why = p.reason.clone().unwrap_or_default();
    assert!(
        why.starts_with("probes at 1450 B lost on kernel-vxlan since "),
        "{why}"
    );
    let received = forged_count(&t.hosts[0].ns) - at_break;
    let sent = forger.stop();
    eprintln!("demoted {took:?} after the break; {sent} forged replies sent, {received} reached h1 while the path was broken");
    assert!(received > 0, "no forged reply reached h1 during the break");
}

#[test]
fn without_nft_no_kernel_vxlan_device_receives_unchecked_and_the_status_says_why() {
    require_root();
    // meshd runs with a PATH that has no `nft` (it is in /usr/sbin).
    let path = "PATH=/usr/bin:/bin";
    let found = Command::new("env")
        .args([path, "sh", "-c", "command -v nft"])
        .output()
        .unwrap();
    assert!(!found.status.success(), "nft is reachable with {path}");
    let mut s = spec("ktnft", 2, Encryption::None, auto(0, false, 0));
    s.sandbox = Sandbox {
        wrapper: vec!["env".into(), path.into()],
        address_families: None,
    };
    let t = Topology::up(s).unwrap();
    let why = "the inner sources it would receive cannot be checked: the nft program was not \
               found (install nftables)";
    let k = status(&t, 0).kernel.unwrap();
    assert_eq!(k.vxlan, format!("unavailable ({why})"));
    // Nor masquerade, nor MSS clamping: off, and the status and the log say why.
    let e = status(&t, 0).egress.unwrap();
    assert!(!e.masquerade && !e.mss_clamping, "{e:?}");
    let off = e.masquerade_off.unwrap_or_default();
    assert!(off.contains("the nft program was not found"), "{off}");
    assert!(crate::support::log(&t, 0).contains("cannot write meshd's nftables table"));
    let (p, _) = wait_path(&t, 0, 1, |_| true);
    assert_eq!(p.path, "userspace", "{p:?}");
    assert_eq!(
        p.reason.as_deref(),
        Some(format!("kernel vxlan unavailable ({why})").as_str())
    );
    // No device: meshd's own socket receives, and checks, every datagram.
    let links = Command::new("ip")
        .args(["-n", &t.hosts[0].ns, "-o", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("meshvx0"));
    let bad = crate::cluster::unreachable_pairs(&t);
    assert!(bad.is_empty(), "unreachable pod pairs: {bad:#?}");
    // With the kernel path mandatory, meshd refuses to start, saying why.
    let cfg = t
        .meshd_config(&t.hosts[0])
        .replace("datapath = \"auto\"", "datapath = \"kernel\"");
    t.stop_meshd(0).unwrap();
    let file = t.hosts[0].dir.join("kernel.toml");
    std::fs::write(&file, cfg).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.hosts[0].ns, "env", path])
        .arg(meshd_bin())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "datapath = \"kernel\": the kernel would not make the VXLAN device `meshvx0`: {why}"
        )),
        "{stderr}"
    );
}

/// Sends echo replies from h2's bridge address to h1's, with h1's meshd's echo identifier and
/// the sequence numbers its probes are at (guessed from its status), but a guessed token.
struct Forger {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Forger {
    fn start(t: &Topology, from: Ipv4Addr, to: Ipv4Addr) -> Forger {
        let socket = in_netns(&t.hosts[1].ns, move || icmp_socket(from))
            .unwrap()
            .unwrap();
        let ident = meshd_pid(t, 0) as u16;
        let run_dir = t.hosts[0].dir.join("run");
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut guess = 0u64;
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(s) = meshd::status::query(&run_dir) {
                    guess = s
                        .peers
                        .iter()
                        .filter_map(|p| p.path.as_ref())
                        .flat_map(|p| p.probes.iter().map(|x| x.sent))
                        .sum();
                }
                for seq in guess.saturating_sub(3)..guess + 20 {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let reply = echo_reply(ident, seq as u16, n.to_be_bytes());
                    if send_icmp(&socket, to, &reply) {
                        sent2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Forger { stop, sent, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// Forged replies counted by h1's `inet forged` table.
fn forged_count(ns: &str) -> u64 {
    let out = nft(ns, &["list", "table", "inet", "forged"], "");
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// A raw ICMP socket bound to `src` (the current namespace's).
fn icmp_socket(src: Ipv4Addr) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2); the result is checked before it is owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = sockaddr(src);
    // SAFETY: bind with an address that lives across the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn send_icmp(fd: &OwnedFd, to: Ipv4Addr, msg: &[u8]) -> bool {
    let addr = sockaddr(to);
    // SAFETY: sendto with a buffer and address that live across the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    n >= 0
}

fn sockaddr(a: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_addr.s_addr = u32::from(a).to_be();
    sin
}

/// An ICMP echo reply: identifier, sequence, a guessed token, then "FORG".
fn echo_reply(ident: u16, seq: u16, token: [u8; 8]) -> Vec<u8> {
    let mut m = vec![0u8; 8 + 36];
    m[4..6].copy_from_slice(&ident.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..16].copy_from_slice(&token);
    m[16..20].copy_from_slice(b"FORG");
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// A VXLAN datagram (VNI 1) carrying an Ethernet frame to `dst_mac` with a UDP packet from
/// `src` to `dst`:POD_PORT.
fn vxlan_datagram(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(VNI << 8).to_be_bytes());
    d.extend_from_slice(&dst_mac);
    d.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    d.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = libc::IPPROTO_UDP as u8;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    d.extend_from_slice(&ip);
    d.extend_from_slice(&40000u16.to_be_bytes());
    d.extend_from_slice(&POD_PORT.to_be_bytes());
    d.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
    d.extend_from_slice(payload);
    d
}

fn mac(text: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    m
}
