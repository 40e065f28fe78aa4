//! The control thread's part of NAT traversal: keepalives that hold a NAT's mapping open, and
//! handshakes sent to every candidate while no endpoint works.
//!
//! **Keepalives.** A pair behind a NAT (either side, [`crate::link::PeerLink::one_flow`]) gets
//! an empty WireGuard data message whenever nothing was sent to the peer for the interval
//! (`wireguard.nat-keepalive`, 25 s by default: well under the 30 s some NATs keep an idle UDP
//! mapping, and the minutes most do). Without a session, it is a handshake initiation
//! instead, and the first goes out as soon as the pair is known to be behind a NAT: that makes
//! the mapping the peer's answers need. A public pair sends none.
//!
//! **Candidates.** A handshake initiation goes to the endpoint in use, and, while that
//! endpoint authenticated nothing lately ([`crate::link::endpoint::WORKING`]), to each of the
//! peer's other candidates too: its advertised address (reachable on a shared private
//! network), the public endpoints others observed it at. The same initiation sent twice is
//! harmless (one response completes it), and whichever candidate answers becomes the endpoint
//! in use by roaming. What a member reports thereby only adds addresses to try; it never moves
//! a working endpoint. A peer's public endpoints (its NAT's, learned or observed) are left out:
//! they get initiations in hole punching's coordinated bursts only ([`burst`]); a node behind a
//! NAT reaches public peers itself, with the keepalive it starts once it knows of its NAT.
//!
//! **Relays.** When the endpoint in use moves to a relay port, the handshake in flight goes
//! there at once ([`to_relay`]); while relayed, handshakes also go to the other candidates.
//!
//! **Bursts.** When the pair's punch schedule ([`crate::link::punch`]) has a burst armed and
//! its start has come, each control tick sends a handshake initiation (a new one, or the one in
//! flight again) to the peer's public endpoints, [`crate::link::punch::SHOTS`] ticks running.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshd_crypto::{Action, MessageType, WgDatagram};

use crate::peers::wireguard::WgPeer;
use crate::peers::EndpointSource;
use crate::routes::PeerEntry;
use crate::stats::{DropReason, Stamp};

/// Other candidates an initiation is also sent to, at most.
const MAX_TRIED: usize = 8;

/// A keepalive (or, without a session, a handshake initiation) for `peer` when the pair is
/// behind a NAT and nothing was sent to it for `every`; else `Done`.
pub(super) fn keepalive(
    peer: &PeerEntry,
    wg: &WgPeer,
    every: Option<Duration>,
    now: Stamp,
    out: &mut [u8],
) -> Action {
    let Some(every) = every.filter(|_| peer.one_flow()) else {
        peer.keepalive_at.store(0, Ordering::Relaxed);
        return Action::Done;
    };
    let mut session = wg.lock();
    let sent = session.data_sent();
    let seen = peer.keepalive_seen.swap(sent, Ordering::Relaxed);
    let last = Stamp::from_raw(peer.keepalive_at.load(Ordering::Relaxed));
    match last {
        // Just found behind a NAT: make the mapping now.
        None => {}
        Some(_) if seen != sent => {
            peer.keepalive_at.store(now.raw(), Ordering::Relaxed);
            return Action::Done;
        }
        Some(t) if t.age(now) < every => return Action::Done,
        Some(_) => {}
    }
    peer.keepalive_at.store(now.raw(), Ordering::Relaxed);
    let _span = wg.span.enter();
    if session.stats().last_handshake.is_none() {
        tracing::debug!(peer = %peer.name, "behind a NAT, no session: handshake to make the mapping");
        return session.initiate_handshake(out);
    }
    session.encapsulate(&[], out)
}

/// Sends what the timers produced to the peer's endpoint; a handshake initiation also to its
/// other candidates while the endpoint in use authenticated nothing lately.
pub(super) fn send(socket: &UdpSocket, peer: &PeerEntry, datagram: &[u8], now: Stamp) {
    let to = peer.endpoint();
    if let Err(e) = socket.send_to(datagram, to) {
        tracing::trace!(error = %e, peer = %peer.name, "timer send");
        peer.stats.count_drop(DropReason::SendError, 1);
    }
    let initiation = WgDatagram::new_checked(datagram)
        .is_ok_and(|d| d.message_type() == MessageType::Initiation);
    if !initiation {
        return;
    }
    *peer
        .last_initiation
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = datagram.to_vec();
    if peer.ep.working(now) && !peer.ep.relayed() {
        return;
    }
    // The peer's public endpoints (its NAT's) are tried in punch bursts only: a NAT passes
    // nothing there until its node sent to us, which it does as soon as it knows it is behind
    // one (its keepalive), and an early handshake there would open our own NAT outside the
    // punch schedule. With punching off (the test switch), never.
    let mut tried = vec![to];
    for c in peer.candidates() {
        let public = matches!(
            c.source,
            EndpointSource::Learned | EndpointSource::ObservedBy(_)
        );
        if tried.len() > MAX_TRIED || tried.contains(&c.addr) || public {
            continue;
        }
        tried.push(c.addr);
        if let Err(e) = socket.send_to(datagram, c.addr) {
            tracing::trace!(error = %e, peer = %peer.name, to = %c.addr, "handshake to a candidate");
        }
    }
}

/// The endpoint in use just moved to a relay port (no direct path works): the handshake in
/// flight, if any, goes there at once. boringtun would send its retry only after 5 s, and the
/// one in flight went to endpoints that do not answer. Each relay port newly offered for the
/// pair gets it too, once: a relay learns a side's port from its first datagram, so every relay
/// then forwards both ways, whichever the peer chose (the two may have chosen apart while one
/// held fewer offers). The same initiation twice is harmless (a responder that saw it refuses
/// the replay).
pub(super) fn to_relay(socket: &UdpSocket, peer: &PeerEntry) {
    let mut to = peer.ep.take_fresh_offers();
    if peer.ep.take_moved_to_relay() {
        to.push(peer.endpoint());
    }
    if to.is_empty() {
        return;
    }
    to.sort();
    to.dedup();
    let cached = peer
        .last_initiation
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if cached.is_empty() {
        return;
    }
    for to in to {
        tracing::debug!(peer = %peer.name, %to, "a relay port for the pair: the handshake in flight sent there");
        if let Err(e) = socket.send_to(&cached, to) {
            tracing::trace!(error = %e, peer = %peer.name, %to, "handshake to the relay");
        }
    }
}

/// One shot of the pair's armed punch burst, if its start has come: a handshake initiation
/// (a new one, or the one in flight again: the same initiation twice is harmless) to each of
/// the peer's public endpoints and its own port at their addresses
/// ([`crate::link::PeerLink::punch_targets`]), at most [`MAX_TRIED`]. Once a punch worked
/// here, one keepalive to the peer, so that it hears this node too.
pub(super) fn burst(socket: &UdpSocket, peer: &PeerEntry, wg: &WgPeer, out: &mut [u8]) {
    let (shoot, hello) = {
        let mut st = peer.punch.lock();
        (
            st.shoot(crate::link::punch::now_ms()),
            std::mem::take(&mut st.hello),
        )
    };
    if hello {
        if let Action::WriteToNetwork(n) = wg.lock().encapsulate(&[], out) {
            if let Err(e) = socket.send_to(&out[..n], peer.endpoint()) {
                tracing::trace!(error = %e, peer = %peer.name, "hole punch keepalive");
            }
        }
    }
    if !shoot {
        return;
    }
    let fresh = {
        let _span = wg.span.enter();
        match wg.lock().initiate_handshake(out) {
            Action::WriteToNetwork(n) => Some(n),
            _ => None,
        }
    };
    let mut cached = peer
        .last_initiation
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = fresh {
        *cached = out[..n].to_vec();
    }
    if cached.is_empty() {
        return;
    }
    for to in peer.punch_targets().into_iter().take(MAX_TRIED) {
        tracing::trace!(peer = %peer.name, %to, "hole punch: handshake initiation");
        if let Err(e) = socket.send_to(&cached, to) {
            tracing::trace!(error = %e, peer = %peer.name, %to, "hole punch send");
        }
    }
}
