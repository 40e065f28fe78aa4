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
}
