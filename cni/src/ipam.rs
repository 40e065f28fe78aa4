//! Built-in address allocation from the node subnet, persisted in the data directory.
//!
//! One pool per data directory, whatever the network name. Every network name on a node (a
//! second conflist, a Multus attachment, a renamed network) hands out addresses of the same node
//! subnet on the same bridge, so they must share one allocator: two would both hand out `.2`.
//! Each record names its owner, `(network, containerID, ifname)`, the key the spec asks plugins
//! to keep state under, so DEL, CHECK and GC of one network see only what that network holds.
//!
//! Layout: `<dataDir>/_pool/lock` (held with `flock` for the whole invocation, so concurrent
//! ADDs, DELs and GCs of every network serialise), one file per allocated address named after
//! it whose content is `{"network":…,"containerID":…,"ifname":…}`, and `last_reserved` so
//! allocation goes round-robin and a freed address is not handed out again at once. Never hands
//! out the network address, the gateway or the broadcast address. `_pool` cannot clash with a
//! network name: those start with a letter or digit.
//!
//! Earlier versions kept one store per network name, `<dataDir>/<network>/<ip>` holding
//! `{"containerID":…,"ifname":…}`. Those directories are still read and locked (after the pool,
//! in name order), so their addresses stay taken and their owners can DEL them; nothing new is
//! written there, and each is removed once its last address is released.

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::env::validate_name;
use crate::error::{Error, Result};

/// The pool's directory under the data directory.
pub const POOL: &str = "_pool";
const LOCK: &str = "lock";
const LAST: &str = "last_reserved";

/// One allocation: who holds which address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    /// Empty for a record we could not read: its address stays taken, and no network owns it.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    file: PathBuf,
}

impl Allocation {
    /// Whether this allocation is `(network, container, ifname)`'s.
    pub fn is(&self, network: &str, container_id: &str, ifname: &str) -> bool {
        self.network == network && self.container_id == container_id && self.ifname == ifname
    }
}

/// A record on disk; a legacy one has no `network` (its directory names it).
#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<String>,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The node's allocation store, locked for as long as it lives.
pub struct Store {
    pool: PathBuf,
    legacy: Vec<(String, PathBuf)>,
    _locks: Vec<Flock<File>>,
}

impl Store {
    /// Opens (creating if needed) and exclusively locks the pool of `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store> {
        let pool = data_dir.join(POOL);
        fs::create_dir_all(&pool).map_err(|e| Error::io("creating", &pool, e))?;
        let mut locks = vec![lock(&pool)?];
        let legacy = legacy_dirs(data_dir)?;
        for (_, dir) in &legacy {
            locks.push(lock(dir)?);
        }
        Ok(Store {
            pool,
            legacy,
            _locks: locks,
        })
    }

    /// Opens the store only if it could hold something of `network`; creates nothing. For the
    /// verbs that only take away or look (DEL, GC, CHECK): one for a network this node never
    /// saw must not leave directories behind.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>> {
        let exists = |p: PathBuf| p.try_exists().map_err(|e| Error::io("looking for", &p, e));
        if exists(data_dir.join(POOL).join(LOCK))? || exists(data_dir.join(network).join(LOCK))? {
            Store::open(data_dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Every allocation, of every network, sorted by address.
    pub fn list(&self) -> Result<Vec<Allocation>> {
        let mut out = read_records(&self.pool, None)?;
        for (network, dir) in &self.legacy {
            out.extend(read_records(dir, Some(network))?);
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The allocation of (network, container, ifname), if any.
    pub fn find(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocation>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.is(network, container_id, ifname)))
    }

    /// Reserves the next free host address of `subnet` for (network, container, ifname).
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Allocation> {
        let ip = self
            .next_free(subnet, gateway)?
            .ok_or_else(|| Error::PoolExhausted(subnet.to_string()))?;
        let record = Record {
            network: Some(network.to_owned()),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        };
        let body = serde_json::to_vec(&record).map_err(|source| Error::Decode {
            what: "allocation record".into(),
            source,
        })?;
        self.write_atomic(&ip.to_string(), &body)?;
        self.write_atomic(LAST, ip.to_string().as_bytes())?;
        Ok(Allocation {
            ip,
            network: network.to_owned(),
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            file: self.pool.join(ip.to_string()),
        })
    }

    /// The address `allocate` would hand out next, or `None` if `subnet` is full.
    pub fn next_free(&self, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        let taken: Vec<Ipv4Addr> = self.list()?.into_iter().map(|a| a.ip).collect();
        let last = fs::read_to_string(self.pool.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| subnet.contains(ip));
        let first = u32::from(subnet.network()) + 1;
        let end = u32::from(subnet.broadcast()); // exclusive
        let span = end.saturating_sub(first);
        let start = last.map_or(first, |ip| u32::from(ip) + 1);
        Ok((0..span)
            .map(|i| Ipv4Addr::from(first + (start.saturating_sub(first) + i) % span))
            .find(|ip| *ip != gateway && !taken.contains(ip)))
    }

    /// Releases `alloc`; releasing one already gone is not an error.
    pub fn release(&self, alloc: &Allocation) -> Result<()> {
        match fs::remove_file(&alloc.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", &alloc.file, e))
            }
            Err(_) => {}
            Ok(()) => sync_dir(alloc.file.parent().unwrap_or(&self.pool))?,
        }
        if let Some((_, dir)) = self
            .legacy
            .iter()
            .find(|(_, d)| alloc.file.parent() == Some(d.as_path()))
        {
            if read_records(dir, Some(""))?.is_empty() {
                // Best effort: a leftover empty legacy directory costs a lock, nothing more.
                let _ = fs::remove_file(dir.join(LAST));
                let _ = fs::remove_file(dir.join(LOCK));
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// Writes `name` so that a crash or power loss leaves the old file or the new one, and a
    /// record the runtime was told about is on disk: the body is synced before the rename, and
    /// the directory after it (an allocation that vanished on reboot would hand its address to a
    /// second pod).
    fn write_atomic(&self, name: &str, body: &[u8]) -> Result<()> {
        use std::io::Write;
        let tmp = self.pool.join(format!(".{name}.tmp"));
        let path = self.pool.join(name);
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(body)?;
                f.sync_all()
            })
            .map_err(|e| Error::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("renaming", &tmp, e))?;
        sync_dir(&self.pool)
    }
}

/// Makes the entries of `dir` (a rename, a removal) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing", dir, e))
}

/// Takes the `flock` of store directory `dir`, waiting for it.
fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::io("locking", &path, errno.into()))
}

/// The per-network stores of earlier versions: `<dataDir>/<network>/lock`, in name order.
fn legacy_dirs(data_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(data_dir).map_err(|e| Error::io("listing", data_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", data_dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        if name != POOL && validate_name(&name).is_ok() && dir.join(LOCK).is_file() {
            out.push((name, dir));
        }
    }
    out.sort();
    Ok(out)
}

/// The records in `dir`; `legacy` names the network of a per-network directory.
fn read_records(dir: &Path, legacy: Option<&str>) -> Result<Vec<Allocation>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let bytes = fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        // A record we cannot read still holds its address; keep it allocated but unowned.
        let (network, container_id, ifname) = match serde_json::from_slice::<Record>(&bytes) {
            Ok(r) => (
                legacy.map(str::to_owned).or(r.network).unwrap_or_default(),
                r.container_id,
                r.ifname,
            ),
            Err(_) => Default::default(),
        };
        out.push(Allocation {
            ip,
            network,
            container_id,
            ifname,
            file: path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshd-cni-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn ip(h: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 0, h)
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let d = tmp("edges");
        let s = Store::open(&d).unwrap();
        let subnet: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                s.allocate(subnet, ip(1), "net", &format!("c{i}"), "eth0")
                    .unwrap(),
            );
        }
        let ips: Vec<Ipv4Addr> = got.iter().map(|a| a.ip).collect();
        assert_eq!(ips, (2..=6).map(ip).collect::<Vec<_>>());
        let full = s.allocate(subnet, ip(1), "net", "c9", "eth0").unwrap_err();
        assert_eq!(full.code(), 102);
        assert_eq!(s.next_free(subnet, ip(1)).unwrap(), None);
        assert_eq!(s.find("net", "c3", "eth0").unwrap().unwrap().ip, ip(5));
        s.release(&got[1]).unwrap();
        s.release(&got[1]).unwrap();
        assert_eq!(
            s.allocate(subnet, ip(1), "net", "c10", "eth0").unwrap().ip,
            ip(3)
        );
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn round_robin_does_not_reuse_at_once() {
        let d = tmp("rr");
        let s = Store::open(&d).unwrap();
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let a = s.allocate(subnet, ip(1), "net", "a", "eth0").unwrap();
        s.release(&a).unwrap();
        let b = s.allocate(subnet, ip(1), "net", "b", "eth0").unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(s.list().unwrap().len(), 1);
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn network_names_share_one_pool_and_keep_their_own_records() {
        let d = tmp("names");
        let s = Store::open(&d).unwrap();
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let a = s.allocate(subnet, ip(1), "neta", "c", "eth0").unwrap();
        let b = s.allocate(subnet, ip(1), "netb", "c", "eth0").unwrap();
        assert_ne!(a.ip, b.ip);
        assert_eq!(s.find("neta", "c", "eth0").unwrap(), Some(a));
        assert_eq!(s.find("netb", "c", "eth0").unwrap(), Some(b));
        assert_eq!(s.find("netc", "c", "eth0").unwrap(), None);
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn legacy_per_network_stores_are_honoured_then_removed() {
        let d = tmp("legacy");
        let old = d.join("meshd");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join(LOCK), b"").unwrap();
        fs::write(old.join(LAST), b"10.1.0.2").unwrap();
        fs::write(
            old.join("10.1.0.2"),
            br#"{"containerID":"old","ifname":"eth0"}"#,
        )
        .unwrap();
        let s = Store::open(&d).unwrap();
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let held = s.find("meshd", "old", "eth0").unwrap().unwrap();
        assert_eq!(held.ip, ip(2));
        assert_eq!(
            s.allocate(subnet, ip(1), "other", "new", "eth0")
                .unwrap()
                .ip,
            ip(3)
        );
        s.release(&held).unwrap();
        assert!(!old.exists(), "the emptied legacy store stays");
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn open_existing_creates_nothing() {
        let d = tmp("existing");
        assert!(Store::open_existing(&d, "net").unwrap().is_none());
        assert!(!d.exists());
        drop(Store::open(&d).unwrap());
        assert!(Store::open_existing(&d, "net").unwrap().is_some());
        assert!(!d.join("net").exists());
        fs::remove_dir_all(d).unwrap();
    }
}
