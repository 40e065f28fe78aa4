//! Live reconfiguration (issue 24): SIGHUP re-reads the config file. `log-level`, `seeds` and
//! `metrics-address` change without a restart; a changed `subnet` is named in a warning and kept;
//! a file that does not load changes nothing. And `log-format = "json"` writes JSON lines.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed)
//!            └─ h2 (meshd)   restarted alone (its only seed is itself), then given h1 as its
//!                            seed, debug logging, another subnet and a metrics address by SIGHUP
//! ```

use std::net::SocketAddr;

use meshd::config::Encryption;
use meshd_lab::topology::GOSSIP_PORT;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, wait_for_all_alive};
use crate::observe::{http_get, METRICS_PORT};
use crate::support::{
    log_mark, log_since, meshd_pid, require_root, status, wait_for_log, wait_gone, wait_until,
};

fn hup(t: &Topology, i: usize) {
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(meshd_pid(t, i), libc::SIGHUP) };
}

/// Host `i`'s config file, rewritten as an operator would before a SIGHUP.
fn write_config(t: &Topology, i: usize, text: &str) {
    std::fs::write(t.hosts[i].dir.join("meshd.toml"), text).unwrap();
}

#[test]
fn sighup_changes_log_level_seeds_and_metrics_address_and_keeps_the_subnet() {
    require_root();
    let t = Topology::up(gossip_spec("reload", 2, Encryption::None)).unwrap();
    wait_for_all_alive(&t, 1, 1);
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let usual = t.meshd_config(h2);
    let seed = format!("seeds = [\"{}:{GOSSIP_PORT}\"]", h1.underlay);
    assert!(usual.contains(&seed), "{usual}");
    // h2 dies (no goodbye: h1 will take it for crashed, not gone for good) and starts again
    // with no seed it can use (its own address, which it never joins), on another gossip port
    // (so h1, which still has it at the old one, cannot reach it): alone.
    let pid = meshd_pid(&t, 1);
    // SAFETY: kill(2) on the pid of the meshd this topology started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
    let port = format!("port = {GOSSIP_PORT}");
    let usual = usual.replace(&port, &format!("port = {}", GOSSIP_PORT + 1));
    let own = format!("seeds = [\"{}:{GOSSIP_PORT}\"]", h2.underlay);
    t.restart_meshd(1, &usual.replace(&seed, &own)).unwrap();
    wait_for_log(&t, 1, "meshd is up");
    let subnet = status(&t, 1).subnet;
    assert!(
        status(&t, 1)
            .members
            .unwrap_or_default()
            .iter()
            .all(|m| m.state != "alive"),
        "h2 is alone"
    );
    let mark = log_mark(&t, 1);
    assert!(
        log_since(&t, 1, 0, &["DEBUG"]).is_empty(),
        "info level to start with"
    );

    // The operator fixes the seed, asks for debug logs, metrics on the underlay, and (in vain)
    // another subnet.
    let metrics = SocketAddr::new(h2.underlay.into(), METRICS_PORT + 1);
    let edited = format!(
        "subnet = \"10.244.200.0/24\"\nmetrics-address = \"{metrics}\"\n{}",
        usual.replace("log-level = \"info\"", "log-level = \"debug\"")
    );
    write_config(&t, 1, &edited);
    hup(&t, 1);

    // The new seed is used: h2 joins h1, and h1 sees it alive.
    wait_for_all_alive(&t, 1, 1);
    wait_for_all_alive(&t, 0, 1);
    // The new level: debug lines appear (joining the new seed is one).
    wait_until("a debug line in h2's log", || {
        let debug = log_since(&t, 1, mark, &["DEBUG"]);
        (!debug.is_empty()).then_some(()).ok_or(())
    });
    let joined = log_since(&t, 1, mark, &["DEBUG", "joining"]);
    assert!(!joined.is_empty(), "{}", crate::support::log(&t, 1));
    // The subnet is named in one warning and kept.
    let warned = log_since(&t, 1, mark, &["WARN", "restart", "subnet"]);
    assert_eq!(warned.len(), 1, "{}", crate::support::log(&t, 1));
    assert!(!warned[0].contains("seeds"), "{}", warned[0]);
    assert_eq!(status(&t, 1).subnet, subnet);
    // The metrics moved: served on the underlay address (h1 reaches it), gone from loopback.
    let (code, body) = wait_until("h2's /metrics at its new address", || {
        http_get(&h1.ns, metrics, "/metrics").map_err(|e| e.to_string())
    });
    assert_eq!(code, 200);
    assert!(body.contains("meshd_members{state=\"alive\"} 1"), "{body}");
    let loopback = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    assert!(http_get(&h2.ns, loopback, "/metrics").is_err());

    // A file that does not load changes nothing, and says so.
    let mark = log_mark(&t, 1);
    write_config(&t, 1, &format!("no-such-key = 1\n{edited}"));
    hup(&t, 1);
    wait_for_log(&t, 1, "does not load");
    let refused = log_since(&t, 1, mark, &["WARN", "no-such-key"]);
    assert_eq!(refused.len(), 1, "{}", crate::support::log(&t, 1));
    assert_eq!(http_get(&h1.ns, metrics, "/metrics").unwrap().0, 200);
    wait_for_all_alive(&t, 1, 1);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    require_root();
    let t = Topology::up(gossip_spec("logjson", 1, Encryption::None)).unwrap();
    let json = format!("log-format = \"json\"\n{}", t.meshd_config(&t.hosts[0]));
    t.restart_meshd(0, &json).unwrap();
    let log = wait_for_log(&t, 0, "meshd is up");
    // The log file holds the first run's text lines, then this run's.
    let ours: Vec<&str> = log.lines().skip_while(|l| !l.starts_with('{')).collect();
    assert!(ours.len() > 3, "{log}");
    for line in ours {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {line}");
        });
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
