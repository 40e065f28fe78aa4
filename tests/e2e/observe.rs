//! What the observability tests share: a plain HTTP GET from inside a lab namespace, a node's
//! `/metrics`, and a real Prometheus server (Debian's `prometheus`) run in a lab namespace and
//! asked over its HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshd_lab::netns::in_netns;
use meshd_lab::Topology;

use crate::support::wait_until;

/// The port meshd serves `/metrics` on by default.
pub const METRICS_PORT: u16 = 9472;

/// `GET path` to `addr` from namespace `ns`: the status code and the body.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    in_netns(ns, move || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, body.to_string()))
    })
    .map_err(std::io::Error::other)?
}

/// Host `i`'s `/metrics`, asked from its own namespace at `addr` (its default: loopback).
pub fn scrape_at(t: &Topology, i: usize, addr: SocketAddr) -> String {
    wait_until(
        &format!("h{}'s /metrics at {addr}", i + 1),
        || match http_get(&t.hosts[i].ns, addr, "/metrics") {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    )
}

/// Host `i`'s `/metrics` on the default address.
pub fn scrape(t: &Topology, i: usize) -> String {
    scrape_at(t, i, SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)))
}

/// The series lines of a scrape (neither comments nor blank).
pub fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect()
}

/// The value of the series `name{labels}` (exactly as written) in a scrape.
pub fn value(text: &str, series_name: &str) -> Option<f64> {
    series(text).into_iter().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series_name).then(|| v.parse().ok()).flatten()
    })
}

/// `promtool check metrics` on `text`: its complaints, empty when it has none.
pub fn promtool_check(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tests/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("promtool failed ({}): {said}", out.status)
    }
}

/// A Prometheus server in namespace `ns`, scraping `targets` every second; killed on drop.
pub struct Prometheus {
    pid: i32,
    ns: String,
    dir: PathBuf,
}

/// Where Prometheus answers inside its namespace.
const PROMETHEUS: ([u8; 4], u16) = ([127, 0, 0, 1], 9090);

impl Prometheus {
    pub fn start(t: &Topology, ns: &str, targets: &[SocketAddr]) -> Prometheus {
        let dir = Topology::state_dir(&t.spec.prefix).join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let list: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: meshd\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let args: Vec<std::ffi::OsString> = vec![
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
            format!("--web.listen-address={}:{}", "127.0.0.1", PROMETHEUS.1).into(),
            "--log.level=warn".into(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let pid = meshd_lab::netns::spawn_daemon(
            ns,
            std::path::Path::new("/usr/bin/prometheus"),
            &args,
            &dir.join("prometheus.log"),
        )
        .expect("starting prometheus (Debian's prometheus package; tests/run installs it)");
        let p = Prometheus {
            pid: pid as i32,
            ns: ns.to_string(),
            dir,
        };
        wait_until("Prometheus to answer", || p.get("/-/ready").map(|_| ()));
        p
    }

    /// `GET path` of its API; the body of a 200.
    fn get(&self, path: &str) -> Result<String, String> {
        match http_get(&self.ns, SocketAddr::from(PROMETHEUS), path) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    }

    /// An instant query: each result's labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = wait_until(&format!("Prometheus to answer {promql}"), || {
            self.get(&format!("/api/v1/query?query={q}"))
        });
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value `promql` has now, if it has one.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        self.query(promql).first().map(|(_, v)| *v)
    }

    /// Its log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) on the pid of the Prometheus this guard started.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
