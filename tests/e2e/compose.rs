//! The docker-compose dev cluster (`docker/compose.yaml`), as a developer runs it: the image is
//! built by `docker/build` from the binaries cargo built for this test run (nothing pulled),
//! the cluster comes up under a project name of the test's own, and the test checks what the
//! README promises.
//!
//! ```text
//!   compose network <project>_default (the underlay)
//!   ├─ node1 (meshd, gossip seed)  ── meshbr0 ── pod1 (HTTP :8080)
//!   ├─ node2 (meshd, joins node1)  ── meshbr0 ── pod1
//!   └─ node3 (meshd, joins node1)  ── meshbr0 ── pod1
//!        └─ web (the user's container, node3's network namespace, HTTP :8081)
//! ```
//! No address or subnet is configured: meshd finds its underlay address from the routes and
//! gets its subnet from gossip. The guard removes the project (containers, network, volumes)
//! and the image even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::{meshd_bin, prefix, require_root, wait_within, SETTLE};
use meshd::status::Status;

const NODES: [&str; 3] = ["node1", "node2", "node3"];
/// Formation on a busy 2-core machine: containers start and load the image before gossip
/// joins and leases, which a lab's [`SETTLE`] covers.
const FORMATION: Duration = Duration::from_secs(3 * SETTLE.as_secs());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker compose` (v2) where the plugin exists, else `docker-compose` (v1).
fn compose_cmd() -> Vec<&'static str> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// `docker/build` from the binaries cargo built for this test run, tagged `tag`.
fn build_image(tag: &str) {
    let bin_dir = meshd_bin().parent().unwrap().to_path_buf();
    let out = Command::new(repo().join("docker/build"))
        .args(["--no-secret", "--bin-dir"])
        .arg(&bin_dir)
        .env("MESHD_IMAGE", tag)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker/build: {}", text(&out));
}

struct Cluster {
    project: String,
    image: String,
    secret: PathBuf,
    encryption: &'static str,
}

impl Cluster {
    /// Builds the image and brings the cluster up.
    fn up(tag: &str, encryption: &'static str) -> Cluster {
        require_root();
        let project = prefix(tag);
        let c = Cluster {
            image: format!("{project}:test"),
            secret: std::env::temp_dir().join(format!("{project}.secret")),
            project,
            encryption,
        };
        build_image(&c.image);
        let secret = Command::new(meshd_bin()).arg("secret").output().unwrap();
        std::fs::write(&c.secret, &secret.stdout).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&c.secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = c.compose(&["up", "-d"]);
        assert!(out.status.success(), "compose up: {}", text(&out));
        c
    }

    fn compose(&self, args: &[&str]) -> Output {
        let cmd = compose_cmd();
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("-f")
            .arg(repo().join("docker/compose.yaml"))
            .args(["-p", &self.project])
            .args(args)
            .env("MESHD_IMAGE", &self.image)
            .env("MESHD_COMPOSE_SECRET", &self.secret)
            .env("MESHD_ENCRYPTION", self.encryption)
            .output()
            .unwrap()
    }

    /// Runs `args` in a node's container (its network namespace).
    fn exec(&self, node: &str, args: &[&str]) -> Output {
        let mut all = vec!["exec", "-T", node];
        all.extend_from_slice(args);
        self.compose(&all)
    }

    /// Runs `args` in a node's pod.
    fn in_pod(&self, node: &str, args: &[&str]) -> Output {
        let mut all = vec!["nsenter", "--net=/run/netns/pod1"];
        all.extend_from_slice(args);
        self.exec(node, &all)
    }

    fn status(&self, node: &str) -> Option<Status> {
        let out = self.exec(node, &["meshd", "status", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    fn pod_addr(&self, node: &str) -> Option<String> {
        let out = self.exec(node, &["cat", "/run/meshd/pods/pod1"]);
        let a = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !a.is_empty()).then_some(a)
    }

    /// Waits until every node routes to the two others and has its pod.
    fn wait_for_mesh(&self) -> Vec<(String, Status)> {
        let deadline = Instant::now() + FORMATION;
        loop {
            let all: Vec<_> = NODES
                .iter()
                .filter_map(|n| Some((self.pod_addr(n)?, self.status(n)?)))
                .filter(|(_, s)| s.peers.len() == 2)
                .collect();
            if all.len() == NODES.len() {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "the compose cluster did not form: {}",
                text(&self.compose(&["logs", "--tail", "30"]))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// What is left of the project: containers, networks, volumes.
    fn leftovers(&self) -> String {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = String::new();
        for what in [
            &["ps", "-a", "-q"][..],
            &["network", "ls", "-q"][..],
            &["volume", "ls", "-q"][..],
        ] {
            let out = Command::new("docker")
                .args(what)
                .args(["--filter", &label])
                .output()
                .unwrap();
            left.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        left.trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
        let _ = std::fs::remove_file(&self.secret);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn the_dev_cluster_works(encryption: &'static str) {
    let c = Cluster::up(&format!("mc{}", &encryption[..1]), encryption);
    let nodes = c.wait_for_mesh();
    for (_, s) in &nodes {
        assert!(
            s.address_source.is_some(),
            "{}: the status says where its address came from",
            s.node
        );
        assert!(s.encryption.starts_with(encryption), "{}", s.encryption);
        // The image carries `nft` (docker/build copies the host's), so a cleartext node makes
        // its kernel VXLAN device, whose receive side meshd's rules check.
        if encryption == "none" {
            let vxlan = s.kernel.as_ref().map(|k| k.vxlan.as_str()).unwrap_or("");
            assert!(!vxlan.contains("unavailable"), "{}: {vxlan}", s.node);
        }
    }

    // Every pod reaches every other node's pod.
    for (i, from) in NODES.iter().enumerate() {
        for (j, (to, _)) in nodes.iter().enumerate() {
            if i != j {
                let out = c.in_pod(from, &["ping", "-c", "1", "-W", "2", to]);
                assert!(out.status.success(), "{from} pod → {to}: {}", text(&out));
            }
        }
    }

    // A checksummed TCP transfer pod to pod: node3's blob fetched from node1's pod.
    let (addr3, s3) = &nodes[2];
    let want = stdout(&c.exec("node3", &["sha256sum", "/www/blob"]));
    let url = format!("http://{addr3}:8080/blob");
    let got = stdout(&c.in_pod(
        "node1",
        &["sh", "-c", &format!("wget -qO- {url} | sha256sum")],
    ));
    assert_eq!(
        got.split_whitespace().next(),
        want.split_whitespace().next(),
        "the 4 MiB transfer arrived intact"
    );

    // The user's container on node3's network namespace, reached from node1's pod at node3's
    // bridge address.
    let net3: std::net::Ipv4Addr = s3.subnet.split('/').next().unwrap().parse().unwrap();
    let bridge3 = std::net::Ipv4Addr::from(u32::from(net3) + 1);
    let out = c.in_pod(
        "node1",
        &["wget", "-qO-", &format!("http://{bridge3}:8081/")],
    );
    assert_eq!(stdout(&out), "hello from web on node3", "{}", text(&out));

    // A stopped node is withdrawn (it announces that it leaves), and comes back with its
    // subnet (its state is on a volume).
    let subnet2 = nodes[1].1.subnet.clone();
    let out = c.compose(&["stop", "--timeout", "5", "node2"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_within(
        "node2 withdrawn on node1 once it stopped",
        SETTLE,
        || match c.status("node1") {
            Some(s) if !s.peers.iter().any(|p| p.name == "node2") => Ok(()),
            other => Err(other.map(|s| s.peers.len())),
        },
    );
    let out = c.compose(&["start", "node2"]);
    assert!(out.status.success(), "{}", text(&out));
    let nodes = c.wait_for_mesh();
    assert_eq!(
        nodes[1].1.subnet, subnet2,
        "node2 came back with its subnet"
    );

    // `down -v` leaves nothing of the project behind.
    let out = c.compose(&["down", "-v", "--timeout", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.leftovers(), "", "left behind by down -v");
}

#[test]
fn the_encrypted_dev_cluster_works() {
    the_dev_cluster_works("wireguard");
}

#[test]
fn the_cleartext_dev_cluster_works() {
    the_dev_cluster_works("none");
}

/// A node without its cluster secret stops with a message naming it; a node whose seed does not
/// resolve keeps retrying and says which seed. Both visible in the container's logs.
#[test]
fn bad_input_is_named_in_the_logs() {
    require_root();
    let image = format!("{}:test", prefix("mcb"));
    build_image(&image);
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _image = Image(image.clone());
    let run = |name: &str, env: &[&str]| {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", name, "--cap-add", "NET_ADMIN"]);
        cmd.args([
            "--device",
            "/dev/net/tun",
            "--sysctl",
            "net.ipv4.ip_forward=1",
        ]);
        for e in env {
            cmd.args(["-e", e]);
        }
        let out = cmd.arg(&image).output().unwrap();
        assert!(out.status.success(), "docker run: {}", text(&out));
    };
    struct Container(String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let logs = |name: &str| {
        text(
            &Command::new("docker")
                .args(["logs", name])
                .output()
                .unwrap(),
        )
    };

    let no_secret = Container(format!("{}-nosecret", image.replace(':', "-")));
    run(&no_secret.0, &[]);
    let exit = wait_within("the node without a secret should exit", SETTLE, || {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                &no_secret.0,
            ])
            .output()
            .unwrap();
        let s = stdout(&out);
        if s.starts_with("exited") {
            Ok(s)
        } else {
            Err(format!("still running: {}", logs(&no_secret.0)))
        }
    });
    assert_ne!(exit, "exited 0", "{}", logs(&no_secret.0));
    let l = logs(&no_secret.0);
    assert!(
        l.contains("cluster-secret-file") && l.contains("/etc/meshd/cluster.secret"),
        "the missing secret is named: {l}"
    );

    let bad_seed = Container(format!("{}-badseed", image.replace(':', "-")));
    let secret = stdout(&Command::new(meshd_bin()).arg("secret").output().unwrap());
    run(
        &bad_seed.0,
        &[
            "MESHD_JOIN=no-such-seed.invalid:7946",
            &format!("MESHD_CLUSTER_SECRET={secret}"),
        ],
    );
    wait_within("a message about the seed", FORMATION, || {
        let l = logs(&bad_seed.0);
        let said =
            l.contains("cannot resolve a gossip seed") && l.contains("no-such-seed.invalid:7946");
        said.then_some(()).ok_or(l)
    });
}
