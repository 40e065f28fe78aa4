//! A path MTU that drops under a transfer (issue 23): the lab of `pmtud.rs` with the router's
//! link at 1500 at first, a TCP stream from h2's pod to h1's flowing, then the link lowered to
//! 1280 (ICMP from the router still dropped: a black hole that opens mid-transfer). The stream
//! must flow again, every byte intact; how long that took is printed, not asserted.
//!
//! ```text
//!   h1 ── sw ── rt ──[u1: 1500 → 1280; ICMP out: drop]── sw2 ── h2
//!   p1 ◀══════════════════ TCP stream ═════════════════════════ p1
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pmtud::{black_hole, icmp_dropped, peer, pod_traffic, set_link_mtu, wait_discovered};
use crate::support::{require_root, wait_until, SETTLE};
use meshd::config::Encryption;
use meshd_lab::netns::in_netns;
use meshd_lab::LabPaths;

/// A TCP stream of a known byte sequence, checked as it arrives.
pub(crate) struct Stream {
    pub(crate) received: Arc<AtomicU64>,
    /// Every byte so far was the one sent.
    pub(crate) intact: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// xorshift: the stream's bytes, cheap to make on both ends and not compressible.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

impl Stream {
    /// From namespace `from` to a listener at `to:port` in namespace `to_ns`, until dropped.
    pub(crate) fn start(from: &str, to_ns: &str, to: Ipv4Addr, port: u16) -> Stream {
        let listener = in_netns(to_ns, move || TcpListener::bind((to, port)))
            .unwrap()
            .unwrap();
        let (received, intact, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, ok) = (received.clone(), intact.clone());
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let (mut buf, mut want) = (vec![0u8; 1 << 16], Vec::with_capacity(8));
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if want.is_empty() {
                        want.extend_from_slice(&next(&mut x).to_le_bytes());
                        want.reverse();
                    }
                    if want.pop() != Some(b) {
                        ok.store(false, Ordering::Relaxed);
                    }
                }
                r.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let addr = SocketAddr::from((to, port));
        let mut s = in_netns(from, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .unwrap()
        .unwrap();
        let halt = stop.clone();
        std::thread::spawn(move || {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut block = vec![0u8; 1 << 16];
            while !halt.load(Ordering::Relaxed) {
                for c in block.chunks_mut(8) {
                    c.copy_from_slice(&next(&mut x).to_le_bytes());
                }
                if s.write_all(&block).is_err() {
                    return;
                }
            }
        });
        Stream {
            received,
            intact,
            stop,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_path_mtu_that_drops_mid_transfer_recovers() {
    require_root();
    let paths = LabPaths {
        routed: 1,
        ..Default::default()
    };
    let t = black_hole("pmd", Encryption::None, paths, 1500);
    wait_until("h2 confirms the pod MTU for h1", || {
        pod_traffic(&t, 1, 0);
        match peer(&t, 1, 0) {
            Some(p) if p.mtu_source == "probed" && p.mtu == 1450 && !p.mtu_searching => Ok(()),
            other => Err(other.map(|p| (p.mtu, p.mtu_source))),
        }
    });
    let (src, dst) = (&t.hosts[1].pods[0], &t.hosts[0].pods[0]);
    let stream = Stream::start(&src.ns, &dst.ns, dst.addr, 5203);
    wait_until("the stream flows", || match stream.bytes() {
        n if n >= 8 << 20 => Ok(()),
        n => Err(n),
    });
    let icmp_before = icmp_dropped(&t);
    set_link_mtu(&t, 1280);
    let (dropped_at, at_drop) = (Instant::now(), stream.bytes());
    // The fault happened: the router now refuses full-size packets (and its ICMP is dropped).
    wait_until(
        "the router drops its fragmentation-needed",
        || match icmp_dropped(&t) {
            n if n > icmp_before => Ok(()),
            n => Err(n),
        },
    );
    let flowing =
        crate::support::wait_within("the stream flows again", SETTLE, || match stream.bytes() {
            n if n >= at_drop + (2 << 20) => Ok(dropped_at.elapsed()),
            n => Err(n),
        });
    let p = wait_discovered(&t, 1, 0);
    assert_eq!(p.mtu, 1230, "{p:#?}");
    let more = stream.bytes();
    wait_until("and keeps flowing", || match stream.bytes() {
        n if n >= more + (16 << 20) => Ok(()),
        n => Err(n),
    });
    assert!(
        stream.intact.load(Ordering::Relaxed),
        "every byte arrived as sent"
    );
    eprintln!(
        "MTU 1450 → 1230 under a transfer: flowing again {:?} after the drop ({} MiB before it)",
        flowing,
        at_drop >> 20
    );
}
