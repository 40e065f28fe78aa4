//! The one run builder of the TX path. An encapsulation writes each datagram straight into the
//! next free stretch of one contiguous buffer ([`Runs::room`]), and [`Runs::commit`] groups
//! consecutive datagrams to the same peer into *runs*: all of one size but the last, which may
//! be shorter, so that the kernel can split a run again at `segment` bytes. One run is one
//! `sendmsg` with UDP GSO; without GSO a run is one datagram.

use crate::routes::PeerId;

/// Largest UDP payload one GSO send may carry: a UDP datagram over IPv4 holds at most
/// 65535 − 20 − 8 bytes, and the kernel refuses (EMSGSIZE) a GSO buffer larger than one datagram.
pub const MAX_GSO_BYTES: usize = 65_507;

/// Consecutive datagrams to one peer, contiguous in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub peer: PeerId,
    pub start: usize,
    pub len: usize,
    /// Size of every datagram but the last.
    pub segment: usize,
    pub datagrams: usize,
    /// Inner (plaintext) packet bytes carried, for counters.
    pub inner_bytes: usize,
    last: usize,
}

pub struct Runs {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    max_per_run: usize,
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
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }

    /// GSO may be switched off by the socket at run time (a driver that refuses it).
    pub fn set_max_per_run(&mut self, n: usize) {
        self.max_per_run = n.max(1);
    }

    /// The free buffer for the next datagram, if `need` bytes and another run fit.
    #[inline]
    pub fn room(&mut self, need: usize) -> Option<&mut [u8]> {
        let room = &mut self.buf[self.used..];
        (room.len() >= need && self.runs.len() < self.runs.capacity()).then_some(room)
    }

    /// Keep the `len` bytes just written into [`Runs::room`] as a datagram to `peer` that
    /// carries `inner` bytes of packet.
    #[inline]
    pub fn commit(&mut self, peer: PeerId, len: usize, inner: usize) {
        let start = self.used;
        self.used += len;
        if let Some(r) = self.runs.last_mut() {
            let extends = r.peer == peer
                && r.datagrams < self.max_per_run
                && r.last == r.segment
                && len <= r.segment
                && r.len + len <= MAX_GSO_BYTES
                && r.start + r.len == start;
            if extends {
                r.len += len;
                r.datagrams += 1;
                r.last = len;
                r.inner_bytes += inner;
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
        r.commit(peer, len, len - 10);
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
