#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! For tests against the real kernel: a network namespace of the test's own, made by
//! `unshare` on a fresh thread, so the namespace (and anything a failing test left in it) dies
//! with the thread.
//!
//! ```text
//!   test thread ── unshare(CLONE_NEWNET) ──► [ lo  (+ whatever the test makes) ]
//! ```

/// Runs `f` on a new thread in a new, empty network namespace, with a tokio runtime.
pub(crate) fn in_fresh_netns<T: Send + 'static>(
    f: impl FnOnce() -> futures::future::BoxFuture<'static, T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) on this thread only; the namespace goes when the thread does.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
    .join()
    .unwrap()
}
