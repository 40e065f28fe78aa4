//! Shared pieces of the end-to-end tests: where the binaries are, and per-test names.
//!
//! The tests themselves live in `e2e/`. Each builds its own topology through
//! [`meshd_lab::Topology`], under a name prefix unique to the test and the process, and the
//! topology's `Drop` removes it even when the test fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The `meshd` binary cargo built next to this test binary, or `$MESHD_BIN`.
pub fn meshd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHD_BIN") {
        return PathBuf::from(p);
    }
    sibling("meshd")
}

/// The `meshd-cni` binary cargo built next to this test binary, or `$MESHD_CNI_BIN`.
pub fn cni_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHD_CNI_BIN") {
        return PathBuf::from(p);
    }
    sibling("meshd-cni")
}

fn sibling(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// A name prefix unique to this test in this process: `<tag><pid>x<n>`. Short, because it ends
/// up in namespace names, and distinct, so parallel tests never share a namespace.
pub fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when the tests can build namespaces (root, /dev/net/tun). Tests fail rather than skip
/// when this is false: CI runs as root and a silent skip would hide a broken setup.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests need root (network namespaces, TUN devices)"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing"
    );
}
