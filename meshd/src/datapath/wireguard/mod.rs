//! Standard WireGuard between nodes as an [`Encap`], through `meshd_crypto`.
//!
//! TX ([`tx`]): each packet is encrypted by its peer's session straight into the run buffer.
//! RX (`rx.rs`): demultiplex (by receiver index, or by initiator key after the rate limiter),
//! decrypt, and check the inner source against the peer's subnet (cryptokey routing). A
//! control thread ([`Encap::control`]) drives every session's timers, starts the handshakes
//! the RX path asked for (a peer on a lost session, an initiator refused moments before it
//! became a peer), and resets the shared handshake rate limiter once a second.
//!
//! Each peer's session sits behind its own `Mutex` in a [`WgPeer`], held by the route table;
//! the registry that keeps it across peer-set changes is [`crate::link::registry::Links`].
//! Nothing here parses packets beyond routing hints: `meshd_crypto` checks and decrypts.

mod nat;
mod rx;
pub(crate) mod tx;

#[cfg(test)]
mod tests;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_crypto::session::MIN_OUT_LEN;
use meshd_crypto::wire::DATA_OVERHEAD;
use meshd_crypto::{Action, MessageType, SessionError, WgDatagram};

use super::runs::Runs;
use super::{Encap, Received, Rx};
use crate::peers::wireguard::NodeCrypto;
use crate::routes::{PeerEntry, RouteTable, Routes};
use crate::stats::{DropReason, Stamp};

pub(crate) use crate::peers::wireguard::WgPeer;

/// A buffer any session call accepts whatever it returns: the largest IP packet plus
/// WireGuard's data overhead (see `meshd_crypto::session`).
pub const SCRATCH_LEN: usize = 65_535 + DATA_OVERHEAD;
/// How often the control plane runs every session's timers. boringtun's timers have a
/// resolution of 250 ms; running them a bit more often keeps retries and keepalives on time.
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(100);
/// How often the shared handshake rate limiter's count is cleared (WireGuard's one second).
pub(crate) const LIMITER_RESET: Duration = Duration::from_secs(1);
/// Inner packets coalesced and written to the TUN device in one flush ([`super::gro`]). Each
/// buffer can grow to a coalesced 64 KiB packet, so this many cost 4 MiB per worker.
const RX_WRITE_BATCH: usize = 64;
/// Slack over the MTU for a datagram read without GRO: WireGuard's 32 bytes and room to spare.
const RX_SLACK: usize = 128;

/// The encrypted encapsulation: the node's keys, secrets and rate limiter.
pub struct Wireguard {
    pub crypto: Arc<NodeCrypto>,
    /// Keepalives to peers reached through a NAT, this often (`wireguard.nat-keepalive`);
    /// `None`: off.
    pub nat_keepalive: Option<Duration>,
    /// Hole punching (`wireguard.hole-punching`): the bursts the punch schedule arms.
    pub hole_punching: bool,
}

impl Encap for Wireguard {
    const NAME: &'static str = "wg";
    const RX_WRITE_BATCH: usize = RX_WRITE_BATCH;
    // ChaCha20-Poly1305 authenticated every byte.
    const AUTHENTICATED: bool = true;
    const HAS_CONTROL: bool = true;
    type Tx<'t> = tx::Sealer<'t>;
    type RxScratch = Vec<u8>;

    fn datagram_len(len: usize) -> usize {
        (len + DATA_OVERHEAD).max(MIN_OUT_LEN)
    }

    fn max_datagram(mtu: usize) -> usize {
        mtu + RX_SLACK
    }

    /// Plaintext is never longer than its datagram; the session wants at least MIN_OUT_LEN.
    fn packet_room(len: usize) -> usize {
        len.max(MIN_OUT_LEN)
    }

    fn tx<'t>(&'t self, _table: &'t RouteTable, sender: usize) -> tx::Sealer<'t> {
        tx::Sealer::new(sender)
    }

    /// The queue no longer holds datagrams of the peers it sent to ([`tx`]'s bound).
    fn sent(&self, table: &RouteTable, sender: usize, runs: &Runs) {
        for run in runs.runs() {
            if let Some(wg) = &table.peer(run.peer).wg {
                wg.in_flight.release(sender);
            }
        }
    }

    fn rx_scratch(&self) -> Vec<u8> {
        vec![0u8; SCRATCH_LEN]
    }

    /// Demultiplex (see `rx.rs`), decrypt and check one datagram from `src`. Plaintext lands
    /// in `out`; `cx.scratch` ([`SCRATCH_LEN`] bytes) holds replies, which go to `cx.reply`.
    #[inline]
    fn receive(
        &self,
        cx: &mut Rx<'_, Vec<u8>>,
        table: &RouteTable,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Received {
        let Some(id) = rx::demux(&self.crypto, cx, table, src, datagram) else {
            return Received::Nothing;
        };
        let (scratch, reply) = (&mut cx.scratch, &mut cx.reply);
        let entry = table.peer(id);
        let Some(wg) = &entry.wg else {
            return Received::Nothing;
        };
        let mut session = wg.lock();
        let action = session.decapsulate(Some(src.ip()), datagram, out);
        // Data that decrypted (a keepalive too) came from the peer's key: see `rx.rs`.
        let authenticated = match action {
            Action::WriteToTunnelV4(..) | Action::WriteToTunnelV6(..) => true,
            Action::Done => WgDatagram::new_checked(datagram)
                .is_ok_and(|d| d.message_type() == MessageType::Data),
            _ => false,
        };
        if authenticated {
            wg.authenticated(cx.now);
            // WireGuard's roaming: the endpoint follows authenticated traffic.
            entry.heard_from(src, cx.now);
        }
        match action {
            Action::WriteToTunnelV4(len, inner_src) => {
                // A responder's session becomes current with the initiator's first data: what
                // was queued for it goes out now, before anything encrypted later (which needs
                // this lock), so the peer gets it in order.
                if session.has_queued() {
                    while let Action::WriteToNetwork(n) = session.flush_queued(scratch) {
                        reply(&scratch[..n], entry.endpoint());
                    }
                }
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
                    reply(&scratch[..n], entry.endpoint());
                }
            }
            Action::Done => {}
            Action::Error(e) => entry.stats.count_drop(DropReason::from_session(e), 1),
        }
        Received::Nothing
    }

    /// Run every session's timers and reset the rate limiter until `stop` is set. Sends
    /// whatever the timers produce (handshake retries, rekeys, keepalives) from `socket`.
    fn control(&self, routes: &Routes, socket: &UdpSocket, stop: &AtomicBool) {
        let mut out = vec![0u8; SCRATCH_LEN];
        let mut last_reset = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TIMER_TICK);
            if last_reset.elapsed() >= LIMITER_RESET {
                self.crypto.limiter.reset_count();
                last_reset = Instant::now();
            }
            let table = routes.load();
            let now = Stamp::now();
            for peer in table.peers() {
                let Some(wg) = &peer.wg else { continue };
                let mut action = timers(peer, wg, now, &mut out);
                if action == Action::Done {
                    action = nat::keepalive(peer, wg, self.nat_keepalive, now, &mut out);
                }
                if self.hole_punching {
                    nat::burst(socket, peer, wg, &mut out);
                }
                nat::to_relay(socket, peer);
                match action {
                    Action::WriteToNetwork(n) => nat::send(socket, peer, &out[..n], now),
                    // Repeats every tick while the peer stays idle: trace, not debug.
                    Action::Error(SessionError::Expired) => {
                        tracing::trace!(peer = %peer.name, "WireGuard session expired");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One control tick for one peer: the handshake the data path asked for, if any (rate-limited,
/// see [`WgPeer::take_handshake_wanted`]), else the session's timers. What to send is in
/// `out`. It runs inside the peer's span, so that what boringtun logs meanwhile (a handshake
/// retry, an expiry) names the peer.
pub(crate) fn timers(peer: &PeerEntry, wg: &WgPeer, now: Stamp, out: &mut [u8]) -> Action {
    let _span = wg.span.enter();
    let mut session = wg.lock();
    if wg.take_handshake_wanted(now) {
        let action = session.initiate_handshake(out);
        let started = action != Action::Done;
        tracing::debug!(peer = %peer.name, started, "handshake asked for by the data path");
        if started {
            return action;
        }
    }
    session.update_timers(out)
}
