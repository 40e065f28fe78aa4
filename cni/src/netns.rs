//! Entering the container's network namespace safely.
//!
//! `setns` changes the namespace of the calling thread only, so work in the container runs on
//! a dedicated thread that exits afterwards: no other thread, and no later code on this one,
//! can end up in the wrong namespace. `CNI_NETNS` may be `/proc/PID/ns/net` or a bind mount
//! (`/var/run/netns/NAME`); either way we open it and check it is a network namespace, and not
//! the node's own: wiring the node's namespace to its own bridge would cut the node off.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;

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
    /// Opens `path`: [`Error::UnknownContainer`] if it does not exist, [`Error::InvalidEnv`]
    /// (code 4, naming `CNI_NETNS`) if it is not a network namespace or is the node's own.
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
        let invalid = |why: String| Error::InvalidEnv {
            var: "CNI_NETNS",
            why,
        };
        if kind != NSFS_MAGIC {
            return Err(invalid(format!("{path} is not a namespace file")));
        }
        let ns = Netns {
            file,
            path: path.to_owned(),
        };
        // Every namespace file is on nsfs (`/proc/PID/ns/mnt` too); only the kernel knows the
        // type, and it tells by letting a thread join the namespace as a network namespace.
        match ns.run(|| Ok(())) {
            Err(Error::Io { source, .. })
                if source.raw_os_error() == Some(Errno::EINVAL as i32) =>
            {
                return Err(invalid(format!("{path} is not a network namespace")));
            }
            other => other?,
        }
        let own = Path::new("/proc/thread-self/ns/net");
        let own = own.metadata().map_err(|e| Error::io("stat", own, e))?;
        let theirs = ns
            .file
            .metadata()
            .map_err(|e| Error::io("stat", Path::new(path), e))?;
        if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
            return Err(invalid(format!(
                "{path} is the node's own network namespace, not a pod's"
            )));
        }
        Ok(ns)
    }

    /// Opens `path` if it names a namespace that still exists; `None` if it is gone.
    pub fn open_if_exists(path: &str) -> Result<Option<Netns>> {
        match Netns::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(Error::UnknownContainer(_)) => Ok(None),
            // A bind-mount target whose namespace died is an empty regular file; and a path that
            // is no pod's network namespace holds nothing of ours to take apart.
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
    fn the_nodes_own_namespace_is_refused() {
        let e = Netns::open("/proc/self/ns/net").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("node's own"), "{e}");
        assert!(Netns::open_if_exists("/proc/self/ns/net")
            .unwrap()
            .is_none());
    }

    #[test]
    fn missing_and_non_namespace_paths() {
        assert_eq!(Netns::open("/nonexistent/ns").unwrap_err().code(), 3);
        assert!(Netns::open_if_exists("/nonexistent/ns").unwrap().is_none());
        assert_eq!(Netns::open("/etc/hostname").unwrap_err().code(), 4);
        // A namespace, but not a network one (joining it needs root, as the plugin runs).
        let e = Netns::open("/proc/self/ns/uts").unwrap_err();
        assert_eq!(e.code(), 4, "{e}");
        assert!(e.to_string().contains("not a network namespace"), "{e}");
    }
}
