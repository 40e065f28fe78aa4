//! Entering the container's network namespace safely.
//!
//! `setns` changes the namespace of the calling thread only, so work in the container runs on
//! a dedicated thread that exits afterwards: no other thread, and no later code on this one,
//! can end up in the wrong namespace. `CNI_NETNS` may be `/proc/PID/ns/net` or a bind mount
//! (`/var/run/netns/NAME`); either way we open it and check it is a network namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::error::{Error, Result};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens `path`; [`Error::UnknownContainer`] if it does not exist.
    pub fn open(path: &str) -> Result<Netns> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::UnknownContainer(format!("network namespace {path} does not exist"))
            } else {
                Error::io("opening network namespace", Path::new(path), e)
            }
        })?;
        let fs =
            fstatfs(file.as_fd()).map_err(|e| Error::io("statfs", Path::new(path), e.into()))?;
        let kind = fs.filesystem_type();
        if kind != NSFS_MAGIC {
            return Err(Error::InvalidEnv {
                var: "CNI_NETNS",
                why: format!("{path} is not a namespace file"),
            });
        }
        Ok(Netns {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens `path` if it names a namespace that still exists; `None` if it is gone.
    pub fn open_if_exists(path: &str) -> Result<Option<Netns>> {
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(Error::UnknownContainer(_)) => Ok(None),
            // A bind-mount target whose namespace died is an empty regular file.
            Err(Error::InvalidEnv { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The path the runtime gave.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw fd, for netlink's `IFLA_NET_NS_FD`.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        std::thread::scope(|scope| {
            let joined = scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(
                            "entering network namespace",
                            Path::new(&self.path),
                            e.into(),
                        )
                    })?;
                    f()
                })
                .join();
            match joined {
                Ok(r) => r,
                Err(_) => Err(Error::Io {
                    what: format!("worker thread in {} panicked", self.path),
                    source: std::io::Error::other("panic"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn own_namespace_opens_and_runs() {
        let ns = Netns::open("/proc/self/ns/net").unwrap();
        assert_eq!(ns.run(|| Ok(7)).unwrap(), 7);
    }

    #[test]
    fn missing_and_non_namespace_paths() {
        assert_eq!(Netns::open("/nonexistent/ns").unwrap_err().code(), 3);
        assert!(Netns::open_if_exists("/nonexistent/ns").unwrap().is_none());
        assert_eq!(Netns::open("/etc/hostname").unwrap_err().code(), 4);
    }
}
