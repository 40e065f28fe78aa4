//! Starting meshd the way a service manager would confine it, so a test can run it under the
//! shipped systemd unit's limits: a command in front of it (`setpriv` with the unit's capability
//! sets) and a seccomp filter that lets `socket(2)` open only the listed address families,
//! failing the rest with `EAFNOSUPPORT`, which is what systemd's `RestrictAddressFamilies=`
//! installs. The filter is set up in the child before `ip netns exec` runs and is inherited by
//! everything it starts: `ip`, the wrapper, meshd and meshd's own children (`nft`).

use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// How meshd is confined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// The program and arguments meshd is started through, inside the namespace
    /// (`setpriv --bounding-set=… --ambient-caps=…`).
    pub wrapper: Vec<String>,
    /// The address families `socket(2)` may open (`libc::AF_*`); `None`: no filter.
    pub address_families: Option<Vec<i32>>,
}

/// `ip netns exec NS [wrapper…] PROGRAM ARGS` in a session of its own, confined by `sandbox`,
/// output to `log`; its pid (the exec chain keeps it: it is meshd's).
pub fn spawn(
    ns: &str,
    sandbox: &Sandbox,
    program: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(&sandbox.wrapper)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let filter = sandbox.address_families.as_deref().map(family_filter);
    // SAFETY: setsid and prctl are async-signal-safe and touch only the child; the filter was
    // built before the fork and is only read here.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if let Some(f) = &filter {
                let prog = libc::sock_fprog {
                    len: f.len() as u16,
                    filter: f.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} in {ns}", program.display()))?;
    Ok(child.id())
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Offsets in `struct seccomp_data`: the call number, the architecture, the first argument's
/// low 32 bits (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;

/// The classic BPF program: `socket(family, …)` with a family not in `families` fails with
/// `EAFNOSUPPORT`; every other call (and every call of another architecture) is allowed.
fn family_filter(families: &[i32]) -> Vec<libc::sock_filter> {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = families.len() as u8;
    let mut f = vec![
        op(LD_W_ABS, 0, 0, ARCH),
        // Another architecture: allow (jump over everything to the last instruction).
        op(JEQ_K, 0, 3 + n + 1, AUDIT_ARCH),
        op(LD_W_ABS, 0, 0, NR),
        op(JEQ_K, 0, 1 + n + 1, libc::SYS_socket as u32),
        op(LD_W_ABS, 0, 0, ARG0),
    ];
    for (i, fam) in families.iter().enumerate() {
        // Jump to the allow at the end: past the remaining compares and the errno return.
        f.push(op(JEQ_K, n - i as u8, 0, *fam as u32));
    }
    f.push(op(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32,
    ));
    f.push(op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_filter_jumps_land_on_allow_or_errno() {
        let f = family_filter(&[libc::AF_UNIX, libc::AF_INET]);
        let last = f.len() - 1;
        assert_eq!(f[last].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(
            f[last - 1].k,
            libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        // Each conditional jump's false branch (arch, call number) lands on the allow, each
        // family's true branch too.
        assert_eq!(1 + 1 + usize::from(f[1].jf), last);
        assert_eq!(3 + 1 + usize::from(f[3].jf), last);
        for (i, op) in f.iter().enumerate().skip(5).take(2) {
            assert_eq!(i + 1 + usize::from(op.jt), last, "family compare {i}");
        }
    }
}
