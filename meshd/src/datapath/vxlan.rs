//! Cleartext VXLAN (RFC 7348) as an [`Encap`]: each IP packet from the TUN device in an
//! Ethernet frame between the two nodes' VTEP MACs, under the cluster's VNI, so a kernel VXLAN
//! device at the other end takes it as its own. No I/O; the per-peer header is built once, in
//! the route table ([`crate::link::PeerLink::header`]).

use std::net::{IpAddr, SocketAddr};

use super::{Encap, EncodeBatch, Encoded, Received, Rx};
use crate::routes::{PeerEntry, PeerId, RouteTable};
use crate::stats::DropReason;
use crate::wire::vxlan::HEADER_LEN;
use crate::wire::{FrameError, VxlanFrame};

/// The cleartext encapsulation, for one VNI.
pub struct Vxlan {
    pub vni: u32,
}

/// Inner packets per TUN write: cleartext receive buffers are cheap, so a deep batch.
const RX_WRITE_BATCH: usize = 128;
/// Slack over MTU + header for a datagram read without GRO (a peer with a larger MTU is cut
/// short and counted as malformed rather than overrunning).
const RX_SLACK: usize = 64;

impl Encap for Vxlan {
    const NAME: &'static str = "vxlan";
    const RX_WRITE_BATCH: usize = RX_WRITE_BATCH;
    const FRAMES_IN_PLACE: bool = true;
    type Tx<'t> = Framer;
    type RxScratch = ();

    fn datagram_len(len: usize) -> usize {
        HEADER_LEN + len
    }

    fn max_datagram(mtu: usize) -> usize {
        mtu + HEADER_LEN + RX_SLACK
    }

    fn packet_room(_len: usize) -> usize {
        0
    }

    fn tx<'t>(&'t self, _table: &'t RouteTable, _sender: usize) -> Framer {
        Framer
    }

    fn rx_scratch(&self) {}

    #[inline]
    fn receive(
        &self,
        rx: &mut Rx<'_, ()>,
        table: &RouteTable,
        from: SocketAddr,
        datagram: &[u8],
        _out: &mut [u8],
    ) -> Received {
        let drops = &mut rx.drops;
        match decode(table, from.ip(), self.vni, datagram) {
            // The packet goes to the TUN device from where it lies, after the header.
            Ok((peer, packet)) => Received::Inside {
                peer,
                at: HEADER_LEN,
                len: packet.len(),
            },
            Err((Some(peer), reason)) => {
                table.peer(peer).stats.count_drop(reason, 1);
                Received::Nothing
            }
            Err((None, reason)) => {
                drops.add(reason);
                Received::Nothing
            }
        }
    }
}

/// VXLAN's TX state: none, the header template is per peer.
pub struct Framer;

impl EncodeBatch<'_> for Framer {
    #[inline]
    fn encode(&mut self, _id: PeerId, peer: &PeerEntry, packet: &[u8], out: &mut [u8]) -> Encoded {
        match peer.header.encapsulate(packet, out) {
            Some(n) => Encoded::Datagram(n),
            None => Encoded::Drop(DropReason::Malformed),
        }
    }

    #[inline]
    fn frame(&mut self, _id: PeerId, peer: &PeerEntry, datagram: &mut [u8]) -> Encoded {
        match peer.header.frame_in_place(datagram) {
            Some(n) => Encoded::Datagram(n),
            None => Encoded::Drop(DropReason::Malformed),
        }
    }
}

/// Why [`decode`] refused a datagram: the peer it came from, when known, and the reason.
pub(crate) type Rejected = (Option<PeerId>, DropReason);

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
    use crate::datapath::runs::{Runs, MAX_GSO_BYTES};
    use crate::datapath::worker::encode_batch;
    use crate::peers::Peer;
    use crate::routes::{Local, Routes};
    use crate::stats::DropTally;
    use crate::wire::ip::tests_support::ipv4_packet;

    pub(crate) fn routes() -> Routes {
        let r = Routes::new(Local {
            name: "a".into(),
            vni: 1,
            port: 8472,
        });
        r.install_clear(&[
            Peer::clear(
                "b",
                "198.18.0.2:8472".parse().unwrap(),
                "10.244.2.0/24".parse().unwrap(),
            ),
            Peer::clear(
                "c",
                "198.18.0.3:8472".parse().unwrap(),
                "10.244.3.0/24".parse().unwrap(),
            ),
        ]);
        r
    }

    /// One packet through the TX path's per-packet loop.
    fn push(e: &mut Runs, t: &RouteTable, packet: &[u8], drops: &mut DropTally) {
        encode_batch(&Vxlan { vni: 1 }, t, std::iter::once(packet), e, drops, 0);
    }

    #[test]
    fn equal_frames_to_one_peer_form_one_run_until_a_short_one() {
        let r = routes();
        let t = r.load();
        let mut e = Runs::new(16, 4096, 64);
        let mut drops = DropTally::default();
        let full = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 1000);
        let short = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 10);
        for _ in 0..3 {
            push(&mut e, &t, &full, &mut drops);
        }
        push(&mut e, &t, &short, &mut drops);
        push(&mut e, &t, &full, &mut drops); // after a short frame: a new run
        push(
            &mut e,
            &t,
            &ipv4_packet([10, 244, 1, 2], [10, 244, 3, 9], 1000),
            &mut drops,
        );
        push(
            &mut e,
            &t,
            &ipv4_packet([10, 244, 1, 2], [10, 244, 9, 9], 1000),
            &mut drops,
        );
        let runs = e.runs();
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(runs[0].datagrams, 4);
        assert_eq!(runs[0].segment, HEADER_LEN + full.len());
        assert_eq!(
            runs[0].len,
            3 * (HEADER_LEN + full.len()) + HEADER_LEN + short.len()
        );
        assert_eq!(t.peer(runs[0].peer).name, "b");
        assert_eq!(runs[1].datagrams, 1);
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
        let mut e = Runs::new(256, 1500, 64);
        let mut drops = DropTally::default();
        let p = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 1430);
        for _ in 0..100 {
            push(&mut e, &t, &p, &mut drops);
        }
        assert!(e.runs().len() >= 3);
        assert!(
            e.runs().iter().all(|r| r.len <= MAX_GSO_BYTES),
            "{:?}",
            e.runs()
        );
        assert_eq!(e.runs().iter().map(|r| r.datagrams).sum::<usize>(), 100);
    }

    #[test]
    fn without_gso_every_frame_is_its_own_run() {
        let r = routes();
        let t = r.load();
        let mut e = Runs::new(16, 4096, 1);
        let mut drops = DropTally::default();
        let p = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 9], 500);
        for _ in 0..4 {
            push(&mut e, &t, &p, &mut drops);
        }
        assert_eq!(e.runs().len(), 4);
        assert!(e.runs().iter().all(|r| r.datagrams == 1));
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
