//! Pod packets larger than their peer's path MTU ([`crate::link::PeerLink::mtu`]), on the
//! userspace path: what a kernel tunnel does with them, done here.
//!
//! - DF set: the packet is dropped (counted, [`DropReason::TooBig`]) and answered with an
//!   ICMP "fragmentation needed" (type 3, code 4, RFC 792 and RFC 1191) carrying the peer's
//!   MTU, written back into the TUN device, so the sender's kernel learns the path MTU and
//!   TCP resends smaller at once. As the kernel's own tunnels answer for a bridged device, the
//!   message comes from the packet's destination and goes to its source. The segments of one
//!   TSO super-packet (split by the TUN reader) are one flow in a row: one answer for them.
//! - DF clear: sent as it is (the outer datagram has DF set: on a path smaller than it the
//!   packet is lost, as a router that does not fragment would lose it).
//! - The node's own probes pass whatever their size: they are how the MTU is found.
//!
//! No allocation: the answers go into room made once, at most [`MAX_ANSWERS`] a batch (more
//! are dropped unanswered, still counted), and are written after the batch is sent.

use std::io;
use std::os::fd::AsRawFd;

use crate::kernel::probe;
use crate::link::PeerLink;
use crate::stats::DropReason;
use crate::wire::checksum::checksum;

/// Answers one TX batch may write back: a batch holds a few flows of super-packets, and a
/// sender needs one answer per flow (its kernel then sends smaller).
pub const MAX_ANSWERS: usize = 16;
/// The virtio-net header a TUN device with offload expects in front of each write (zeroed:
/// no offload asked for).
const VNET_HDR_LEN: usize = 10;
/// An answer: IPv4 header, ICMP header, and the quoted packet's header (at most 60 bytes)
/// and first 8 bytes of payload.
const ANSWER_MAX: usize = 20 + 8 + 60 + 8;
const SLOT: usize = VNET_HDR_LEN + ANSWER_MAX;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const DF: u8 = 0x40;

/// The answers of one batch, and this node's probe identifier.
pub struct TooBig {
    buf: Vec<u8>,
    lens: [usize; MAX_ANSWERS],
    n: usize,
    /// The last flow answered (source, destination): a super-packet's segments get one.
    last: Option<([u8; 4], [u8; 4])>,
    ident: u16,
}

impl Default for TooBig {
    fn default() -> Self {
        TooBig::new()
    }
}

impl TooBig {
    pub fn new() -> TooBig {
        TooBig {
            buf: vec![0; MAX_ANSWERS * SLOT],
            lens: [0; MAX_ANSWERS],
            n: 0,
            last: None,
            ident: probe::ident(),
        }
    }

    /// Whether `packet` to `peer` is to be dropped for its size (counted against the peer, and
    /// answered where it should be) rather than sent.
    #[inline]
    pub(crate) fn refuses(&mut self, peer: &PeerLink, packet: &[u8]) -> bool {
        let mtu = peer.mtu();
        if packet.len() <= usize::from(mtu) {
            return false;
        }
        let Some(reason) = self.check(packet, mtu) else {
            return false;
        };
        peer.stats.count_drop(reason, 1);
        true
    }

    /// `packet` is larger than `mtu`, its peer's path MTU: `Some(reason)` to drop it (answered
    /// where it should be), `None` to send it all the same.
    #[inline]
    pub(crate) fn check(&mut self, packet: &[u8], mtu: u16) -> Option<DropReason> {
        if packet.len() < 20 || packet[0] >> 4 != 4 || packet[6] & DF == 0 {
            return None;
        }
        if probe::is_probe(packet, self.ident) {
            return None;
        }
        self.answer(packet, mtu);
        Some(DropReason::TooBig)
    }

    /// Write the answer to `packet` into the next free slot, unless it needs none (an ICMP
    /// error is never answered with another) or the batch's room is used up.
    fn answer(&mut self, packet: &[u8], mtu: u16) {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        if ihl < 20 || packet.len() < ihl + 8 {
            return;
        }
        let proto_icmp = packet[9] == 1;
        if proto_icmp && !matches!(packet[ihl], 0 | 8 | 13 | 14) {
            // An ICMP error (or another type that is not a query): never answered.
            return;
        }
        let (mut src, mut dst) = ([0u8; 4], [0u8; 4]);
        src.copy_from_slice(&packet[12..16]);
        dst.copy_from_slice(&packet[16..20]);
        if self.last == Some((src, dst)) || self.n >= MAX_ANSWERS {
            return;
        }
        self.last = Some((src, dst));
        let quoted = &packet[..ihl + 8];
        let len = 28 + quoted.len();
        let slot = &mut self.buf[self.n * SLOT..(self.n + 1) * SLOT];
        slot[..VNET_HDR_LEN].fill(0);
        let m = &mut slot[VNET_HDR_LEN..VNET_HDR_LEN + len];
        m.fill(0);
        m[0] = 0x45;
        // Precedence "internetwork control", as the kernel's own ICMP errors.
        m[1] = 0xc0;
        m[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        m[8] = 64;
        m[9] = 1;
        m[12..16].copy_from_slice(&dst);
        m[16..20].copy_from_slice(&src);
        let sum = checksum(&m[..20]);
        m[10..12].copy_from_slice(&sum.to_be_bytes());
        m[20] = ICMP_DEST_UNREACH;
        m[21] = ICMP_FRAG_NEEDED;
        m[26..28].copy_from_slice(&mtu.to_be_bytes());
        m[28..].copy_from_slice(quoted);
        let sum = checksum(&m[20..]);
        m[22..24].copy_from_slice(&sum.to_be_bytes());
        self.lens[self.n] = len;
        self.n += 1;
    }

    /// The answers waiting, each as an IPv4 packet.
    pub fn answers(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.n)
            .map(|i| &self.buf[i * SLOT + VNET_HDR_LEN..i * SLOT + VNET_HDR_LEN + self.lens[i]])
    }

    /// Write the answers into `tun` (`vnet`: with the virtio-net header its offload expects)
    /// and forget them: the writes that failed.
    pub(crate) fn flush(&mut self, tun: &impl AsRawFd, vnet: bool) -> u64 {
        let mut failed = 0;
        for i in 0..self.n {
            let at = i * SLOT + if vnet { 0 } else { VNET_HDR_LEN };
            let end = i * SLOT + VNET_HDR_LEN + self.lens[i];
            if write(tun, &self.buf[at..end]).is_err() {
                failed += 1;
            }
        }
        self.clear();
        failed
    }

    /// Forget the answers (and the last flow answered).
    pub fn clear(&mut self) {
        self.n = 0;
        self.last = None;
    }
}

fn write(tun: &impl AsRawFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer and length of one live slice.
    let n = unsafe { libc::write(tun.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[path = "too_big_tests.rs"]
mod tests;
