//! The picture of the mesh in a real browser: headless Chromium loads `/` from h1's listener,
//! runs the page's script, and the DOM it leaves shows 3 nodes and 3 pairs, each pair with the
//! path both ends report; h3's meshd is killed and the picture shows h3 and its pairs down.
//! `meshd status --dot` is read by Graphviz and `--all` lists every pair from both ends.
//! Screenshots are kept in `target/tmp/picture/` (the README's comes from there).
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, gossip seed) ── 127.0.0.1:9472 ◄── chromium --headless (in h1)
//!            ├─ h2 (meshd)
//!            └─ h3 (meshd)                                      killed
//! ```
//! Cleartext, `datapath = "auto"`: every pair on kernel VXLAN.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use meshd::config::Encryption;
use meshd_lab::Topology;

use crate::gossip::{gossip_spec, wait_for_all_alive, wait_for_mesh};
use crate::kernel_paths::{auto, wait_path};
use crate::support::{meshd_bin, meshd_pid, require_root, wait_gone, wait_until};

/// Where the page is served in every lab host (meshd's default `metrics-address`).
const PAGE: &str = "http://127.0.0.1:9472/";

/// A node as the page drew it: name and state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    name: String,
    state: String,
}

/// A pair as the page drew it: its ends, health, hover text, and each half's reporter, path and
/// health.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    a: String,
    b: String,
    health: String,
    title: String,
    halves: Vec<(String, String, String)>,
}

/// The artifacts directory: under cargo's target dir, kept after the lab is gone.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("picture");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium in namespace `ns` on the page, with `args` (what to do with it), once the
/// page's script had 4 s of virtual time (a few refreshes' worth).
fn chromium(ns: &str, profile: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .args(["--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=4000", "--window-size=1200,800"])
        .args(args)
        .arg(PAGE)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The value of attribute `name` in the tag text `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[at..].find('"')?;
    Some(tag[at..at + end].replace("&amp;", "&"))
}

/// What the page drew, read from the DOM Chromium dumped after the script ran.
fn drawn(dom: &str) -> (Vec<Node>, Vec<Pair>) {
    let mut nodes = Vec::new();
    let mut pairs = Vec::new();
    for (i, _) in dom.match_indices("<g class=\"node ") {
        let tag = &dom[i..i + dom[i..].find('>').unwrap()];
        nodes.push(Node {
            name: attr(tag, "data-name").unwrap(),
            state: attr(tag, "data-state").unwrap(),
        });
    }
    for (i, _) in dom.match_indices("<g class=\"pair\"") {
        let group = &dom[i..i + dom[i..].find("</g>").unwrap()];
        let tag = &group[..group.find('>').unwrap()];
        let title = group
            .split_once("<title>")
            .and_then(|(_, t)| t.split_once("</title>"))
            .map(|(t, _)| t.to_owned())
            .unwrap_or_default();
        let halves = group
            .match_indices("<line ")
            .map(|(j, _)| {
                let line = &group[j..j + group[j..].find('>').unwrap()];
                (
                    attr(line, "data-reporter").unwrap(),
                    attr(line, "data-path").unwrap(),
                    attr(line, "data-health").unwrap(),
                )
            })
            .collect();
        pairs.push(Pair {
            a: attr(tag, "data-a").unwrap(),
            b: attr(tag, "data-b").unwrap(),
            health: attr(tag, "data-health").unwrap(),
            title,
            halves,
        });
    }
    (nodes, pairs)
}

/// Waits until the page in h1 draws what `cond` wants; returns it.
fn wait_drawn(
    t: &Topology,
    profile: &Path,
    what: &str,
    cond: impl Fn(&[Node], &[Pair]) -> bool,
) -> (Vec<Node>, Vec<Pair>) {
    wait_until(what, || {
        let o = chromium(&t.hosts[0].ns, profile, &["--dump-dom"]);
        let dom = String::from_utf8_lossy(&o.stdout).into_owned();
        let (nodes, pairs) = drawn(&dom);
        match cond(&nodes, &pairs) {
            true => Ok((nodes, pairs)),
            false => Err((
                nodes,
                pairs,
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )),
        }
    })
}

/// `meshd status ARGS` on host `i`.
fn meshd_status(t: &Topology, i: usize, args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", &t.hosts[i].ns])
        .arg(meshd_bin())
        .arg("status")
        .args(args)
        .arg("--run-dir")
        .arg(t.hosts[i].dir.join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_page_draws_the_mesh_in_a_browser_and_shows_a_dead_node() {
    require_root();
    let spec = gossip_spec("pic", 3, Encryption::None);
    let t = Topology::up(meshd_lab::Spec {
        paths: auto(0, false, 0),
        ..spec
    })
    .unwrap();
    wait_for_mesh(&t, &[0, 1, 2]);
    wait_for_all_alive(&t, 0, 2);
    for (a, b) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        wait_path(&t, a, b, |p| p.path == "kernel-vxlan");
    }
    let names: Vec<String> = t.hosts.iter().map(|h| h.name.clone()).collect();
    let profile = t.hosts[0].dir.join("chromium");
    let out = artifacts();

    // Every node, every pair, both ends' word on each: kernel VXLAN everywhere.
    let (nodes, pairs) = wait_drawn(&t, &profile, "3 nodes, 3 pairs on kernel-vxlan", |n, p| {
        n.len() == 3
            && p.len() == 3
            && p.iter().all(|x| {
                x.health == "ok"
                    && x.halves.len() == 2
                    && x.halves
                        .iter()
                        .all(|(_, path, h)| path == "kernel-vxlan" && h == "ok")
            })
    });
    let mut drawn_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    drawn_names.sort();
    assert_eq!(drawn_names, names);
    assert_eq!(
        nodes.iter().find(|n| n.name == names[0]).unwrap().state,
        "self"
    );
    for p in &pairs {
        let reporters: Vec<&str> = p.halves.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(
            reporters,
            [p.a.as_str(), p.b.as_str()],
            "each half is its end's word"
        );
    }
    let shot = out.join("mesh-3-nodes.png");
    let o = chromium(
        &t.hosts[0].ns,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(shot.is_file(), "no screenshot: {o:?}");

    // The same graph for Graphviz, and the table of every pair.
    let dot = meshd_status(&t, 0, &["--dot"]);
    let mut graphviz = Command::new("dot")
        .arg("-Tplain")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    graphviz
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let plain = graphviz.wait_with_output().unwrap();
    assert!(plain.status.success(), "dot refused it: {plain:?}\n{dot}");
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert_eq!(
        plain.lines().filter(|l| l.starts_with("node ")).count(),
        3,
        "{plain}"
    );
    assert_eq!(
        plain.lines().filter(|l| l.starts_with("edge ")).count(),
        3,
        "{plain}"
    );
    let all = meshd_status(&t, 0, &["--all"]);
    assert!(
        all.contains("3 nodes, 3 pairs (3 ok, 0 degraded, 0 down, 0 unknown)"),
        "{all}"
    );
    assert_eq!(
        all.lines().filter(|l| l.contains(" kernel-vxlan ")).count(),
        6,
        "{all}"
    );

    // h3 dies: first that it died, then the picture says so.
    let pid = meshd_pid(&t, 2);
    // SAFETY: kill(2) on the pid of the meshd the lab started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_gone(pid);
    let dead = names[2].clone();
    let (_, pairs) = wait_drawn(&t, &profile, "h3 and its pairs down", |n, p| {
        n.iter().any(|x| x.name == dead && x.state == "down")
            && p.iter()
                .filter(|x| x.a == dead || x.b == dead)
                .all(|x| x.health == "down")
            && p.iter().filter(|x| x.health == "down").count() == 2
    });
    let down = pairs.iter().find(|p| p.health == "down").unwrap();
    assert!(
        down.title.contains(&format!("{dead} down since")),
        "{down:?}"
    );
    let shot = out.join("mesh-node-down.png");
    chromium(
        &t.hosts[0].ns,
        &profile,
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(shot.is_file());
}
