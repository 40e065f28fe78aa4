//! meshd's own nftables table, `inet meshd`: everything meshd asks of netfilter lives there and
//! nowhere else, so it never edits an operator's rules and an operator can read (`nft list
//! table inet meshd`) or remove it whole.
//!
//! The table is generated, never edited: [`Ruleset`] holds one field per job (the inner source
//! checks of kernel-received VXLAN, [`super::source_check`]; the kernel paths' traffic counters,
//! [`super::traffic`]; egress masquerade, [`super::egress`]; MSS clamping, [`super::mss`];
//! connection tracking skipped where nobody needs it, [`super::notrack`]), one
//! place composes it ([`super::table::Table::compose`]), and [`apply`] writes the whole table in
//! one `nft -f -` transaction, which replaces the previous one atomically: no packet ever meets
//! half a table, and however often meshd restarts there is one copy of each rule. A ruleset with
//! nothing in it removes the table. `meshd cleanup` removes it too. Nothing outside the table is
//! ever named.
//!
//! meshd drives the `nft` program rather than speak nf_tables netlink itself: the ruleset text
//! is what an operator reads, nft validates it, and the one maintained Rust binding (rustables)
//! is GPL-3. Detection is by trying: a node without `nft`, or whose kernel has no nf_tables,
//! fails [`apply`] with an [`NftError`] that says which, and the caller falls back.

use std::io::Write;
use std::process::{Command, Stdio};

use super::egress::Egress;
use super::mss::MssClamp;
use super::notrack::Notrack;
use super::source_check::VxlanSources;
use super::traffic::PeerTraffic;

/// The table's family and name.
pub(crate) const FAMILY: &str = "inet";
pub(crate) const TABLE: &str = "meshd";

/// Everything meshd keeps in its table, one field per job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ruleset {
    /// Inner-source checks of the VXLAN the kernel receives (cleartext, kernel VXLAN device).
    pub(crate) vxlan_sources: Option<VxlanSources>,
    /// Counters of the pod traffic kernel paths carry, per peer ([`super::traffic`]).
    pub(crate) traffic: Option<PeerTraffic>,
    /// Masquerade of pod traffic leaving the cluster (`masquerade = true`).
    pub(crate) egress: Option<Egress>,
    /// MSS clamping of SYNs into the overlay, per peer (`mss-clamping = true`).
    pub(crate) mss: Option<MssClamp>,
    /// Connection tracking skipped for the underlay and in-cluster traffic ([`super::notrack`]).
    pub(crate) notrack: Option<Notrack>,
}

impl Ruleset {
    pub(crate) fn is_empty(&self) -> bool {
        self.vxlan_sources.is_none()
            && self.traffic.is_none()
            && self.egress.is_none()
            && self.mss.is_none()
            && self.notrack.is_none()
    }

    /// The `nft -f` text that replaces the table with this ruleset: declare it (so the delete
    /// cannot fail), delete it, declare it anew, in one transaction.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n\
             \tcomment \"written by meshd: changes here are overwritten\"\n"
        );
        if let Some(v) = &self.vxlan_sources {
            v.declare(&mut out);
        }
        if let Some(t) = &self.traffic {
            t.declare(&mut out);
        }
        if let Some(e) = &self.egress {
            e.declare(&mut out);
        }
        if let Some(m) = &self.mss {
            m.declare(&mut out);
        }
        if let Some(n) = &self.notrack {
            n.declare(&mut out);
        }
        out.push_str("}\n");
        out
    }
}

/// Why nft did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NftError {
    /// The `nft` program is not installed (or not on the `PATH`).
    #[error("the nft program was not found (install nftables)")]
    Missing,
    /// nft ran and refused: its own words (no nf_tables in the kernel, no permission, …).
    #[error("nft: {0}")]
    Refused(String),
    /// Starting it or talking to it failed.
    #[error("running nft: {0}")]
    Io(String),
}

/// Write `r` as meshd's table (an empty ruleset removes the table).
pub(crate) fn apply(r: &Ruleset) -> Result<(), NftError> {
    if r.is_empty() {
        return remove().map(|_| ());
    }
    run(&["-f", "-"], Some(&r.text())).map(|_| ())
}

/// The table as nft's JSON, or `None` when there is none.
pub(crate) fn list() -> Result<Option<serde_json::Value>, NftError> {
    match run(&["-j", "list", "table", FAMILY, TABLE], None) {
        Ok(out) => serde_json::from_str(&out)
            .map(Some)
            .map_err(|e| NftError::Refused(format!("unreadable JSON: {e}"))),
        Err(NftError::Refused(why)) if absent(&why) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every table of the namespace, as nft's JSON: names only (`all = false`), or whole with
/// their rules and counters (`all = true`: one call instead of two while meshd's is the only
/// table, see [`super::notrack`]).
pub(crate) fn list_all(all: bool) -> Result<serde_json::Value, NftError> {
    let what = if all { "ruleset" } else { "tables" };
    let out = run(&["-j", "list", what], None)?;
    serde_json::from_str(&out).map_err(|e| NftError::Refused(format!("unreadable JSON: {e}")))
}

/// Whether a [`list_all`] answer holds meshd's table.
pub(crate) fn holds_table(listing: &serde_json::Value) -> bool {
    listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .is_some_and(|items| {
            items.iter().filter_map(|i| i.get("table")).any(|t| {
                t.get("family").and_then(|f| f.as_str()) == Some(FAMILY)
                    && t.get("name").and_then(|n| n.as_str()) == Some(TABLE)
            })
        })
}

/// Remove the table; whether there was one.
pub(crate) fn remove() -> Result<bool, NftError> {
    match run(&["delete", "table", FAMILY, TABLE], None) {
        Ok(_) => Ok(true),
        Err(NftError::Refused(why)) if absent(&why) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A named counter of the table, as nft lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counter {
    pub(crate) name: String,
    pub(crate) comment: String,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

#[cfg(test)]
impl Counter {
    /// A reading as a test writes it.
    pub(crate) fn of(name: &str, comment: &str, packets: u64) -> Counter {
        Counter {
            name: name.into(),
            comment: comment.into(),
            packets,
            bytes: 0,
        }
    }
}

/// The named counters of meshd's table in a [`list`] (or [`list_all`]) answer.
pub(crate) fn counters(table: &serde_json::Value) -> Vec<Counter> {
    let Some(items) = table.get("nftables").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("counter"))
        .filter(|c| {
            c.get("table")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t == TABLE)
        })
        .filter_map(|c| {
            Some(Counter {
                name: c.get("name")?.as_str()?.to_string(),
                comment: c
                    .get("comment")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                packets: c.get("packets")?.as_u64()?,
                bytes: c.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0),
            })
        })
        .collect()
}

/// nft's answer for a table that does not exist.
fn absent(why: &str) -> bool {
    why.contains("No such file or directory")
}

/// Run `nft ARGS` (fed `stdin`); its standard output, or why it failed (its first error line).
fn run(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Io(e.to_string()),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write shows as nft's own error below (it read a truncated ruleset).
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NftError::Io(e.to_string()))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err
        .lines()
        .find(|l| l.starts_with("Error"))
        .or_else(|| err.lines().next())
        .unwrap_or("failed without saying why");
    Err(NftError::Refused(first.trim().to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_ruleset_is_a_table_with_nothing_in_it_replaced_whole() {
        let text = Ruleset::default().text();
        assert!(
            text.starts_with("table inet meshd {}\ndelete table inet meshd\ntable inet meshd {\n")
        );
        assert!(text.ends_with("}\n"));
        assert!(Ruleset::default().is_empty());
    }

    #[test]
    fn counters_are_read_from_nfts_json() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"meshd","handle":2}},
            {"counter":{"family":"inet","name":"a","table":"meshd","handle":3,
              "comment":"x y","packets":7,"bytes":700}},
            {"counter":{"family":"inet","name":"b","table":"meshd","handle":4,
              "packets":0,"bytes":0}},
            {"chain":{"family":"inet","table":"meshd","name":"c","handle":1}}]}"#,
        )
        .unwrap();
        assert_eq!(
            counters(&json),
            vec![
                Counter {
                    name: "a".into(),
                    comment: "x y".into(),
                    packets: 7,
                    bytes: 700,
                },
                Counter {
                    name: "b".into(),
                    comment: String::new(),
                    packets: 0,
                    bytes: 0,
                }
            ]
        );
        assert!(counters(&serde_json::json!({})).is_empty());
    }
}
