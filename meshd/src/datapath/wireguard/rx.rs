//! UDP → TUN, encrypted: each datagram is demultiplexed to its peer, decrypted by that peer's
//! session and checked against the peer's subnet (cryptokey routing); the generic RX loop
//! queues what is delivered for one GRO-coalescing write to the TUN device.
//!
//! Demultiplexing (before any cryptography): data, responses and cookie replies by receiver
//! index ([`meshd_crypto::wire::local_index_of`]); initiations by the initiator's static key,
//! after the shared rate limiter admitted them ([`meshd_crypto::RateLimiter::check`], which
//! answers a flood with cookie replies) and [`meshd_crypto::identify_initiator`] found the key.
//! [`receive`] does all of that without I/O of its own: replies go through a callback.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use meshd_crypto::{identify_initiator, Action, Admission, MessageType, WgDatagram};

use crate::datapath::{Received, Rx};
use crate::peers::wireguard::NodeCrypto;
use crate::routes::{PeerId, RouteTable};
use crate::stats::DropReason;

/// Demultiplex, decrypt and check one datagram from `src`. Plaintext lands in `out`, which
/// must be at least as long as the datagram; `cx.scratch` ([`super::SCRATCH_LEN`] bytes) holds
/// replies, which go to `cx.reply`. Drops that belong to no peer go to `cx.drops`; the others
/// to the peer's counters.
pub fn receive(
    crypto: &NodeCrypto,
    cx: &mut Rx<'_, Vec<u8>>,
    table: &RouteTable,
    src: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
) -> Received {
    let Some(id) = demux(crypto, cx, table, src, datagram) else {
        return Received::Nothing;
    };
    let (scratch, reply) = (&mut cx.scratch, &mut cx.reply);
    let entry = table.peer(id);
    let Some(wg) = &entry.wg else {
        return Received::Nothing;
    };
    let mut session = wg.lock();
    match session.decapsulate(Some(src.ip()), datagram, out) {
        Action::WriteToTunnelV4(len, inner_src) => {
            if entry.subnet.contains(&inner_src) {
                return Received::Deliver { peer: id, len };
            }
            entry.stats.count_drop(DropReason::SpoofedSource, 1);
        }
        // No pod has an IPv6 address yet, so no IPv6 source is inside a peer's subnet.
        Action::WriteToTunnelV6(..) => entry.stats.count_drop(DropReason::SpoofedSource, 1),
        Action::WriteToNetwork(n) => {
            reply(&out[..n], src);
            // Packets queued while the handshake was under way go out now.
            while let Action::WriteToNetwork(n) = session.flush_queued(scratch) {
                reply(&scratch[..n], entry.endpoint);
            }
        }
        Action::Done => {}
        Action::Error(e) => entry.stats.count_drop(DropReason::from_session(e), 1),
    }
    Received::Nothing
}

/// The peer a datagram is for, or `None` once it is dropped (counted) or answered.
fn demux(
    crypto: &NodeCrypto,
    cx: &mut Rx<'_, Vec<u8>>,
    table: &RouteTable,
    src: SocketAddr,
    datagram: &[u8],
) -> Option<PeerId> {
    let drops = &mut cx.drops;
    let Ok(d) = WgDatagram::new_checked(datagram) else {
        drops.add(DropReason::Malformed);
        return None;
    };
    if d.message_type() != MessageType::Initiation {
        let index = d.receiver_index().map(meshd_crypto::wire::local_index_of);
        let id = index.and_then(|i| table.by_index(i));
        if id.is_none() {
            drops.add(DropReason::UnknownIndex);
        }
        return id;
    }
    match crypto
        .limiter
        .check(Some(src.ip()), datagram, &mut cx.scratch)
    {
        Admission::Accept => {}
        Admission::CookieReply(n) => {
            (cx.reply)(&cx.scratch[..n], src);
            crypto.cookie_replies.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Admission::Reject(e) => {
            drops.add(DropReason::from_session(e));
            return None;
        }
    }
    let id = identify_initiator(&crypto.private, &crypto.public, datagram)
        .and_then(|key| table.by_key(&key));
    if id.is_none() {
        drops.add(DropReason::HandshakeRejected);
    }
    id
}
