//! The control socket: what an operator asks a running meshd to do, as opposed to what it
//! reports (the status socket, read-only). One request per connection, one line each way:
//!
//! ```text
//!   client → meshd   forget NAME\n
//!   meshd → client   ok <what was done>\n     or     error <why>\n
//! ```
//!
//! The socket is `control.sock` in the run directory, mode 0600, and meshd answers only a
//! client of its own user (or root), checked on the connection (`SO_PEERCRED`), so a mode
//! changed by hand opens nothing. The daemon side is `daemon::membership::control`.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The control socket's file name in the run directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line read (a verb and a node name fit many times over).
pub const MAX_REQUEST: usize = 256;

/// `meshd forget NAME`: asks the meshd of `run_dir` to forget the signing key `name` is bound
/// to, here and through gossip on every member. Returns meshd's answer.
pub fn forget(run_dir: &Path, name: &str) -> Result<String> {
    if !meshd_gossip::is_valid_name(name) {
        bail!(
            "`{}` is not a node name: {}",
            name.escape_default(),
            meshd_gossip::NAME_RULE
        );
    }
    request(run_dir, &format!("forget {name}"))
}

/// Sends one request line and returns the answer after `ok`; an `error` answer is the error.
fn request(run_dir: &Path, line: &str) -> Result<String> {
    let path = run_dir.join(CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {} (is meshd running, with gossip, and are you root?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .context("sending the request")?;
    let mut answer = String::new();
    BufReader::new(stream)
        .take(4096)
        .read_line(&mut answer)
        .context("reading meshd's answer")?;
    let answer = answer.trim_end();
    match answer.split_once(' ') {
        Some(("ok", what)) => Ok(what.to_owned()),
        Some(("error", why)) => bail!("meshd refused: {why}"),
        _ => bail!("meshd gave no answer (an older meshd without `forget`?)"),
    }
}
