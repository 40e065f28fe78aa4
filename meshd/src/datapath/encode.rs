//! Turning TUN packets into VXLAN datagrams and back, on caller-owned buffers, without I/O.
//!
//! [`Encoder`] appends frames for a batch of packets into one contiguous buffer and groups them
//! into *runs*: consecutive frames to the same peer whose sizes let the kernel split them again
//! (all equal but the last, which may be shorter). One run is one `sendmsg` with UDP GSO. Without
//! GSO a run is one frame.

use crate::routes::{PeerId, RouteTable};
use crate::stats::{DropReason, DropTally};
use crate::wire::ip::v4_dst;
use crate::wire::vxlan::HEADER_LEN;
use crate::wire::{FrameError, VxlanFrame};
use std::net::IpAddr;

/// Largest UDP payload one GSO send may carry: a UDP datagram over IPv4 holds at most
/// 65535 − 20 − 8 bytes, and the kernel refuses (EMSGSIZE) a GSO buffer larger than one datagram.
pub const MAX_GSO_BYTES: usize = 65_507;

/// Consecutive frames to one peer, contiguous in the encoder's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub peer: PeerId,
    pub start: usize,
    pub len: usize,
    /// Size of every frame but the last.
    pub segment: usize,
    pub frames: usize,
    /// Sum of inner packet bytes, for counters.
    pub inner_bytes: usize,
    last: usize,
}

pub struct Encoder {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    max_frames_per_run: usize,
}

impl Encoder {
    /// `capacity` bytes of frames per batch, at most `max_runs` runs, at most
    /// `max_frames_per_run` frames per run (1 without GSO; the socket's GSO segment limit with).
    pub fn new(capacity: usize, max_runs: usize, max_frames_per_run: usize) -> Self {
        Encoder {
            buf: vec![0; capacity],
            used: 0,
            runs: Vec::with_capacity(max_runs),
            max_frames_per_run: max_frames_per_run.max(1),
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }

    /// True when another packet of `len` bytes might not fit.
    pub fn is_full(&self, len: usize) -> bool {
        self.used + HEADER_LEN + len > self.buf.len() || self.runs.len() == self.runs.capacity()
    }

    /// Frame one IP packet read from the TUN device. Packets no peer owns are counted and dropped.
    #[inline]
    pub fn push(&mut self, table: &RouteTable, packet: &[u8], drops: &mut DropTally) {
        let Some(peer) = route(table, packet) else {
            drops.add(DropReason::NoRoute);
            return;
        };
        if self.is_full(packet.len()) {
            // The caller sizes batches so this cannot happen; count rather than overrun.
            drops.add(DropReason::SendError);
            return;
        }
        let start = self.used;
        let frame_len = match table
            .peer(peer)
            .header
            .encapsulate(packet, &mut self.buf[start..])
        {
            Some(n) => n,
            None => {
                drops.add(DropReason::Malformed);
                return;
            }
        };
        self.used += frame_len;
        if let Some(run) = self.runs.last_mut() {
            let extends = run.peer == peer
                && run.last == run.segment
                && frame_len <= run.segment
                && run.frames < self.max_frames_per_run
                && run.len + frame_len <= MAX_GSO_BYTES
                && run.start + run.len == start;
            if extends {
                run.len += frame_len;
                run.frames += 1;
                run.last = frame_len;
                run.inner_bytes += packet.len();
                return;
            }
        }
        self.runs.push(Run {
            peer,
            start,
            len: frame_len,
            segment: frame_len,
            frames: 1,
            inner_bytes: packet.len(),
            last: frame_len,
        });
    }

    /// GSO may be switched off by the socket at run time (a driver that refuses it).
    pub fn set_max_frames_per_run(&mut self, n: usize) {
        self.max_frames_per_run = n.max(1);
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn bytes(&self, run: &Run) -> &[u8] {
        &self.buf[run.start..run.start + run.len]
    }
}

#[inline]
fn route(table: &RouteTable, packet: &[u8]) -> Option<PeerId> {
    match packet.first()? >> 4 {
        4 => table.lookup_v4(v4_dst(packet)?),
        // Node subnets are IPv4 for now; IPv6 pod traffic has no owner yet.
        _ => None,
    }
}

/// Why [`decode`] refused a datagram: the peer it came from, when known, and the reason.
pub type Rejected = (Option<PeerId>, DropReason);

/// Validate one received VXLAN datagram from underlay address `from` and return the peer and
/// the inner IP packet to deliver.
#[inline]
pub fn decode<'a>(
    table: &RouteTable,
    from: IpAddr,
    vni: u32,
    datagram: &'a [u8],
) -> Result<(PeerId, &'a [u8]), Rejected> {
    let Some(peer) = table.by_source(from) else {
        return Err((None, DropReason::UnknownSource));
    };
    let frame = VxlanFrame::new_checked(datagram, vni).map_err(|e| {
        let reason = match e {
            FrameError::WrongVni => DropReason::WrongVni,
            FrameError::NotIp => DropReason::NotIp,
            FrameError::Truncated | FrameError::NoVni | FrameError::BadInnerHeader => {
                DropReason::Malformed
            }
        };
        (Some(peer), reason)
    })?;
    // Cryptokey-routing's cleartext cousin: a peer may only speak for its own subnet.
    let owned = match frame.addrs().src {
        IpAddr::V4(src) => table.peer(peer).subnet.contains(&src),
        IpAddr::V6(_) => false,
    };
    if !owned {
        return Err((Some(peer), DropReason::SpoofedSource));
    }
    Ok((peer, frame.packet()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::routes::{Local, Peer, Routes};
    use crate::wire::ip::tests_support::ipv4_packet;

    pub(crate) fn routes() -> Routes {
        let r = Routes::new(Local {
            name: "a".into(),
            vni: 1,
            port: 8472,
        });
        r.update(&[
            Peer {
                name: "b".into(),
                address: "198.18.0.2".parse().unwrap(),
                subnet: "10.244.2.0/24".parse().unwrap(),
            },
            Peer {
                name: "c".into(),
                address: "198.18.0.3".parse().unwrap(),
                subnet: "10.244.3.0/24".parse().unwrap(),
            },
        ]);
        r
    }

    #[test]
    fn equal_frames_to_one_peer_form_one_run_until_a_short_one() {
        let r = routes();
        let t = r.load();
        let mut e = Encoder::new(64 * 1024, 16, 64);
        let mut drops = DropTally::default();
        let full = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 1000);
        let short = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 10);
        for _ in 0..3 {
            e.push(&t, &full, &mut drops);
        }
        e.push(&t, &short, &mut drops);
        e.push(&t, &full, &mut drops); // after a short frame: a new run
        e.push(
            &t,
            &ipv4_packet([10, 244, 1, 2], [10, 244, 3, 9], 1000),
            &mut drops,
        );
        e.push(
            &t,
            &ipv4_packet([10, 244, 1, 2], [10, 244, 9, 9], 1000),
            &mut drops,
        );
        let runs = e.runs();
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(runs[0].frames, 4);
        assert_eq!(runs[0].segment, HEADER_LEN + full.len());
        assert_eq!(
            runs[0].len,
            3 * (HEADER_LEN + full.len()) + HEADER_LEN + short.len()
        );
        assert_eq!(t.peer(runs[0].peer).name, "b");
        assert_eq!(runs[1].frames, 1);
        assert_eq!(t.peer(runs[2].peer).name, "c");
        // Every frame in a run decodes back to the packet that went in.
        let bytes = e.bytes(&runs[0]);
        let seg = runs[0].segment;
        for (i, chunk) in bytes.chunks(seg).enumerate() {
            let f = VxlanFrame::new_checked(chunk, 1).unwrap();
            assert_eq!(f.packet(), if i == 3 { &short[..] } else { &full[..] });
        }
        let d = crate::stats::PeerStats::default();
        drops.flush_into(&d);
        assert_eq!(d.dropped(DropReason::NoRoute), 1);
    }

    #[test]
    fn runs_stay_within_one_udp_datagram() {
        let r = routes();
        let t = r.load();
        let mut e = Encoder::new(256 * 1500, 256, 64);
        let mut drops = DropTally::default();
        let p = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 1430);
        for _ in 0..100 {
            e.push(&t, &p, &mut drops);
        }
        assert!(e.runs().len() >= 3);
        assert!(
            e.runs().iter().all(|r| r.len <= MAX_GSO_BYTES),
            "{:?}",
            e.runs()
        );
        assert_eq!(e.runs().iter().map(|r| r.frames).sum::<usize>(), 100);
    }

    #[test]
    fn without_gso_every_frame_is_its_own_run() {
        let r = routes();
        let t = r.load();
        let mut e = Encoder::new(64 * 1024, 16, 1);
        let mut drops = DropTally::default();
        let p = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 500);
        for _ in 0..4 {
            e.push(&t, &p, &mut drops);
        }
        assert_eq!(e.runs().len(), 4);
        assert!(e.runs().iter().all(|r| r.frames == 1));
    }

    #[test]
    fn decode_checks_source_vni_and_subnet() {
        let r = routes();
        let t = r.load();
        let b = t.by_source("198.18.0.2".parse().unwrap()).unwrap();
        // A frame as b would send it to a.
        let hdr = crate::wire::VxlanHeader::new(
            1,
            crate::wire::vtep_mac("b"),
            crate::wire::vtep_mac("a"),
        );
        let mut frame = [0u8; 200];
        let good = ipv4_packet([10, 244, 2, 5], [10, 244, 1, 5], 20);
        let n = hdr.encapsulate(&good, &mut frame).unwrap();
        let from_b: IpAddr = "198.18.0.2".parse().unwrap();
        assert_eq!(decode(&t, from_b, 1, &frame[..n]).unwrap(), (b, &good[..]));
        assert_eq!(
            decode(&t, "198.18.0.99".parse().unwrap(), 1, &frame[..n]).unwrap_err(),
            (None, DropReason::UnknownSource)
        );
        assert_eq!(
            decode(&t, from_b, 2, &frame[..n]).unwrap_err(),
            (Some(b), DropReason::WrongVni)
        );
        assert_eq!(
            decode(&t, from_b, 1, &frame[..n - 3]).unwrap_err(),
            (Some(b), DropReason::Malformed)
        );
        let spoof = ipv4_packet([10, 244, 3, 5], [10, 244, 1, 5], 20);
        let n = hdr.encapsulate(&spoof, &mut frame).unwrap();
        assert_eq!(
            decode(&t, from_b, 1, &frame[..n]).unwrap_err(),
            (Some(b), DropReason::SpoofedSource)
        );
    }
}
