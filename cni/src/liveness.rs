//! Is meshd alive? Only a live daemon answers its control socket.
//!
//! `network.json` outlives the daemon (a crash, `kill -9`, a stopped container), and the `pid` in
//! it proves nothing: in a PID namespace of its own meshd is pid 1, and `/proc/1` always exists;
//! after a crash the pid may belong to another process. So liveness is an answer: connect to
//! `<runtimeDir>/meshd.sock`, where meshd answers every connection with one JSON status document
//! and closes it (`meshd/src/status/server.rs`), and read that document before a deadline. A
//! socket file left by a dead daemon refuses the connection; a hung daemon has its connection
//! queued by the kernel but never writes, and the deadline ends the wait.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde_json::Value;

/// The control socket in the runtime directory (meshd's `runfiles::SOCKET_NAME`; checked
/// against meshd's status server by `tests/e2e/contract.rs`).
pub const SOCKET_NAME: &str = "meshd.sock";

/// How long meshd may take to accept and answer, in all. It builds the document from memory in
/// its accept loop, well under a millisecond on an idle node; 2 s leaves room for a loaded node
/// and stays far inside a runtime's CNI timeout (containerd and CRI-O allow minutes).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer we read: the document grows by about 1 KiB per peer.
const MAX_ANSWER: usize = 16 << 20;

/// Why meshd is not live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLive {
    pub socket: PathBuf,
    pub why: String,
}

impl std::fmt::Display for NotLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "meshd does not answer on {}: {}",
            self.socket.display(),
            self.why
        )
    }
}

/// Asks meshd for its status document; `Ok` only if a live meshd sent one in time.
pub fn probe(runtime_dir: &Path) -> Result<(), NotLive> {
    let socket = runtime_dir.join(SOCKET_NAME);
    let fail = |why: String| NotLive {
        socket: socket.clone(),
        why,
    };
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut stream = connect_within(&socket, ANSWER_TIMEOUT).map_err(|e| {
        fail(match e {
            Errno::ENOENT => "there is no control socket (meshd is not running)".into(),
            Errno::ECONNREFUSED => {
                "nothing listens on it (meshd stopped or crashed and left it behind)".into()
            }
            Errno::EAGAIN | Errno::ETIMEDOUT => {
                format!("its queue is full and did not drain within {ANSWER_TIMEOUT:?}")
            }
            other => format!("connecting: {}", other.desc()),
        })
    })?;
    let mut body = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timed_out = || {
            fail(format!(
                "no answer within {ANSWER_TIMEOUT:?} (meshd is hung)"
            ))
        };
        if left.is_zero() {
            return Err(timed_out());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(format!("setting a read timeout: {e}")))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                body.extend_from_slice(&buf[..n]);
                if body.len() > MAX_ANSWER {
                    return Err(fail(format!("its answer exceeds {MAX_ANSWER} bytes")));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) => return Err(fail(format!("reading its answer: {e}"))),
        }
    }
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| fail(format!("its answer is not a status document: {e}")))?;
    if !doc.get("node").is_some_and(Value::is_string) {
        return Err(fail(
            "its answer is not meshd's status document (no \"node\")".into(),
        ));
    }
    Ok(())
}

/// Connects to a Unix stream socket, waiting at most `timeout`. Connecting to a live listener
/// completes at once; when its accept queue is full (a daemon that stopped accepting) the kernel
/// would block for ever, but it waits no longer than the socket's send timeout.
fn connect_within(path: &Path, timeout: Duration) -> nix::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::milliseconds(millis))?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("meshd-cni-live-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_answering_socket_is_live_and_anything_else_is_not() {
        let d = dir("answer");
        assert!(probe(&d).unwrap_err().why.contains("no control socket"));

        let listener = UnixListener::bind(d.join(SOCKET_NAME)).unwrap();
        let server = std::thread::spawn(move || {
            for body in [
                &br#"{"node":"a","pid":1}"#[..],
                b"not json",
                br#"{"pid":1}"#,
            ] {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(body).unwrap();
            }
            // Dropping the listener leaves the socket file behind, as a crash does.
        });
        probe(&d).unwrap();
        assert!(probe(&d).unwrap_err().why.contains("not a status document"));
        assert!(probe(&d).unwrap_err().why.contains("no \"node\""));
        server.join().unwrap();
        let e = probe(&d).unwrap_err();
        assert!(e.why.contains("nothing listens"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_hung_daemon_is_not_live() {
        let d = dir("hung");
        // Bound and listening, so connections are queued, but nothing ever accepts them.
        let _listener = UnixListener::bind(d.join(SOCKET_NAME)).unwrap();
        let e = probe(&d).unwrap_err();
        assert!(e.why.contains("no answer within"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
