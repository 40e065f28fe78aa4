//! The sides of a relayed pair choose the relay with the lowest round trip through it, as the
//! relays measure it (issue 22), in the NAT lab: a1↔b1 have two relays, pub1 and pub2, and
//! pub1's path to both sides is made slower for real.
//!
//! The slower path is a userspace delay line in pub1's namespace: what pub1 itself sends to
//! router-a and router-b is routed into a TUN device whose reader (a thread of this test)
//! writes each packet back [`DELAY`] later; the packet comes in as from a neighbour and is
//! forwarded out of pub1's underlay. Nothing else is slowed (what pub1 receives, what it sends
//! to pub2 and c1). The relays are the responders of the NAT'd sides' handshakes, so each
//! measures its round trip to a side from its response to the side's first data: pub1's
//! includes the delay line, pub2's does not. Unmeasured, the relays would tie and pub1 (first
//! by name) would be chosen; measured, both sides move to pub2.
//!
//! ```text
//!   pub1 ─ dly0 (TUN: +DELAY) ─▶ u0 ─┬─ sw ─ router-a ── a1
//!   pub2 ────────────────────── u0 ─┘      router-b ── b1
//! ```

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshd::status::health;
use meshd_lab::netns::{in_netns, ip};
use meshd_lab::Topology;

use crate::gossip::wait_for_mesh;
use crate::nat::{nat_spec, reach, reach_of, A1, B1, PUB1, PUB2};
use crate::relay::pair_counted;
use crate::support::{require_root, status, wait_for, wait_until};

/// What the delay line adds to pub1's packets to the sides: below gossip's probe timeout
/// (100 ms), so the members' SWIM probes of each other are unaffected.
const DELAY: Duration = Duration::from_millis(40);

/// A delay line in a namespace: what the namespace itself sends to some addresses goes
/// through a TUN device and a thread pair that writes it back [`DELAY`] later. Stopped (its
/// device gone with its descriptor) when dropped.
struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    delayed: Arc<AtomicU64>,
}

fn sysctl(ns: &str, setting: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", setting])
        .output()
        .unwrap();
    assert!(out.status.success(), "sysctl {setting} in {ns}: {out:?}");
}

/// A TUN device `name` (no packet information header), opened in this thread's namespace.
fn open_tun(name: &str) -> OwnedFd {
    // SAFETY: open(2) with a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed ifreq is valid; name and flags are set below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF with an ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

impl DelayLine {
    /// Delays what namespace `ns` (whose underlay address is `src`) sends to `to`.
    fn start(ns: &str, src: Ipv4Addr, to: &[Ipv4Addr]) -> DelayLine {
        let fd = Arc::new(in_netns(ns, || open_tun("dly0")).unwrap());
        ip(&["-n", ns, "link", "set", "dly0", "up"]).unwrap();
        // Written back, a packet comes in on dly0 with this node's own source address: accept
        // it (no reverse-path check), and forward it out of u0 by the main table.
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.dly0.rp_filter=0",
            "net.ipv4.conf.dly0.accept_local=1",
        ] {
            sysctl(ns, s);
        }
        for addr in to {
            let (addr, src) = (format!("{addr}/32"), src.to_string());
            let route = [
                "route", "add", &addr, "dev", "dly0", "src", &src, "table", "100",
            ];
            ip(&[&["-n", ns][..], &route[..]].concat()).unwrap();
        }
        // Only what the namespace sends itself (what comes back in on dly0 is not).
        ip(&[
            "-n", ns, "rule", "add", "iif", "lo", "lookup", "100", "pref", "50",
        ])
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let delayed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let reader = {
            let (fd, stop) = (fd.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll(2) on one pollfd that outlives the call.
                    if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                        continue;
                    }
                    // SAFETY: read(2) into a buffer that outlives the call.
                    let n =
                        unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n > 0 {
                        let _ = tx.send((Instant::now() + DELAY, buf[..n as usize].to_vec()));
                    }
                }
            })
        };
        let writer = {
            let (stop, delayed) = (stop.clone(), delayed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    // SAFETY: write(2) from a buffer that outlives the call.
                    let n = unsafe {
                        libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len())
                    };
                    if n == packet.len() as isize {
                        delayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        DelayLine {
            stop,
            threads: vec![reader, writer],
            delayed,
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn the_sides_choose_the_relay_with_the_lower_measured_round_trip() {
    require_root();
    let t = Topology::up(nat_spec("rrtt", &[])).unwrap();
    let sides = [t.router_a_public(), Ipv4Addr::new(198, 18, 0, 102)];
    let line = DelayLine::start(&t.hosts[PUB1].ns, t.hosts[PUB1].underlay, &sides);
    // The lab forms before the line is in place: pub1 starts again behind it, so its sessions
    // with the sides (and the round trips their handshakes measure) are made through it.
    t.stop_meshd(PUB1).unwrap();
    t.start_meshd(PUB1).unwrap();
    wait_for_mesh(&t, &(0..t.hosts.len()).collect::<Vec<_>>());
    reach(&t, A1, B1);
    reach(&t, B1, A1);
    let (pub1, pub2) = (t.hosts[PUB1].name.clone(), t.hosts[PUB2].name.clone());
    // The delay line carried pub1's traffic to the sides, and each relay measured its round
    // trip to each side (pub1's through the line: at least its delay).
    // (pub1 sends to the sides only now and then once the pair is up: gossip, keepalives.)
    wait_until("pub1's traffic to the sides delayed", || {
        match line.delayed.load(Ordering::Relaxed) {
            0 => Err("nothing delayed yet"),
            n => Ok(n),
        }
    });
    for (relay, slow) in [(PUB1, true), (PUB2, false)] {
        for side in [A1, B1] {
            let s = wait_for(&t, relay, "a round trip to the side measured", |s| {
                let p = s.peers.iter().find(|p| p.name == t.hosts[side].name);
                p.and_then(health::rtt).is_some()
            });
            let p = s.peers.iter().find(|p| p.name == t.hosts[side].name);
            let rtt = p.and_then(health::rtt).unwrap();
            println!("{} → {}: {rtt:?}", t.hosts[relay].name, t.hosts[side].name);
            if slow {
                assert!(rtt >= DELAY, "pub1's path is not delayed: {rtt:?}");
            }
        }
    }
    // Both sides are on pub2 once both relays offer the pair (pub1 offers again after its
    // restart), and say why: pub1 is next, slower.
    for (side, other) in [(A1, B1), (B1, A1)] {
        let s = wait_for(&t, side, "relayed via pub2 with pub1 offered too", |s| {
            let r = reach_of(s, &t, other);
            r.route == format!("relayed via {pub2}")
                && r.relay.is_some_and(|why| why.contains("of 2 relay(s)"))
        });
        let why = reach_of(&s, &t, other).relay.unwrap_or_default();
        println!("{}: {why}", t.hosts[side].name);
        assert!(why.contains(&format!("next {pub1} at")), "{why}");
        assert!(!why.contains("unmeasured"), "{why}");
    }
    reach(&t, A1, B1);
    reach(&t, B1, A1);
    let (ab, ba) = pair_counted(&status(&t, PUB2), &t).expect("pub2 relays the pair");
    assert!(ab > 0 && ba > 0, "pub2 relayed {ab} and {ba} bytes");
}
