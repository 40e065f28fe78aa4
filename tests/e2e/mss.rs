//! MSS clamping: a pod whose interface MTU is larger than the overlay's (set by hand) opens a
//! TCP connection to a pod on another node; the SYN that reaches the receiver carries the MSS
//! of the path to that peer (its MTU less 40), and the clamp's counter in meshd's table moved.
//! With `mss-clamping = false` the SYN arrives as the pod sent it.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd) ── meshbr0 ── p1 (eth0 MTU 9000: MSS 8960)
//!            └─ h2 (meshd) ── meshbr0 ── p1 (tcpdump on eth0: the SYN's MSS)
//! ```

use std::io::{BufRead, BufReader};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::egress::counter;
use crate::kernel_paths::{auto, spec};
use crate::support::{require_root, status, wait_until, SETTLE};
use meshd::config::{Datapath, Encryption};
use meshd_lab::netns::{in_netns, ip};
use meshd_lab::{LabPaths, Topology};

/// tcpdump in `ns` printing the first SYN (without ACK) to `port`; killed when dropped.
struct SynWatch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl SynWatch {
    /// Returns once tcpdump listens.
    fn start(ns: &str, port: u16) -> SynWatch {
        let filter = format!("tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and dst port {port}");
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", "eth0", "-nn", "-l", "-v",
            ])
            .args(["--immediate-mode", "-c", "1", &filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let (tx, lines) = mpsc::channel();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        for pipe in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        let w = SynWatch { child, lines };
        w.wait_for("listening on");
        w
    }

    /// The first line tcpdump prints that contains `what` (all its lines so far on failure).
    fn wait_for(&self, what: &str) -> String {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + SETTLE;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("tcpdump never printed `{what}`: {seen:#?}");
    }
}

impl Drop for SynWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The MSS of the SYN a connection from host `from`'s pod to host `to`'s pod arrives with.
fn syn_mss(t: &Topology, from: usize, to: usize, port: u16) -> u16 {
    let (a, b) = (&t.hosts[from].pods[0], &t.hosts[to].pods[0]);
    let addr = b.addr;
    let _listener = in_netns(&b.ns, move || {
        TcpListener::bind(SocketAddrV4::new(addr, port))
    })
    .unwrap()
    .unwrap();
    let watch = SynWatch::start(&b.ns, port);
    let from_ns = a.ns.clone();
    wait_until("the pod connects", || {
        in_netns(&from_ns, move || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(addr, port).into(),
                Duration::from_secs(2),
            )
        })
        .unwrap()
    });
    let line = watch.wait_for("mss ");
    let mss = line
        .split("mss ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    mss.unwrap_or_else(|| panic!("no MSS in {line}"))
}

fn clamped_lab(tag: &str, encryption: Encryption, paths: LabPaths) {
    require_root();
    let t = Topology::up(spec(tag, 2, encryption, paths)).unwrap();
    let h1 = &t.hosts[0];
    let mtu = status(&t, 0).mtu;
    let want = mtu - 40;
    ip(&["-n", &h1.pods[0].ns, "link", "set", "eth0", "mtu", "9000"]).unwrap();
    let name = format!("mss_{want}");
    let before = counter(&h1.ns, &name);
    assert_eq!(syn_mss(&t, 0, 1, 7400), want, "the SYN was not clamped");
    assert!(
        counter(&h1.ns, &name) > before,
        "the clamp's counter did not move"
    );
    let e = status(&t, 0).egress.unwrap();
    assert!(e.mss_clamping, "{e:?}");
    assert_eq!(
        e.mss.first().map(|m| (m.mss, m.peers)),
        Some((want, 1)),
        "{e:?}"
    );

    // Clamping off: the pod's own MSS gets through (what the test above would see if the
    // clamp did nothing).
    let config = format!("mss-clamping = false\n{}", t.meshd_config(h1));
    t.restart_meshd(0, &config).unwrap();
    assert_eq!(
        syn_mss(&t, 0, 1, 7401),
        8960,
        "clamped with mss-clamping = false"
    );
    let e = status(&t, 0).egress.unwrap();
    assert_eq!(e.mss_clamping_off.as_deref(), Some("mss-clamping = false"));
}

#[test]
fn syns_into_the_overlay_are_clamped_on_the_kernel_path() {
    clamped_lab("mssk", Encryption::None, auto(0, false, 0));
}

#[test]
fn syns_into_the_overlay_are_clamped_on_the_encrypted_userspace_path() {
    clamped_lab(
        "mssu",
        Encryption::Wireguard,
        LabPaths {
            datapath: Datapath::Userspace,
            ..auto(0, false, 0)
        },
    );
}
