//! What crosses the boundary to the daemon besides events: datagrams to send, and counters.

use std::net::SocketAddr;

/// A datagram to send. The daemon seals `payload` and sends it to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination gossip address.
    pub dst: SocketAddr,
    /// Plaintext datagram.
    pub payload: Vec<u8>,
}

/// Traffic and error counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams handed to [`crate::Gossip::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams returned by [`crate::Gossip::poll_transmit`].
    pub datagrams_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Envelopes, payloads or records that did not decode.
    pub decode_failures: u64,
    /// Envelopes of a kind this version does not know (from a newer node).
    pub unknown_kinds: u64,
    /// Payloads or records with trailing fields this version does not know.
    pub unknown_fields: u64,
    /// SWIM packets foca refused (stale, misaddressed, from ourselves, malformed).
    pub swim_errors: u64,
    /// Times we came back under a renewed identity after being declared down.
    pub rejoins: u64,
    /// Suspicions that ran out here while the data path vouched for the member, so that this
    /// node did not declare it down (see [`crate::Gossip::handle_evidence`]).
    pub downs_postponed: u64,
    /// Downs heard that were held on data-path evidence ([`crate::Event::MemberHeld`]).
    pub downs_held: u64,
    /// Records refused for a name that is not a valid node name.
    pub refused_bad_name: u64,
    /// Records refused for a generation implausibly far ahead.
    pub refused_generation: u64,
    /// Records refused for a signature by another key than the one their name is bound to:
    /// someone (a member) speaking for another.
    pub refused_impostor: u64,
    /// Unsigned records refused under a name already seen signed.
    pub refused_unsigned: u64,
    /// Records refused for a signature that does not verify.
    pub refused_bad_signature: u64,
    /// Records of new names refused while the name table was full.
    pub refused_full: u64,
    /// State requests refused over the serve budget.
    pub state_requests_refused: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub transmits_dropped: u64,
}

impl Counters {
    /// Records refused for any reason (impostors, bad names, far-ahead generations, ...).
    pub fn refused_records(&self) -> u64 {
        self.refused_bad_name
            + self.refused_generation
            + self.refused_impostor
            + self.refused_unsigned
            + self.refused_bad_signature
            + self.refused_full
    }
}
