//! Coalescing received TCP segments (and, where the device takes them, UDP datagrams) into
//! super-packets for the TUN device (GRO in userspace), written once per flow with a virtio-net
//! header that tells the kernel how to treat it.
//!
//! Each packet is copied once, into its place in a write buffer: a segment that continues a flow
//! already in the batch has only its payload appended to that flow's buffer; anything else gets
//! a buffer of its own. A cleartext packet is copied there straight from the receive buffer
//! ([`Coalescer::push`]); a decrypted one is written into a fresh buffer first
//! ([`Coalescer::next`], [`Coalescer::commit`]) and only its payload moves if it coalesces.
//! Nothing is allocated per packet: the buffers and the flow table are made once.
//!
//! Segments coalesce as the kernel's own GRO would merge them: same addresses, ports, IP and TCP
//! headers (TTL, TOS, DF, TCP options, ACK number, window), IPv4 without options and with a
//! valid header checksum, flags ACK or ACK+PSH, consecutive sequence numbers, all of one size
//! but the last; a PSH or a short segment ends the flow, and so does any packet of the
//! connection that cannot join it (a pure ACK, a FIN, RST, SYN or URG, a gap, a bad checksum):
//! it is written after the flow, and what follows starts a new one, so nothing within a
//! connection is reordered. UDP datagrams of one flow (same addresses, ports and IP header)
//! coalesce likewise, all of one size but the last, when the device has USO.
//! A coalesced buffer carries `VIRTIO_NET_HDR_F_NEEDS_CSUM` with the TCP pseudo-header sum in
//! its checksum field, so its checksum is the kernel's to compute: where the packets were not
//! authenticated (cleartext), each segment's own checksum is checked before it may join.

use std::io;
use std::os::fd::AsRawFd;

use crate::wire::checksum::{fold, sum};

mod segment;

use segment::{
    append, checksum_ok, flow_key, same_flow, segment, Flow, Segment, IPPROTO_TCP, IPPROTO_UDP,
    TCP_PSH,
};

/// Bytes of the virtio-net header in front of every write when offload is on.
pub const VNET_HDR_LEN: usize = 10;
/// The largest packet one write may carry (the IP length fields).
const MAX_PACKET: usize = 65_535;
/// Flows tracked in one batch; a packet of a further flow is written alone.
const MAX_FLOWS: usize = 16;
/// Segments per super-packet, at most (the kernel's own GRO stops at 64 as well).
const MAX_SEGMENTS: u16 = 64;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// Packets waiting to be written to one TUN queue, TCP segments of one flow coalesced.
pub struct Coalescer {
    bufs: Vec<Vec<u8>>,
    used: usize,
    flows: [Option<Flow>; MAX_FLOWS],
    /// Whether the device takes a virtio-net header (TUN offload on); without, every packet is
    /// written as it is.
    vnet: bool,
    /// Whether it also takes UDP super-packets (USO): UDP datagrams of one flow coalesce too.
    uso: bool,
    /// Check each segment's own checksum before it joins a flow (packets that were not
    /// authenticated on the way).
    verify: bool,
}

impl Coalescer {
    /// Room for `batch` writes; `vnet`: the device has offload (`uso`: for UDP as well);
    /// `verify`: see [`Coalescer`].
    pub fn new(batch: usize, vnet: bool, uso: bool, verify: bool) -> Self {
        Coalescer {
            // Pages are touched only as packets reach them.
            bufs: (0..batch)
                .map(|_| Vec::with_capacity(VNET_HDR_LEN + MAX_PACKET))
                .collect(),
            used: 0,
            flows: [None; MAX_FLOWS],
            vnet,
            uso: vnet && uso,
            verify,
        }
    }

    /// The next free buffer, `len` bytes long (at most a packet's maximum), for a caller that
    /// produces a packet in place; [`Coalescer::commit`] keeps it.
    #[inline]
    pub fn next(&mut self, len: usize) -> &mut [u8] {
        let b = &mut self.bufs[self.used];
        b.resize(VNET_HDR_LEN + len.min(MAX_PACKET), 0);
        &mut b[VNET_HDR_LEN..]
    }

    /// The `len`-byte packet just written into [`Coalescer::next`], not yet kept.
    #[inline]
    pub fn pending(&self, len: usize) -> &[u8] {
        let b = &self.bufs[self.used];
        &b[VNET_HDR_LEN.min(b.len())..(VNET_HDR_LEN + len).min(b.len())]
    }

    /// Keep the `len`-byte packet just written into [`Coalescer::next`]: its payload joins a
    /// flow of the batch, or it keeps the buffer. True when the batch is full and must be
    /// flushed.
    #[inline]
    pub fn commit(&mut self, len: usize) -> bool {
        let i = self.used;
        self.bufs[i].truncate(VNET_HDR_LEN + len);
        let seg = segment(&self.bufs[i][VNET_HDR_LEN..], self.uso);
        if let Some(s) = seg {
            if let Some(f) = self.joinable(&s, None, i) {
                // Split the borrow: the flow's buffer comes before this one.
                let (head, tail) = self.bufs.split_at_mut(i);
                let packet = &tail[0][VNET_HDR_LEN..];
                append(&mut head[self.flows[f].map_or(0, |x| x.buf)], packet, &s);
                let len = packet.len();
                self.joined(f, &s, len);
                return false;
            }
        }
        self.keep(i, seg);
        self.used == self.bufs.len()
    }

    /// Take `packet` (in the caller's buffer, a receive buffer say): its payload joins a flow
    /// of the batch, or it is copied into a buffer of its own. True when the batch is full and
    /// must be flushed.
    #[inline]
    pub fn push(&mut self, packet: &[u8]) -> bool {
        let packet = &packet[..packet.len().min(MAX_PACKET)];
        let seg = segment(packet, self.uso);
        if let Some(s) = seg {
            if let Some(f) = self.joinable(&s, Some(packet), self.used) {
                let buf = self.flows[f].map_or(0, |x| x.buf);
                append(&mut self.bufs[buf], packet, &s);
                self.joined(f, &s, packet.len());
                return false;
            }
        }
        let i = self.used;
        let b = &mut self.bufs[i];
        b.clear();
        b.resize(VNET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.keep(i, seg);
        self.used == self.bufs.len()
    }

    /// The flow (index into `flows`) that segment `s` may join: `packet` when given, else the
    /// one in buffer `at`.
    fn joinable(&self, s: &Segment, packet: Option<&[u8]>, at: usize) -> Option<usize> {
        if !self.vnet {
            return None;
        }
        let packet = match packet {
            Some(p) => p,
            None => &self.bufs[at][VNET_HDR_LEN..],
        };
        let payload = s.payload(packet);
        let f = self.flows.iter().position(|f| {
            f.is_some_and(|f| {
                !f.closed
                    && (f.udp || s.seq == f.next_seq)
                    && payload <= f.gso
                    && f.segments < MAX_SEGMENTS
                    && self.bufs[f.buf].len() + payload <= VNET_HDR_LEN + MAX_PACKET
                    && same_flow(&self.bufs[f.buf][VNET_HDR_LEN..], packet, s, &f)
            })
        })?;
        if self.verify && !checksum_ok(packet, s) {
            return None;
        }
        // The flow's head was checked when it was kept, if it needed to be.
        Some(f)
    }

    /// Segment `s` of `len` bytes joined flow `f`.
    fn joined(&mut self, f: usize, s: &Segment, len: usize) {
        let Some(flow) = self.flows[f].as_mut() else {
            return;
        };
        let payload = len - s.iph - s.l4h;
        flow.next_seq = s.seq.wrapping_add(payload as u32);
        flow.segments += 1;
        if payload < flow.gso || s.flags & TCP_PSH != 0 {
            flow.closed = true;
        }
        if !s.udp && s.flags & TCP_PSH != 0 {
            let head = &mut self.bufs[flow.buf][VNET_HDR_LEN..];
            head[flow.iph + 13] |= TCP_PSH;
        }
    }

    /// Buffer `i` holds a packet of its own: count it, end the flow of its connection (a
    /// later segment joining that flow would overtake it), and let it head a flow when it may.
    fn keep(&mut self, i: usize, seg: Option<Segment>) {
        self.used += 1;
        if !self.vnet {
            return;
        }
        let packet = &self.bufs[i][VNET_HDR_LEN..];
        let Some(key) = flow_key(packet) else {
            return;
        };
        let slot = self
            .flows
            .iter()
            .position(|f| f.is_some_and(|f| f.key == key));
        if let Some(k) = slot {
            self.retire(k);
        }
        let Some(s) = seg else {
            return;
        };
        let packet = &self.bufs[i][VNET_HDR_LEN..];
        // A head whose own checksum is wrong is written alone: the kernel drops it, and no
        // segment's payload is blessed by its checksum.
        if self.verify && !checksum_ok(packet, &s) {
            return;
        }
        let flow = Flow {
            key,
            buf: i,
            iph: s.iph,
            l4h: s.l4h,
            udp: s.udp,
            gso: s.payload(packet),
            next_seq: s.seq.wrapping_add(s.payload(packet) as u32),
            segments: 1,
            closed: !s.udp && s.flags & TCP_PSH != 0,
        };
        if flow.closed {
            return;
        }
        // The slot of the connection's flow it ended, or a free one, or none.
        if let Some(k) = slot.or_else(|| self.flows.iter().position(Option::is_none)) {
            self.flows[k] = Some(flow);
        }
    }

    /// Stop tracking flow slot `k`: its buffer becomes a finished super-packet if anything
    /// joined it.
    fn retire(&mut self, k: usize) {
        if let Some(f) = self.flows[k].take() {
            if f.segments > 1 {
                finish(&mut self.bufs[f.buf], &f);
            }
        }
    }

    /// Write every buffer to the TUN device, in order, each coalesced flow as one
    /// super-packet; whether there was anything to write. A failed write is counted in
    /// `errors` and the rest still go.
    pub fn flush(&mut self, tun: &impl AsRawFd, errors: &mut u64) -> bool {
        self.flush_with(|bytes| write(tun, bytes), errors)
    }

    /// [`Coalescer::flush`] through `write`, one call per write.
    pub fn flush_with(
        &mut self,
        mut write: impl FnMut(&[u8]) -> io::Result<()>,
        errors: &mut u64,
    ) -> bool {
        if self.used == 0 {
            return false;
        }
        for k in 0..MAX_FLOWS {
            self.retire(k);
        }
        for b in &mut self.bufs[..self.used] {
            let bytes: &[u8] = if self.vnet {
                // A packet written alone carries a zeroed header, unless a flow filled it in.
                if b[0] == 0 && b[1] == 0 {
                    b[..VNET_HDR_LEN].fill(0);
                }
                b
            } else {
                &b[VNET_HDR_LEN..]
            };
            if write(bytes).is_err() {
                *errors += 1;
            }
            // Marks the buffer as not coalesced for its next use.
            b[..2].fill(0);
        }
        self.used = 0;
        true
    }
}

/// Turn a flow's buffer into a super-packet: the IP length (and IPv4 checksum), the UDP
/// length, the TCP or UDP pseudo-header sum, and the virtio-net header asking the kernel for
/// the checksum and segmentation.
fn finish(buf: &mut [u8], f: &Flow) {
    let (hdr, packet) = buf.split_at_mut(VNET_HDR_LEN);
    let v6 = packet[0] >> 4 == 6;
    let len = packet.len();
    let l4_len = len - f.iph;
    if v6 {
        packet[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        packet[10..12].fill(0);
        let c = !fold(sum(&packet[..f.iph], 0));
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let (proto, csum_at, gso_type) = match (f.udp, v6) {
        (true, _) => (IPPROTO_UDP, 6, VIRTIO_NET_HDR_GSO_UDP_L4),
        (false, false) => (IPPROTO_TCP, 16, VIRTIO_NET_HDR_GSO_TCPV4),
        (false, true) => (IPPROTO_TCP, 16, VIRTIO_NET_HDR_GSO_TCPV6),
    };
    if f.udp {
        packet[f.iph + 4..f.iph + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    // Pseudo-header sum, not complemented: the kernel adds the rest from csum_start on.
    let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
    let pseudo = fold(sum(addrs, u64::from(proto) + l4_len as u64));
    packet[f.iph + csum_at..f.iph + csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = gso_type;
    // The virtio-net header of a TUN device is in the host's byte order.
    hdr[2..4].copy_from_slice(&((f.iph + f.l4h) as u16).to_ne_bytes());
    hdr[4..6].copy_from_slice(&(f.gso as u16).to_ne_bytes());
    hdr[6..8].copy_from_slice(&(f.iph as u16).to_ne_bytes());
    hdr[8..10].copy_from_slice(&(csum_at as u16).to_ne_bytes());
}

fn write(tun: &impl AsRawFd, bytes: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: a valid fd, and a pointer and length of one live slice.
        let n = unsafe { libc::write(tun.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod tests;
