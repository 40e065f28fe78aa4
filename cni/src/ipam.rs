//! Built-in address allocation from the node subnet, persisted in the data directory.
//!
//! Layout: `<dataDir>/<network>/lock` (held with `flock` for the whole invocation, so concurrent
//! ADDs, DELs and GCs serialise), one file per allocated address named after it whose content is
//! `{"containerID":…,"ifname":…}`, and `last_reserved` so allocation goes round-robin and a
//! freed address is not handed out again at once. Never hands out the network address, the
//! gateway or the broadcast address.

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const LOCK: &str = "lock";
const LAST: &str = "last_reserved";

/// One allocation: who holds which address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(skip)]
    pub ip: Option<Ipv4Addr>,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The allocation store of one network, locked for as long as it lives.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) and exclusively locks the store of `network`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("locking", &path, errno.into()))?;
        Ok(Store { dir, _lock: lock })
    }

    /// Every allocation in the store.
    pub fn list(&self) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &self.dir, e))?;
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
            let mut a = serde_json::from_slice::<Allocation>(&bytes).unwrap_or(Allocation {
                ip: None,
                container_id: String::new(),
                ifname: String::new(),
            });
            a.ip = Some(ip);
            out.push(a);
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The address held by (container, ifname), if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .and_then(|a| a.ip))
    }

    /// Reserves the next free host address of `subnet` for (container, ifname).
    pub fn allocate(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr> {
        let taken: Vec<Ipv4Addr> = self.list()?.into_iter().filter_map(|a| a.ip).collect();
        let last = fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| subnet.contains(ip));
        let first = u32::from(subnet.network()) + 1;
        let end = u32::from(subnet.broadcast()); // exclusive
        let span = end.saturating_sub(first);
        let start = last.map_or(first, |ip| u32::from(ip) + 1);
        for i in 0..span {
            let candidate = first + (start - first + i) % span;
            let ip = Ipv4Addr::from(candidate);
            if ip == gateway || taken.contains(&ip) {
                continue;
            }
            let record = Allocation {
                ip: None,
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            };
            let body = serde_json::to_vec(&record).map_err(|source| Error::Decode {
                what: "allocation record".into(),
                source,
            })?;
            self.write_atomic(&ip.to_string(), &body)?;
            self.write_atomic(LAST, ip.to_string().as_bytes())?;
            return Ok(ip);
        }
        Err(Error::PoolExhausted(subnet.to_string()))
    }

    /// Releases `ip`; releasing a free address is not an error.
    pub fn release(&self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", &path, e))
            }
            _ => Ok(()),
        }
    }

    fn write_atomic(&self, name: &str, body: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(name);
        fs::write(&tmp, body).map_err(|e| Error::io("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("renaming", &tmp, e))
    }
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

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let d = tmp("edges");
        let s = Store::open(&d, "net").unwrap();
        let subnet: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let gw = Ipv4Addr::new(10, 1, 0, 1);
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(s.allocate(subnet, gw, &format!("c{i}"), "eth0").unwrap());
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|h| Ipv4Addr::new(10, 1, 0, h)).collect();
        assert_eq!(got, want);
        assert_eq!(
            s.allocate(subnet, gw, "c9", "eth0").unwrap_err().code(),
            102
        );
        assert_eq!(
            s.find("c3", "eth0").unwrap(),
            Some(Ipv4Addr::new(10, 1, 0, 5))
        );
        s.release(Ipv4Addr::new(10, 1, 0, 3)).unwrap();
        s.release(Ipv4Addr::new(10, 1, 0, 3)).unwrap();
        assert_eq!(
            s.allocate(subnet, gw, "c10", "eth0").unwrap(),
            Ipv4Addr::new(10, 1, 0, 3)
        );
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn round_robin_does_not_reuse_at_once() {
        let d = tmp("rr");
        let s = Store::open(&d, "net").unwrap();
        let subnet: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let gw = Ipv4Addr::new(10, 1, 0, 1);
        let a = s.allocate(subnet, gw, "a", "eth0").unwrap();
        s.release(a).unwrap();
        let b = s.allocate(subnet, gw, "b", "eth0").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.list().unwrap().len(), 1);
        drop(s);
        fs::remove_dir_all(d).unwrap();
    }
}
