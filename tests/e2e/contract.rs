//! The contract between meshd and its CNI plugin, checked from both sides. meshd writes
//! `network.json` under its run directory and answers on its status socket there; the plugin
//! reads the one and asks the other to learn that meshd is alive. The plugin does not link meshd
//! (it is a small binary a runtime execs per pod), so each side spells the contract its own way:
//! `meshd/src/runfiles.rs` and `cni/src/node.rs`, `cni/src/liveness.rs`. These tests are what
//! makes a renamed, retyped or added field, file or socket fail here rather than in a pod's ADD.
//!
//! The labs of the other tests go through the same contract (every pod is attached by the
//! plugin), but only its happy path: a field the plugin has a default for (`gateway`) or only
//! checks with (`cluster_cidr`) could drift apart with every lab still up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use meshd::config::Config;
use meshd::daemon::subnet::network_file;
use meshd::runfiles::{NETWORK_FILE, SOCKET_NAME};
use meshd::status::{server, Status};
use meshd::tiers::{Tier, TierReport};
use meshd_cni::node::{self, NodeNetwork, NodeState};
use serde_json::Value;

/// Fields of `network.json` the plugin deliberately does not read: the file outlives the daemon,
/// so neither the node's name nor its pid tells the plugin anything it acts on.
const INFORMATIONAL: [&str; 2] = ["node", "pid"];

/// A directory of this test's own, removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(crate::support::prefix(&format!("contract-{tag}-")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the plugin makes of `<dir>/network.json`, in words (errors included), to compare.
fn plugin_reads(dir: &Path) -> String {
    format!("{:?}", node::read(dir))
}

/// The plugin reads what meshd's own writer writes, and takes each value as meshd means it.
#[test]
fn the_plugin_reads_the_network_file_meshd_writes() {
    let scratch = Scratch::new("read");
    let cfg = Config {
        run_dir: scratch.0.clone(),
        node_name: "contract".into(),
        ..Config::default()
    };
    let subnet: Ipv4Net = "10.244.7.0/24".parse().unwrap();
    let written = network_file(&cfg, subnet);
    written.write(&cfg.run_dir).unwrap();
    assert!(scratch.0.join(node::FILE_NAME).is_file());
    assert_eq!(NETWORK_FILE, node::FILE_NAME);
    let NodeState::Ready(read) = node::read(&cfg.run_dir).unwrap() else {
        panic!("the plugin does not find meshd's network.json ready")
    };
    assert_eq!(
        read,
        NodeNetwork {
            subnet,
            gateway: written.gateway.parse().unwrap(),
            bridge: cfg.bridge.clone(),
            mtu: u32::from(cfg.overlay_mtu()),
        }
    );
    // Where the plugin looks by default is where meshd writes by default.
    assert_eq!(
        Config::default().run_dir,
        Path::new(meshd_cni::config::DEFAULT_RUNTIME_DIR)
    );
}

/// Every field meshd writes is read by the plugin under that name, except those named
/// informational: a poisoned value of each (same JSON type, a value no node has) must change
/// what the plugin makes of the file. A field meshd adds, or one the plugin stops reading or
/// reads under another name, fails here.
#[test]
fn every_field_meshd_writes_is_one_the_plugin_reads() {
    let scratch = Scratch::new("fields");
    let cfg = Config::default();
    let written = network_file(&cfg, "10.244.9.0/24".parse().unwrap());
    written.write(&scratch.0).unwrap();
    let path = scratch.0.join(NETWORK_FILE);
    let body: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let fields = body.as_object().expect("network.json is a JSON object");
    let healthy = plugin_reads(&scratch.0);
    assert!(healthy.starts_with("Ok(Ready("), "{healthy}");
    let mut read = BTreeSet::new();
    for (name, value) in fields {
        let poison = match value {
            Value::String(_) => Value::from("poisoned value/"),
            Value::Number(_) => Value::from(0),
            other => panic!("network.json field {name} is {other}: teach this test its poison"),
        };
        let mut changed = body.clone();
        changed[name.as_str()] = poison;
        std::fs::write(&path, serde_json::to_vec(&changed).unwrap()).unwrap();
        if plugin_reads(&scratch.0) != healthy {
            read.insert(name.as_str());
        }
    }
    let wanted: BTreeSet<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !INFORMATIONAL.contains(k))
        .collect();
    assert_eq!(
        read, wanted,
        "fields of meshd's network.json the plugin reads, against those meshd writes for it"
    );
    for k in INFORMATIONAL {
        assert!(fields.contains_key(k), "meshd no longer writes {k}");
    }
}

/// A status document as meshd serves it, with nothing in it but the node.
fn status(node: &str) -> Status {
    let off = || Tier::DisabledByConfig;
    Status {
        node: node.into(),
        version: String::new(),
        pid: std::process::id(),
        address: String::new(),
        address_source: None,
        public: None,
        relaying: Vec::new(),
        subnet: String::new(),
        cluster: None,
        vtep_mac: String::new(),
        encryption: String::new(),
        public_key: None,
        cookie_replies_sent: 0,
        refusals_over_source_limit: 0,
        mtu: 0,
        tiers: TierReport {
            multi_queue: off(),
            tun_offload: off(),
            udp_gso: off(),
            udp_gro: off(),
            udp_flows: off(),
            queues: 1,
        },
        peers: Vec::new(),
        unattributed: Default::default(),
        members: None,
        gossip: None,
        secrets: None,
        kernel: None,
        egress: None,
        queues: Vec::new(),
        refused: Vec::new(),
        refusals: 0,
    }
}

/// meshd's status server, on meshd's socket name, is what the plugin's liveness check accepts
/// as a live meshd; with the server gone, the check says so.
#[test]
fn the_plugin_finds_meshd_alive_on_its_status_socket() {
    let scratch = Scratch::new("socket");
    let socket = scratch.0.join(SOCKET_NAME);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = server::bind(&socket).unwrap();
            bound_tx.send(()).unwrap();
            tokio::select! {
                _ = server::serve(listener, || status("contract")) => {}
                _ = stop_rx => {}
            }
        });
    });
    bound_rx.recv().expect("the status server did not bind");
    let alive = meshd_cni::liveness::probe(&scratch.0);
    stop_tx.send(()).unwrap();
    served.join().unwrap();
    alive.unwrap();
    let gone = meshd_cni::liveness::probe(&scratch.0).unwrap_err();
    assert_eq!(gone.socket, scratch.0.join(SOCKET_NAME));
}
