//! Helpers shared by the end-to-end tests.

use meshd::status::Status;

/// How many packets `peer` (or, with `None`, no peer) dropped for `reason`, per a status.
pub fn drops(s: &Status, peer: Option<&str>, reason: &str) -> u64 {
    let stats = match peer {
        Some(name) => &s.peers.iter().find(|p| p.name == name).unwrap().stats,
        None => &s.unattributed,
    };
    stats
        .drops
        .iter()
        .find(|(r, _)| r == reason)
        .map_or(0, |(_, n)| *n)
}
