//! The one run builder of the TX path. An encapsulation writes each datagram straight into the
//! next free stretch of one contiguous buffer ([`Runs::room`]), and [`Runs::commit`] groups
//! consecutive datagrams to the same peer into *runs*: all of one size but the last, which may
//! be shorter, so that the kernel can split a run again at `segment` bytes. One run is one
//! `sendmsg` with UDP GSO; without GSO a run is one datagram.

use super::too_big::TooBig;
use crate::link::PeerLink;
use crate::routes::PeerId;

/// Largest UDP payload one GSO send may carry: a UDP datagram over IPv4 holds at most
/// 65535 − 20 − 8 bytes, and the kernel refuses (EMSGSIZE) a GSO buffer larger than one datagram.
pub(crate) const MAX_GSO_BYTES: usize = 65_507;

/// Consecutive datagrams to one peer, contiguous in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub(crate) peer: PeerId,
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// Size of every datagram but the last.
    pub segment: usize,
    pub datagrams: usize,
    /// Inner (plaintext) packet bytes carried, for counters.
    pub(crate) inner_bytes: usize,
    /// Of those, the bytes of pod traffic (not nodes' probes and their replies).
    pub(crate) pod_bytes: usize,
    last: usize,
}

pub struct Runs {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    max_per_run: usize,
    /// What goes back into the TUN device instead: answers to packets too big for their
    /// peer's path MTU (written and cleared by the worker after the batch is sent).
    too_big: TooBig,
}

impl Runs {
    /// Room for `datagrams` datagrams of up to `datagram_len` bytes each, in at most as many
    /// runs, with at most `max_per_run` datagrams per run (1 without GSO; the socket's GSO
    /// segment limit with).
    pub fn new(datagrams: usize, datagram_len: usize, max_per_run: usize) -> Self {
        Runs {
            buf: vec![0; datagrams * datagram_len],
            used: 0,
            runs: Vec::with_capacity(datagrams),
            max_per_run: max_per_run.max(1),
            too_big: TooBig::new(),
        }
    }

    /// [`TooBig::refuses`] the `len`-byte packet read into the buffer at `at` (framing in
    /// place).
    #[inline]
    pub(crate) fn too_big_at(&mut self, at: usize, len: usize, peer: &PeerLink) -> bool {
        self.buf
            .get(at..at + len)
            .is_some_and(|packet| self.too_big.refuses(peer, packet))
    }

    /// The batch's answers to packets too big for their peer.
    pub fn too_big(&mut self) -> &mut TooBig {
        &mut self.too_big
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }

    /// GSO may be switched off by the socket at run time (a driver that refuses it).
    pub(crate) fn set_max_per_run(&mut self, n: usize) {
        self.max_per_run = n.max(1);
    }

    /// The free buffer for the next datagram, if `need` bytes and another run fit.
    #[inline]
    pub(crate) fn room(&mut self, need: usize) -> Option<&mut [u8]> {
        let room = &mut self.buf[self.used..];
        (room.len() >= need && self.runs.len() < self.runs.capacity()).then_some(room)
    }

    /// The whole buffer, for a reader that puts each packet in a slot of its own, framed where
    /// it lies and kept with [`Runs::commit_in_place`].
    pub fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Keep the `len`-byte datagram framed where it lies, at `at` (past everything kept so
    /// far), as a datagram to `peer` carrying `inner` bytes of packet (`pod`: pod traffic,
    /// not a node's probe, see [`crate::kernel::probe::is_node_echo`]). Where it joins the last
    /// run but does not follow it (the datagram before it was shorter than its slot: a lone
    /// ACK, a drop), it moves down to the run's end; where it starts a run it stays put. A TSO
    /// super-packet split at full segments, slot after slot, is therefore never copied.
    #[inline]
    pub(crate) fn commit_in_place(
        &mut self,
        peer: PeerId,
        at: usize,
        len: usize,
        inner: usize,
        pod: bool,
    ) {
        debug_assert!(at >= self.used && at + len <= self.buf.len());
        let end = match self.runs.last() {
            Some(r) if self.joins(r, peer, len) => r.start + r.len,
            _ => at,
        };
        if end != at {
            self.buf.copy_within(at..at + len, end);
        }
        self.used = end;
        self.commit(peer, len, inner, pod);
    }

    /// Whether a datagram of `len` bytes to `peer` may extend run `r`, wherever it lies.
    #[inline]
    fn joins(&self, r: &Run, peer: PeerId, len: usize) -> bool {
        r.peer == peer
            && r.datagrams < self.max_per_run
            && r.last == r.segment
            && len <= r.segment
            && r.len + len <= MAX_GSO_BYTES
    }

    /// Keep the `len` bytes just written into [`Runs::room`] as a datagram to `peer` that
    /// carries `inner` bytes of packet (`pod`: as for [`Runs::commit_in_place`]).
    #[inline]
    pub(crate) fn commit(&mut self, peer: PeerId, len: usize, inner: usize, pod: bool) {
        let pod_bytes = if pod { inner } else { 0 };
        let start = self.used;
        self.used += len;
        let joins = self
            .runs
            .last()
            .is_some_and(|r| self.joins(r, peer, len) && r.start + r.len == start);
        if let Some(r) = self.runs.last_mut() {
            if joins {
                r.len += len;
                r.datagrams += 1;
                r.last = len;
                r.inner_bytes += inner;
                r.pod_bytes += pod_bytes;
                return;
            }
        }
        self.runs.push(Run {
            peer,
            start,
            len,
            segment: len,
            datagrams: 1,
            inner_bytes: inner,
            pod_bytes,
            last: len,
        });
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn bytes(&self, run: &Run) -> &[u8] {
        &self.buf[run.start..run.start + run.len]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn push(r: &mut Runs, peer: PeerId, len: usize) {
        r.room(len).unwrap()[..len].fill(peer as u8);
        r.commit(peer, len, len - 10, true);
    }

    #[test]
    fn a_run_is_equal_sizes_to_one_peer_ending_with_at_most_one_short() {
        let mut r = Runs::new(16, 1500, 64);
        for len in [1000, 1000, 1000, 400, 1000] {
            push(&mut r, 0, len);
        }
        push(&mut r, 1, 1000);
        push(&mut r, 1, 1200); // longer than the segment: a new run
        let shape: Vec<_> = r
            .runs()
            .iter()
            .map(|x| (x.peer, x.datagrams, x.segment))
            .collect();
        assert_eq!(
            shape,
            [(0, 4, 1000), (0, 1, 1000), (1, 1, 1000), (1, 1, 1200)]
        );
        assert_eq!(r.runs()[0].len, 3400);
        assert_eq!(r.runs()[0].inner_bytes, 3400 - 40);
        assert!(r.bytes(&r.runs()[2]).iter().all(|&b| b == 1));
    }

    /// Datagrams framed in slots of 1500 bytes: full ones are never moved, a run is one
    /// contiguous stretch whatever moved, and a short datagram ends its run.
    #[test]
    fn in_place_datagrams_join_runs_and_move_only_after_a_short_one() {
        let mut r = Runs::new(8, 1500, 64);
        let put = |r: &mut Runs, slot: usize, peer: PeerId, len: usize| {
            let at = slot * 1500;
            r.buf_mut()[at..at + len].fill(slot as u8 + 1);
            r.commit_in_place(peer, at, len, len - 22, true);
        };
        put(&mut r, 0, 0, 1500);
        put(&mut r, 1, 0, 1500);
        put(&mut r, 2, 0, 700); // the short last one of a super-packet
        put(&mut r, 3, 0, 1500); // a new run, where it lies
        put(&mut r, 4, 0, 1500);
        put(&mut r, 5, 1, 60); // another peer: ACKs, each moved down to the run's end
        put(&mut r, 6, 1, 60);
        put(&mut r, 7, 1, 60);
        let shape: Vec<_> = r
            .runs()
            .iter()
            .map(|x| (x.peer, x.start, x.datagrams, x.segment, x.len))
            .collect();
        assert_eq!(
            shape,
            [
                (0, 0, 3, 1500, 3700),
                (0, 4500, 2, 1500, 3000),
                (1, 7500, 3, 60, 180)
            ]
        );
        let bytes = |i: usize| r.bytes(&r.runs()[i]).to_vec();
        assert!(bytes(0)[..3000].iter().all(|&b| b == 1 || b == 2));
        assert!(bytes(0)[3000..].iter().all(|&b| b == 3));
        assert!(bytes(1)[..1500].iter().all(|&b| b == 4));
        let acks = bytes(2);
        assert_eq!([acks[0], acks[60], acks[120]], [6, 7, 8]);
        assert_eq!(r.runs()[2].inner_bytes, 3 * 38);
    }

    #[test]
    fn runs_respect_the_gso_limits_and_the_buffer() {
        let mut r = Runs::new(100, 1500, 64);
        for _ in 0..100 {
            push(&mut r, 3, 1450);
        }
        assert!(r.runs().iter().all(|x| x.len <= MAX_GSO_BYTES));
        assert_eq!(r.runs().iter().map(|x| x.datagrams).sum::<usize>(), 100);
        let mut small = Runs::new(2, 1000, 64);
        push(&mut small, 0, 600);
        assert!(small.room(1400).is_some() && small.room(1401).is_none());
        push(&mut small, 1, 600);
        assert!(small.room(1).is_none(), "as many runs as datagrams: full");
        r.clear();
        r.set_max_per_run(1);
        push(&mut r, 3, 100);
        push(&mut r, 3, 100);
        assert_eq!(r.runs().len(), 2);
    }
}
