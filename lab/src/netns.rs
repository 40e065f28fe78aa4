//! Network namespaces for the lab and the tests: made with iproute2 (the lab is a harness, not
//! the daemon), entered per thread with `setns` so probes run in-process.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Run a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Start `program args` inside namespace `ns` as a daemon of its own session (so a terminal's
/// Ctrl-C after `lab up` does not reach it), output to `log`. Returns its pid, which is the
/// program's: `ip netns exec` execs it.
pub fn spawn_daemon(
    ns: &str,
    program: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<u32> {
    crate::sandbox::spawn(ns, &crate::sandbox::Sandbox::default(), program, args, log)
}

/// Names of all named network namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Pids of processes whose network namespace is `ns`.
pub fn pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kill every process in `ns`, then delete it.
pub fn destroy(ns: &str) {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let pids = pids(ns);
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            // SAFETY: kill(2) with a pid we just listed; a stale pid only yields ESRCH.
            unsafe {
                libc::kill(*p, sig);
            }
        }
        for _ in 0..50 {
            if self::pids(ns).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Run `f` on a fresh thread inside namespace `ns`. Sockets it creates stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let handle = std::thread::spawn(move || -> Result<T> {
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}
