//! The kernel's neighbour table, sized for the lab.
//!
//! Linux keeps one IPv4 neighbour (ARP) table for every network namespace, and its limits
//! (`net.ipv4.neigh.default.gc_thresh1/2/3`) exist only in the root namespace. A stock kernel
//! allows 1,024 entries in all; a lab of N hosts where every host talks to every other needs
//! about N² of them (each host resolves every other host on the underlay, and meshd adds one per
//! peer on its VXLAN device), so at 100 hosts sends fail with "No buffer space available" and
//! the cluster never forms. `lab up` therefore raises the three limits to what its size needs
//! (never lowers them), records the values it found in [`ORIGINALS`], and `lab down` writes them
//! back once no lab is left. This is the one thing the lab changes outside its namespaces; it
//! says so when it does. IPv6 is not sized: the lab's namespaces carry no IPv6 traffic.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::netns::run;

/// The limits, lowest first.
pub const KEYS: [&str; 3] = [
    "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2",
    "net.ipv4.neigh.default.gc_thresh3",
];

/// Where the values found before the first lab raised them are kept (one file for every lab:
/// with two labs up, the second must not record the first one's values as the originals).
pub const ORIGINALS: &str = "neigh.orig";

/// One limit changed: from, to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub from: u64,
    pub to: u64,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.from, self.to)
    }
}

/// Entries a lab of `nodes` hosts with `pods` pods each may hold at once: every host a neighbour
/// for every other host on the underlay and on its VXLAN device, and one per pod on each side of
/// its veth.
pub fn entries(nodes: usize, pods: usize) -> u64 {
    2 * (nodes as u64) * (nodes as u64 + pods as u64)
}

/// The limits a lab of `need` entries wants, given the `current` ones. A lab that fits under
/// the soft limit (gc_thresh2) changes nothing. A larger one gets: nothing collected below
/// `need` (gc_thresh1, so entries at rest are not dropped and resolved again), stale entries
/// collected only above twice that (gc_thresh2), and a hard limit with room for twice more
/// (gc_thresh3). A limit already higher is kept.
pub fn wanted(current: [u64; 3], need: u64) -> [u64; 3] {
    if need <= current[1] {
        return current;
    }
    let target = [need, 2 * need, 4 * need];
    [
        current[0].max(target[0]),
        current[1].max(target[1]),
        current[2].max(target[2]),
    ]
}

/// Raise the limits for a lab `prefix` of `nodes` hosts with `pods` pods each; returns what
/// changed (nothing when the limits suffice). Creates the lab's state directory, so a `down`
/// of another lab running at the same time sees this one and leaves the limits alone.
pub fn size(state_root: &Path, prefix: &str, nodes: usize, pods: usize) -> Result<Vec<Change>> {
    std::fs::create_dir_all(state_root.join(prefix))
        .with_context(|| format!("creating {}", state_root.join(prefix).display()))?;
    let _lock = Lock::take(state_root)?;
    let current = read()?;
    let want = wanted(current, entries(nodes, pods));
    if want == current {
        return Ok(Vec::new());
    }
    let originals = state_root.join(ORIGINALS);
    if !originals.exists() {
        let text: String = KEYS
            .iter()
            .zip(current)
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(&originals, text)
            .with_context(|| format!("writing {}", originals.display()))?;
    }
    write(current, want)
}

/// Write the recorded limits back, unless a lab other than `prefix` still has its state
/// directory under `state_root`; returns what changed.
pub fn restore(state_root: &Path, prefix: &str) -> Result<Vec<Change>> {
    if !state_root.is_dir() {
        return Ok(Vec::new());
    }
    let _lock = Lock::take(state_root)?;
    let originals = state_root.join(ORIGINALS);
    let Ok(text) = std::fs::read_to_string(&originals) else {
        return Ok(Vec::new());
    };
    if !other_labs(state_root, prefix).is_empty() {
        return Ok(Vec::new());
    }
    let mut want = read()?;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if let (Some(i), Ok(v)) = (KEYS.iter().position(|k| *k == key), value.parse()) {
            want[i] = v;
        }
    }
    // Lower the hard limit last, so the three never cross on the way.
    let changes = write(read()?, want)?;
    std::fs::remove_file(&originals)
        .with_context(|| format!("removing {}", originals.display()))?;
    Ok(changes)
}

/// The labs other than `prefix` with a state directory under `state_root`.
pub fn other_labs(state_root: &Path, prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_root) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != prefix)
        .collect()
}

fn proc_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// The three limits now.
pub fn read() -> Result<[u64; 3]> {
    let mut out = [0; 3];
    for (i, key) in KEYS.iter().enumerate() {
        let path = proc_path(key);
        out[i] = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?;
    }
    Ok(out)
}

/// Set the limits that differ, with `sysctl -w` (raising: highest first; lowering: lowest
/// first, so gc_thresh1 ≤ gc_thresh2 ≤ gc_thresh3 holds throughout).
fn write(current: [u64; 3], want: [u64; 3]) -> Result<Vec<Change>> {
    let mut order: Vec<usize> = (0..3).collect();
    if want[2] > current[2] {
        order.reverse();
    }
    let mut changes = Vec::new();
    for i in order {
        if want[i] == current[i] {
            continue;
        }
        run("sysctl", &["-qw", &format!("{}={}", KEYS[i], want[i])])?;
        changes.push(Change {
            key: KEYS[i],
            from: current[i],
            to: want[i],
        });
    }
    Ok(changes)
}

/// An exclusive lock on `<state_root>/neigh.lock`, held until dropped, so two labs going up
/// or down at once do not interleave their reads and writes of the limits.
struct Lock {
    _file: File,
}

impl Lock {
    fn take(state_root: &Path) -> Result<Lock> {
        let path = state_root.join("neigh.lock");
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // SAFETY: flock(2) on a descriptor we own; released when the file is closed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(Lock { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hundred_hosts_need_more_than_a_stock_kernel_allows() {
        let stock = [128, 512, 1024];
        let want = wanted(stock, entries(100, 1));
        assert_eq!(entries(100, 1), 20_200);
        assert_eq!(want, [20_200, 40_400, 80_800]);
        assert!(want[0] <= want[1] && want[1] <= want[2]);
    }

    #[test]
    fn limits_already_high_enough_are_kept() {
        let stock = [128, 512, 1024];
        assert_eq!(wanted(stock, entries(3, 2)), stock);
        assert_eq!(
            wanted(stock, entries(10, 1)),
            stock,
            "220 entries fit under 512"
        );
        let raised = [100_000, 200_000, 400_000];
        assert_eq!(wanted(raised, entries(100, 1)), raised);
    }

    #[test]
    fn other_labs_are_the_other_directories() {
        let root = std::env::temp_dir().join(format!("meshd-lab-neigh-{}", std::process::id()));
        for d in ["a", "b"] {
            std::fs::create_dir_all(root.join(d)).ok();
        }
        std::fs::write(root.join(ORIGINALS), "x").ok();
        let mut others = other_labs(&root, "a");
        others.sort();
        std::fs::remove_dir_all(&root).ok();
        assert_eq!(others, ["b"]);
    }
}
