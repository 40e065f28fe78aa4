//! UDP → TUN, encrypted, step one: which peer's session a datagram is for.
//!
//! Demultiplexing (before any cryptography): data, responses and cookie replies by receiver
//! index ([`meshd_crypto::wire::local_index_of`]); initiations by the initiator's static key,
//! after the shared rate limiter admitted them ([`meshd_crypto::RateLimiter::check`], which
//! answers a flood with cookie replies) and [`meshd_crypto::identify_initiator`] found the key.
//! [`demux`] does all of that without I/O of its own: replies go through the RX context. The
//! session then decrypts, and the inner source is checked against the peer's subnet
//! (cryptokey routing), in [`super::Wireguard`]'s `receive`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use meshd_crypto::{identify_initiator, Admission, MessageType, WgDatagram};

use crate::datapath::Rx;
use crate::peers::wireguard::NodeCrypto;
use crate::routes::{PeerId, RouteTable};
use crate::stats::DropReason;

/// The peer a datagram is for, or `None` once it is dropped (counted) or answered.
pub(super) fn demux(
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
