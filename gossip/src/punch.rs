//! Hole punch requests, as a node's record carries them (extension 6,
//! [`crate::NodeRecord::punch`]).

use serde::{Deserialize, Serialize};

/// Most hole punches one record asks at once; a record with no room left for them (every other
/// field at its bound, long names) publishes none, and the pair waits for a relay.
pub const MAX_PUNCH: usize = 2;

/// One hole punch asked of `peer` ([`crate::NodeRecord::punch`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PunchRequest {
    /// The peer asked (a member's name).
    pub peer: String,
    /// When both send, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}
