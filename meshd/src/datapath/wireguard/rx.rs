//! UDP → TUN, encrypted, step one: which peer's session a datagram is for.
//!
//! Demultiplexing (before any cryptography): data, responses and cookie replies by receiver
//! index ([`meshd_crypto::wire::local_index_of`]); initiations by the initiator's static key,
//! after the shared rate limiter admitted them ([`meshd_crypto::RateLimiter::check`], which
//! answers a flood with cookie replies) and [`meshd_crypto::identify_initiator`] found the key.
//! [`demux`] does all of that without I/O of its own: replies go through the RX context. The
//! session then decrypts, and the inner source is checked against the peer's subnet
//! (cryptokey routing), in [`super::Wireguard`]'s `receive`.
//!
//! What it refuses it also remembers, for the control thread to repair: data from a peer's
//! address on a session we no longer have flags that peer for a handshake, unless its session
//! authenticated it lately ([`crate::peers::wireguard::WgPeer::unknown_index`]: the index is
//! not authenticated, so anyone can send such data), and an initiator that is no peer is
//! noted, within a limit per source address ([`crate::peers::rejected`]), in case it becomes
//! one moments later. Neither lets a stranger make the node do work beyond fixed rates.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use meshd_crypto::{identify_initiator, Admission, MessageType, WgDatagram};

use crate::datapath::Rx;
use crate::peers::wireguard::NodeCrypto;
use crate::routes::{PeerId, RouteTable};
use crate::stats::{DropReason, Stamp};

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
    let kind = d.message_type();
    if kind != MessageType::Initiation {
        let index = d.receiver_index().map(meshd_crypto::wire::local_index_of);
        let id = index.and_then(|i| table.by_index(i));
        if id.is_none() {
            drops.add(DropReason::UnknownIndex);
            if kind == MessageType::Data {
                lost_session(table, src, cx.now);
            }
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
    let key = identify_initiator(&crypto.private, &crypto.public, datagram);
    let id = key.and_then(|key| table.by_key(&key));
    if id.is_none() {
        drops.add(DropReason::HandshakeRejected);
        if let Some(key) = key {
            // Perhaps a member we have not learnt yet: see `crate::peers::rejected`.
            crypto.rejected.note(&key, src.ip(), cx.now);
        }
    }
    id
}

/// Data from a peer's address on a session we do not have: the peer kept a session we dropped
/// (or lost in a restart), and keeps sending on it until its own timers give up, 15 s later.
/// Ask for a handshake now, unless the session we have authenticated the peer lately (see
/// [`crate::peers::wireguard::AUTHENTICATED_RECENTLY`]); the control thread starts it (at
/// most one a second per peer).
#[inline]
fn lost_session(table: &RouteTable, src: SocketAddr, now: Stamp) {
    if let Some(wg) = table
        .by_source(src.ip())
        .and_then(|id| table.peer(id).wg.as_ref())
    {
        wg.unknown_index(now);
    }
}
