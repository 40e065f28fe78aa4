//! Test harness: namespaces that play a node and its pods, and the plugin driven like a runtime.
//!
//! ```text
//!   host netns  cni-<test>-<pid>-<n>-h  (plays the node; the plugin runs here)
//!   ┌──────────────────────────────────────────────┐
//!   │ meshbr0 10.244.1.1/24 ── vmeshXXXX ─┐        │
//!   └─────────────────────────────────────┼────────┘
//!                         pod netns ... -p<i>: eth0 10.244.1.x/24, default via .1
//! ```
//! Every namespace and directory is owned by a guard whose `Drop` deletes it, so a failing
//! test cleans up too. Nothing here touches the root namespace's network configuration.
//!
//! meshd itself is played by [`FakeMeshd`]: its control socket in the node's runtime directory,
//! answering as meshd does, which is all the plugin asks of a live daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

mod result;
#[allow(unused_imports)] // each test binary uses what it needs
pub use result::{pod_end, validate_result};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_meshd-cni");
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A per-run unique name: `cni-<test>-<pid>-<n>`.
pub fn unique(test: &str) -> String {
    format!(
        "cni-{test}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for `cond`, which the kernel makes true in its own time (a deleted namespace's veth
/// pair goes away when the namespace is cleaned up, asynchronously); panics after 10 s.
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out waiting until {what}");
}

/// A named network namespace (`/var/run/netns/<name>`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Runs a command inside the namespace; returns whether it succeeded.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one plugin run returned.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts failure with `code`, and that the error object is well formed.
    pub fn expect_code(&self, code: u64) -> Value {
        assert!(
            !self.ok,
            "expected error {code}, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }

    pub fn expect_ok(&self) -> &Self {
        assert!(self.ok, "plugin failed: {} {}", self.stdout, self.stderr);
        self
    }
}

/// meshd's control socket (`<runtimeDir>/meshd.sock`): every connection gets one status
/// document and is closed, as meshd/src/status/server.rs does. Stopping it leaves the socket
/// file behind, as a crashed meshd does.
pub struct FakeMeshd {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FakeMeshd {
    pub fn start(runtime_dir: &Path) -> FakeMeshd {
        let socket = runtime_dir.join("meshd.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut s) = stream {
                    let doc = json!({"node": "node-a", "pid": std::process::id(), "peers": []});
                    let _ = s.write_all(doc.to_string().as_bytes());
                }
            }
        });
        FakeMeshd {
            socket,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Stops answering; the socket file stays.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = UnixStream::connect(&self.socket); // wakes the accept loop
            t.join().unwrap();
        }
    }
}

impl Drop for FakeMeshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node: a host namespace with meshd's bridge, a runtime dir with network.json and meshd's
/// socket, a data dir.
pub struct Node {
    pub host: Netns,
    pub meshd: FakeMeshd,
    pub dir: TempDir,
    pub name: String,
}

impl Node {
    pub fn new(test: &str) -> Node {
        Node::with_subnet(test, "10.244.1.0/24", "10.244.1.1")
    }

    pub fn with_subnet(test: &str, subnet: &str, gateway: &str) -> Node {
        let name = unique(test);
        let host = Netns::new(format!("{name}-h"));
        let dir = TempDir::new(&name);
        let prefix = subnet.split('/').nth(1).unwrap();
        host.ip(&["link", "set", "lo", "up"]);
        host.ip(&["link", "add", "meshbr0", "type", "bridge"]);
        host.ip(&[
            "addr",
            "add",
            &format!("{gateway}/{prefix}"),
            "dev",
            "meshbr0",
        ]);
        host.ip(&["link", "set", "meshbr0", "up"]);
        std::fs::create_dir_all(dir.0.join("run")).unwrap();
        let meshd = FakeMeshd::start(&dir.0.join("run"));
        let node = Node {
            host,
            meshd,
            dir,
            name,
        };
        node.write_network(&json!({
            "node": "node-a", "subnet": subnet, "gateway": gateway, "bridge": "meshbr0",
            "mtu": 1450, "cluster_cidr": "10.244.0.0/16", "pid": std::process::id(),
        }));
        node
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.0.join("run")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// Writes network.json the way meshd does: temp file + rename.
    pub fn write_network(&self, v: &Value) {
        let tmp = self.runtime_dir().join(".network.json.tmp");
        std::fs::write(&tmp, v.to_string()).unwrap();
        std::fs::rename(&tmp, self.runtime_dir().join("network.json")).unwrap();
    }

    /// Our plugin's config in `version`, network "meshnet".
    pub fn conf(&self, version: &str) -> Value {
        self.conf_named(version, "meshnet")
    }

    /// Our plugin's config in `version` for network `name`.
    pub fn conf_named(&self, version: &str, name: &str) -> Value {
        json!({
            "cniVersion": version, "name": name, "type": "meshd-cni",
            "runtimeDir": self.runtime_dir(), "dataDir": self.data_dir(),
        })
    }

    /// A pod namespace owned by this test.
    pub fn pod(&self, i: usize) -> Netns {
        Netns::new(format!("{}-p{i}", self.name))
    }

    /// Runs `plugin` (ours unless a path is given) in the host namespace like a runtime does.
    pub fn exec(
        &self,
        plugin: &str,
        cmd: &str,
        cid: &str,
        netns: &str,
        ifname: &str,
        conf: &Value,
    ) -> Out {
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        self.exec_with(plugin, &env, conf.to_string().as_bytes())
    }

    /// Runs `plugin` in the host namespace with exactly `env` (and a PATH) and `stdin`.
    pub fn exec_with(&self, plugin: &str, env: &[(&str, &str)], stdin: &[u8]) -> Out {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host.name, plugin])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Our plugin with our config.
    pub fn run(&self, cmd: &str, cid: &str, netns: &str, conf: &Value) -> Out {
        self.exec(PLUGIN, cmd, cid, netns, "eth0", conf)
    }

    /// The host namespace's links and addresses plus our allocations: "what changed".
    pub fn snapshot(&self) -> String {
        let links: Value = serde_json::from_str(&self.host.ip(&["-j", "link"])).unwrap();
        let addrs: Value = serde_json::from_str(&self.host.ip(&["-j", "-4", "addr"])).unwrap();
        let links: Vec<String> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {}",
                    l["ifname"], l["master"], l["mtu"], l["address"]
                )
            })
            .collect();
        let addrs: Vec<String> = addrs
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|a| {
                let name = a["ifname"].clone();
                a["addr_info"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |i| format!("{name} {}/{}", i["local"], i["prefixlen"]))
            })
            .collect();
        format!("{links:?}\n{addrs:?}\n{:?}", self.allocations())
    }

    /// Addresses allocated in our IPAM store, of every network.
    pub fn allocations(&self) -> Vec<String> {
        self.records().into_iter().map(|(ip, _)| ip).collect()
    }

    /// Our IPAM records, of every network: (address, record), sorted.
    pub fn records(&self) -> Vec<(String, Value)> {
        let dir = self.data_dir().join("_pool");
        let mut v: Vec<(String, Value)> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().into_string().ok()?;
                    name.parse::<std::net::Ipv4Addr>().ok()?;
                    let body = std::fs::read(e.path()).ok()?;
                    Some((name, serde_json::from_slice(&body).unwrap_or(Value::Null)))
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Host-side links named like ours.
    pub fn host_veths(&self) -> Vec<String> {
        self.host
            .ip(&["-o", "link"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("vmesh"))
            .collect()
    }
}
