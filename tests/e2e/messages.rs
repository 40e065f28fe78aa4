//! What the real `meshd` binary tells an operator: a refusal says once what is wrong, the same
//! from `run` and from `--check-config` (which checks what `run` checks, and creates nothing);
//! its log file holds no colour codes; a member that joins is logged `member up` once.
//!
//! ```text
//!   <prefix>            (one namespace: lo, with the node's address on it)
//!   sw: br0 ─┬─ h1 (meshd, gossip seed; stderr → meshd.log)
//!            └─ h2 (meshd, seeds = [h1]; stderr → meshd.log)
//! ```

use crate::support::{log, meshd_bin, prefix, require_root};
use meshd_lab::netns::{self, ip};
use meshd_lab::Topology;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::gossip::{gossip_spec, wait_for_mesh};

/// A namespace and a directory of this test's own, removed on drop.
struct Scratch {
    ns: String,
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let ns = prefix(tag);
        ip(&["netns", "add", &ns]).unwrap();
        ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
        ip(&["-n", &ns, "addr", "add", "198.18.0.1/32", "dev", "lo"]).unwrap();
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Scratch { ns, dir }
    }

    /// `meshd run` (with `--check-config` when `check`) on `config`; (success, stderr).
    fn meshd(&self, config: &str, check: bool) -> (bool, String) {
        let path = self.dir.join("meshd.toml");
        std::fs::write(&path, config).unwrap();
        // A meshd that accepts what it should refuse would run for ever: killed after a minute,
        // so the test fails instead of hanging the suite.
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "60", "ip", "netns", "exec", &self.ns])
            .arg(meshd_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("MESHD_CLUSTER_SECRET");
        if check {
            cmd.arg("--check-config");
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn links(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        netns::destroy(&self.ns);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configuration or node key that `run` and `--check-config` must both refuse.
struct Case<'a> {
    what: &'a str,
    /// Puts the bad node key (if any) at the path given.
    make: fn(&Path),
    config: &'a str,
    /// Text the message must hold exactly once.
    once: &'a str,
    /// Text the message must hold too.
    also: &'a str,
}

/// The one line meshd prints when it gives up (a `run` may have logged before it).
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("meshd: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

fn config(dir: &Path, address: &str) -> String {
    format!(
        "node-name = \"n1\"\naddress = \"{address}\"\nsubnet = \"10.244.1.0/24\"\n\
         cluster-secret-file = \"{}\"\nstate-dir = \"{}\"\nrun-dir = \"{}\"\n",
        dir.join("cluster.secret").display(),
        dir.join("state").display(),
        dir.join("run").display(),
    )
}

#[test]
fn refusals_say_once_what_is_wrong_and_check_config_agrees() {
    require_root();
    let s = Scratch::new("msg");
    let secret = s.dir.join("cluster.secret");
    meshd_crypto::ClusterSecret::generate()
        .write_new_file(&secret)
        .unwrap();
    let key = s.dir.join("state").join("node.key");
    let good = config(&s.dir, "198.18.0.1");

    // Side-effect free: no node key yet, and the check makes none.
    let (ok, stderr) = s.meshd(&good, true);
    assert!(ok, "{stderr}");
    assert!(!key.exists(), "--check-config created the node key");

    // In encrypted mode `address` may be one the host does not have (a 1:1 NAT's public
    // address); what the sockets bind to must be here.
    let not_here = format!("{good}listen-address = \"198.18.0.99\"\n");
    let cases = [
        Case {
            what: "a garbage node key",
            make: |key| std::fs::write(key, "abc\n").unwrap(),
            config: &good,
            once: "expected 32 bytes in base64",
            also: "found 3 characters",
        },
        Case {
            what: "a directory for a node key",
            make: |key| std::fs::create_dir(key).unwrap(),
            config: &good,
            once: "is a directory",
            also: "is a directory",
        },
        Case {
            what: "a listen address not on this host",
            make: |_| {},
            config: &not_here,
            once: "`listen-address`",
            also: "198.18.0.99",
        },
    ];
    for Case {
        what,
        make,
        config: cfg,
        once,
        also,
    } in cases
    {
        make(&key);
        use std::os::unix::fs::PermissionsExt;
        if key.is_file() {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let (ok_run, run) = s.meshd(cfg, false);
        let (ok_check, check) = s.meshd(cfg, true);
        assert!(!ok_run && !ok_check, "{what} was accepted: {run} / {check}");
        let (run, check) = (error_line(&run), error_line(&check));
        assert_eq!(run, check, "{what}: run and --check-config disagree");
        assert_eq!(run.matches(once).count(), 1, "{what}: {run}");
        assert!(run.contains(also), "{what}: {run}");
        assert!(!run.contains("chmod"), "{what}: {run}");
        if cfg == good.as_str() {
            assert_eq!(run.matches(&*key.display().to_string()).count(), 1, "{run}");
        }
        let links = s.links();
        assert_eq!(
            links.lines().count(),
            1,
            "{what} left links behind: {links}"
        );
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_dir(&key);
    }

    // A garbage cluster secret: what was expected and what was found, with their units.
    std::fs::remove_file(&secret).unwrap();
    std::fs::write(&secret, "not a secret\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (ok, stderr) = s.meshd(&good, true);
    assert!(!ok);
    let stderr = error_line(&stderr);
    for text in [
        "`cluster-secret-file`",
        "expected 32 bytes",
        "found 3 characters",
    ] {
        assert_eq!(stderr.matches(text).count(), 1, "{text}: {stderr}");
    }
}

#[test]
fn logs_are_plain_text_and_a_member_comes_up_once() {
    require_root();
    let t = Topology::up(gossip_spec("log", 2, meshd::config::Encryption::Wireguard)).unwrap();
    wait_for_mesh(&t, &[0, 1]);
    // Not a wait: time for every record of the other node to arrive again (its lease,
    // rebroadcasts), any of which a careless log would report as another `member up`.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..t.hosts.len() {
        let text = log(&t, i);
        assert!(
            !text.contains('\u{1b}'),
            "h{}'s log file holds escape codes",
            i + 1
        );
        assert!(text.contains("meshd is up"), "{text}");
        let other = &t.hosts[1 - i].name;
        let ups = text
            .lines()
            .filter(|l| l.contains(&format!("member up member={other} ")))
            .count();
        assert_eq!(ups, 1, "h{} logs {other} up {ups} times:\n{text}", i + 1);
    }
}
