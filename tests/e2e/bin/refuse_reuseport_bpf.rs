//! `refuse-reuseport-bpf [/PROGRAM] ARGS...`: runs `PROGRAM` (an absolute path; by default the
//! `meshd` next to this binary, or `$MESHD_BIN`) with ARGS under a seccomp filter that makes the kernel refuse
//! `setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF)` with EPERM, and nothing else: a kernel
//! that will not steer a reuseport group, staged for real rather than pretended in meshd.
//!
//! Used as a lab's `meshd_bin`: `ip netns exec NS refuse-reuseport-bpf run --config …`. When
//! the first argument is not an absolute path to a file, it is an argument of meshd's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Offsets in `struct seccomp_data`: nr, arch, then the arguments (64 bits each, the low half
/// first on these little-endian machines).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG1: u32 = 16 + 8;
const ARG2: u32 = 16 + 2 * 8;

fn main() {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let program = match args.first().map(PathBuf::from) {
        Some(p) if p.is_absolute() && p.is_file() => {
            args.remove(0);
            p
        }
        _ => std::env::var_os("MESHD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("meshd")),
    };
    refuse_reuseport_bpf();
    let e = std::process::Command::new(&program).args(&args).exec();
    panic!("exec {}: {e}", program.display());
}

fn refuse_reuseport_bpf() {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // Anything but setsockopt(_, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, …) jumps to ALLOW.
    let mut prog = [
        op(LD_W_ABS, 0, 0, ARCH),
        op(JEQ_K, 0, 7, AUDIT_ARCH),
        op(LD_W_ABS, 0, 0, NR),
        op(JEQ_K, 0, 5, libc::SYS_setsockopt as u32),
        op(LD_W_ABS, 0, 0, ARG1),
        op(JEQ_K, 0, 3, libc::SOL_SOCKET as u32),
        op(LD_W_ABS, 0, 0, ARG2),
        op(JEQ_K, 0, 1, libc::SO_ATTACH_REUSEPORT_CBPF as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with constant options; the filter outlives the call, which copies it.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}
