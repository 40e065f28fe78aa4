//! The metrics listener under bad input (issue 24): pods cannot reach it by default; garbage,
//! huge headers and a thousand idle connections from another host are refused within the
//! listener's bounds, while pods keep pinging each other and the daemon's memory stays put.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, metrics on loopback, then on 198.18.0.1:9472) ── meshbr0 ── p1
//!            └─ h2 (meshd; the attacker's namespace too)                  ── meshbr0 ── p1
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use meshd_lab::netns::in_netns;
use meshd_lab::probe::Pinger;
use meshd_lab::{HostKind, Topology};

use crate::cluster;
use crate::observe::{http_get, scrape, scrape_at, value, METRICS_PORT};
use crate::support::{meshd_pid, require_root, wait_for_log, wait_until};

/// Connections opened and left idle.
const IDLE: usize = 1000;
/// Garbage requests, and requests with huge heads, each.
const BAD: usize = 100;

/// The daemon's resident memory, kB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Connect, send `bytes`, read what comes back (errors are the point: ignored).
fn poke(addr: SocketAddr, bytes: &[u8]) {
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(bytes);
        let _ = s.read_to_end(&mut Vec::new());
    }
}

#[test]
fn bad_input_on_the_listener_leaves_the_data_path_and_memory_alone() {
    require_root();
    let mut spec = cluster::spec("lbad", vec![HostKind::Meshd; 2], &[]);
    spec.pods_per_host = 1;
    let t = Topology::up(spec).unwrap();
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let (p1, p2) = (&h1.pods[0], &h2.pods[0]);

    // By default the listener is on loopback: it answers there, and neither a pod (at its
    // gateway or the node's address) nor another node reaches it.
    assert!(scrape(&t, 0).contains("meshd_build_info"));
    let gateway = std::net::Ipv4Addr::from(u32::from(h1.subnet.network()) + 1);
    let gateway = SocketAddr::new(gateway.into(), METRICS_PORT);
    let underlay = SocketAddr::new(h1.underlay.into(), METRICS_PORT);
    for (ns, addr) in [(&p1.ns, gateway), (&p1.ns, underlay), (&h2.ns, underlay)] {
        let r = http_get(ns, addr, "/metrics");
        let refused = matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        assert!(refused, "{ns} → {addr}: {r:?}");
    }

    // Configured on the underlay (by SIGHUP), the other node reaches it.
    let config = format!("metrics-address = \"{underlay}\"\n{}", t.meshd_config(h1));
    std::fs::write(h1.dir.join("meshd.toml"), config).unwrap();
    let pid = meshd_pid(&t, 0);
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for_log(&t, 0, "serving /metrics");
    wait_until("h1's metrics from h2", || {
        http_get(&h2.ns, underlay, "/metrics").map_err(|e| e.to_string())
    });
    let rss_before = rss_kb(pid);
    let pinger = Pinger::start(&p2.ns, p1.addr, Duration::from_millis(20)).unwrap();

    // The attack, from h2's namespace: garbage, huge heads, then a thousand idle connections
    // held open while the daemon's memory is read.
    let idle = in_netns(&h2.ns, move || {
        raise_fd_limit(IDLE as u64 + 256);
        for i in 0..BAD {
            let mut junk: Vec<u8> = (0..512).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
            junk.extend_from_slice(b"\r\n\r\n");
            poke(underlay, &junk);
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while huge.len() < 64 << 10 {
            huge.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef0123456789\r\n");
        }
        for _ in 0..BAD {
            poke(underlay, &huge);
        }
        let idle: Vec<TcpStream> = (0..IDLE)
            .filter_map(|_| TcpStream::connect_timeout(&underlay, Duration::from_secs(5)).ok())
            .collect();
        idle
    })
    .unwrap();
    assert_eq!(
        idle.len(),
        IDLE,
        "every idle connection was accepted by the kernel"
    );
    let rss_held = rss_kb(pid);
    drop(idle);

    // The listener saw it all (once the idle connections' slots are free again).
    let at = |text: &str, outcome: &str| {
        value(
            text,
            &format!("meshd_http_requests_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let text = wait_until("the listener's counters to show the attack", || {
        let text = scrape_at(&t, 0, underlay);
        let seen = at(&text, "busy") + at(&text, "timed-out");
        (seen >= IDLE as f64).then_some(text.clone()).ok_or(text)
    });
    assert!(at(&text, "bad-request") >= BAD as f64, "{text}");
    assert!(at(&text, "too-large") >= BAD as f64, "{text}");
    assert!(
        at(&text, "busy") > 0.0,
        "connections past the limit were turned away: {text}"
    );

    // The data path carried on, and memory stayed bounded (generously: 32 MiB).
    let pings = pinger.stop().unwrap();
    assert!(pings.sent > 0, "{pings:?}");
    assert!(
        pings.lost() <= 1,
        "lost {} of {} pings",
        pings.lost(),
        pings.sent
    );
    let rss_after = rss_kb(pid);
    eprintln!(
        "RSS {rss_before} kB before, {rss_held} kB with {IDLE} connections held, {rss_after} kB \
         after; pings {} sent, {} lost",
        pings.sent,
        pings.lost()
    );
    for rss in [rss_held, rss_after] {
        assert!(
            rss < rss_before + 32 * 1024,
            "RSS grew from {rss_before} kB to {rss} kB"
        );
    }
}

/// Let this thread's process hold `n` descriptors (the soft limit is often 1,024).
fn raise_fd_limit(n: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < n {
            l.rlim_cur = n.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
