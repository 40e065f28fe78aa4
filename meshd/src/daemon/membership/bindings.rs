//! The name → signing key bindings gossip learnt, kept in the state directory
//! (`bindings.json`) so that a restart keeps them.
//!
//! Why keep them: a binding is made on first sight, so a node that forgot them all at every
//! restart would bind again to whichever record under a name reached it first after the
//! restart, and a member racing the state dump with forged records could take names there.
//! Kept, a restarted node refuses an impostor from the first datagram, as its peers do. The
//! file is small (one line per member; departed names leave it with the member table, after
//! an hour) and written off the gossip thread, at most every [`SAVE_EVERY`], atomically
//! (a temporary file renamed over it), so a crash leaves the old one or the new one.
//!
//! A file that does not read is reported and replaced at the next save: the node then trusts
//! on first use again, as on its first start, which is what a lost file can cost.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshd_gossip::{is_valid_name, PUBLIC_KEY_LEN};

/// The file in the state directory.
pub(crate) const BINDINGS_FILE: &str = "bindings.json";
/// Writes at most this often: bindings change in bursts (a cluster joining).
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(5);

type Key = [u8; PUBLIC_KEY_LEN];

/// When the bindings were last saved, and which version of them.
pub(crate) struct Saver {
    path: PathBuf,
    saved: u64,
    at: Option<Instant>,
}

impl Saver {
    pub(crate) fn new(state_dir: &Path, loaded_version: u64) -> Self {
        Self {
            path: state_dir.join(BINDINGS_FILE),
            saved: loaded_version,
            at: None,
        }
    }

    /// Whether `version` should be written now.
    pub(crate) fn due(&self, version: u64, now: Instant) -> bool {
        version != self.saved && self.at.is_none_or(|t| now.duration_since(t) >= SAVE_EVERY)
    }

    /// Notes a save of `version` started at `now`; returns where to write.
    pub(crate) fn saving(&mut self, version: u64, now: Instant) -> PathBuf {
        self.saved = version;
        self.at = Some(now);
        self.path.clone()
    }
}

/// Reads the bindings saved in `state_dir`; none when there is no file. A file that does not
/// parse is an error (the caller logs it and starts without).
pub(crate) fn load(state_dir: &Path) -> Result<Vec<(String, Key)>> {
    let path = state_dir.join(BINDINGS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let map: BTreeMap<String, String> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    map.into_iter()
        .filter(|(name, _)| is_valid_name(name))
        .map(|(name, hex)| {
            let key = from_hex(&hex)
                .with_context(|| format!("{}: the key of `{name}`", path.display()))?;
            Ok((name, key))
        })
        .collect()
}

/// Writes `bindings` to `path` atomically (a temporary file, synced, renamed over it).
pub(crate) fn save(path: &Path, bindings: &[(String, Key)]) -> Result<()> {
    let map: BTreeMap<&str, String> = bindings
        .iter()
        .map(|(n, k)| (n.as_str(), to_hex(k)))
        .collect();
    let text = serde_json::to_string_pretty(&map)?;
    let tmp = path.with_extension("json.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

impl super::Membership {
    /// Persists the name bindings when they changed (off this thread: the write is synced).
    pub(super) fn save_bindings(&mut self) {
        let now = Instant::now();
        let (version, list) = {
            let shared = self.lock();
            let version = shared.gossip.bindings_version();
            if !self.saver.due(version, now) {
                return;
            }
            (version, shared.gossip.bindings())
        };
        let path = self.saver.saving(version, now);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = save(&path, &list) {
                tracing::warn!(error = %format!("{e:#}"), "cannot save the name bindings; retried at the next change");
            }
        });
    }
}

fn to_hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Result<Key> {
    anyhow::ensure!(
        s.len() == 2 * PUBLIC_KEY_LEN,
        "not {PUBLIC_KEY_LEN} bytes of hex"
    );
    let mut k = [0u8; PUBLIC_KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).unwrap_or("x"), 16).context("not hex")?;
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bindings_round_trip_and_bad_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("meshd-bindings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty());
        let b = vec![
            ("a".to_string(), [1u8; 32]),
            ("n-2".to_string(), [0xfe; 32]),
        ];
        save(&dir.join(BINDINGS_FILE), &b).unwrap();
        assert_eq!(load(&dir).unwrap(), b);
        std::fs::write(dir.join(BINDINGS_FILE), "{\"a\": \"zz\"}").unwrap();
        assert!(format!("{:#}", load(&dir).unwrap_err()).contains("`a`"));
        std::fs::write(dir.join(BINDINGS_FILE), "[").unwrap();
        assert!(load(&dir).is_err());
        // A name that is none now (an escape sequence) is dropped, not trusted.
        let bad = format!("{{\"x\\u001b\": \"{}\"}}", to_hex(&[1; 32]));
        std::fs::write(dir.join(BINDINGS_FILE), bad).unwrap();
        assert!(load(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        let mut s = Saver::new(&dir, 3);
        let t = Instant::now();
        assert!(!s.due(3, t) && s.due(4, t));
        s.saving(4, t);
        assert!(!s.due(5, t) && s.due(5, t + SAVE_EVERY));
    }
}
