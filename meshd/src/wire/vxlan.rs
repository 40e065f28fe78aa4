//! VXLAN (RFC 7348) as meshd speaks it: the UDP payload is an 8-byte VXLAN header followed by an
//! Ethernet frame carrying one IPv4 or IPv6 packet, exactly what a Linux VXLAN device sends, so a
//! userspace node and a kernel node interoperate byte for byte.
//!
//! ```text
//!  0               1               2               3
//! |R R R R I R R R|       Reserved (24 bits)                      |   VXLAN header
//! |        VXLAN Network Identifier (24 bits)     |   Reserved    |
//! |        inner destination MAC (6) | inner source MAC (6)       |   Ethernet header
//! |        EtherType (2)             | IP packet ...                 
//! ```

use super::ip::{inner_addrs, InnerAddrs, IpError};
use super::mac::MacAddr;
use std::ops::Range;

const FLAGS: usize = 0;
const VNI: Range<usize> = 4..7;
const DST_MAC: Range<usize> = 8..14;
const SRC_MAC: Range<usize> = 14..20;
const ETHERTYPE: Range<usize> = 20..22;

/// Bytes in front of the inner IP packet: VXLAN header plus inner Ethernet header.
pub const HEADER_LEN: usize = 22;
/// Bytes the overlay adds to an inner IP packet on an IPv4 underlay: outer IPv4 (20) + UDP (8) +
/// VXLAN (8) + inner Ethernet (14). The TUN MTU is the underlay MTU minus this.
pub const VXLAN_OVERHEAD: usize = 50;

/// The "I" flag: the VNI field is valid. RFC 7348 §5: must be set; the other flag bits are
/// reserved, sent as zero and ignored on receipt.
const FLAG_VNI_VALID: u8 = 0x08;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Why a datagram is not a VXLAN frame we deliver. Plain and cheap: the data path counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the VXLAN and Ethernet headers, or than the inner IP header claims.
    Truncated,
    /// The I flag is clear.
    NoVni,
    /// The VNI is not ours.
    WrongVni,
    /// The inner frame is not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// EtherType and IP version disagree, or the IP header is invalid.
    BadInnerHeader,
}

/// A validated VXLAN frame inside a received UDP payload.
#[derive(Debug)]
pub struct VxlanFrame<'a> {
    buf: &'a [u8],
    inner: InnerAddrs,
}

impl<'a> VxlanFrame<'a> {
    /// Validate `buf` as a VXLAN frame for `vni` carrying one IP packet.
    #[inline]
    pub fn new_checked(buf: &'a [u8], vni: u32) -> Result<Self, FrameError> {
        if buf.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        if buf[FLAGS] & FLAG_VNI_VALID == 0 {
            return Err(FrameError::NoVni);
        }
        let got = u32::from_be_bytes([0, buf[VNI.start], buf[VNI.start + 1], buf[VNI.start + 2]]);
        if got != vni {
            return Err(FrameError::WrongVni);
        }
        let ethertype = u16::from_be_bytes([buf[ETHERTYPE.start], buf[ETHERTYPE.start + 1]]);
        let want_version = match ethertype {
            ETHERTYPE_IPV4 => 4,
            ETHERTYPE_IPV6 => 6,
            _ => return Err(FrameError::NotIp),
        };
        let packet = &buf[HEADER_LEN..];
        let inner = inner_addrs(packet).map_err(|e| match e {
            IpError::Truncated => FrameError::Truncated,
            IpError::BadHeader => FrameError::BadInnerHeader,
        })?;
        if packet[0] >> 4 != want_version {
            return Err(FrameError::BadInnerHeader);
        }
        Ok(VxlanFrame { buf, inner })
    }

    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([
            0,
            self.buf[VNI.start],
            self.buf[VNI.start + 1],
            self.buf[VNI.start + 2],
        ])
    }

    pub fn dst_mac(&self) -> MacAddr {
        MacAddr(mac_at(self.buf, DST_MAC))
    }

    pub fn src_mac(&self) -> MacAddr {
        MacAddr(mac_at(self.buf, SRC_MAC))
    }

    pub fn addrs(&self) -> InnerAddrs {
        self.inner
    }

    /// The inner IP packet, trimmed to the length its header claims (drops link padding).
    pub fn packet(&self) -> &'a [u8] {
        &self.buf[HEADER_LEN..HEADER_LEN + self.inner.len]
    }
}

/// The 22 bytes meshd writes in front of every IP packet sent to one peer. Built once per peer
/// when the route table is built; per packet only the EtherType changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanHeader([u8; HEADER_LEN]);

impl VxlanHeader {
    pub fn new(vni: u32, src: MacAddr, dst: MacAddr) -> Self {
        let mut h = [0u8; HEADER_LEN];
        h[FLAGS] = FLAG_VNI_VALID;
        h[VNI].copy_from_slice(&vni.to_be_bytes()[1..]);
        h[DST_MAC].copy_from_slice(&dst.0);
        h[SRC_MAC].copy_from_slice(&src.0);
        h[ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        VxlanHeader(h)
    }

    /// Write the header for `packet` into `out[..HEADER_LEN]`.
    /// Returns `None` when `out` is too short or `packet` is neither IPv4 nor IPv6.
    #[inline]
    pub fn emit(&self, packet: &[u8], out: &mut [u8]) -> Option<()> {
        let ethertype = match packet.first()? >> 4 {
            4 => ETHERTYPE_IPV4,
            6 => ETHERTYPE_IPV6,
            _ => return None,
        };
        let out = out.get_mut(..HEADER_LEN)?;
        out.copy_from_slice(&self.0);
        out[ETHERTYPE].copy_from_slice(&ethertype.to_be_bytes());
        Some(())
    }

    /// Frame the packet that follows the header's room in `frame` (`frame[HEADER_LEN..]`)
    /// where it lies; returns the frame length.
    #[inline]
    pub fn frame_in_place(&self, frame: &mut [u8]) -> Option<usize> {
        let (head, packet) = frame.split_at_mut_checked(HEADER_LEN)?;
        self.emit(packet, head)?;
        Some(frame.len())
    }

    /// Frame `packet` into `out`; returns the frame length.
    #[inline]
    pub fn encapsulate(&self, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = HEADER_LEN + packet.len();
        let frame = out.get_mut(..len)?;
        self.emit(packet, frame)?;
        frame[HEADER_LEN..].copy_from_slice(packet);
        Some(len)
    }
}

#[inline]
fn mac_at(buf: &[u8], r: Range<usize>) -> [u8; 6] {
    let mut m = [0u8; 6];
    m.copy_from_slice(&buf[r]);
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::wire::ip::tests_support::ipv4_packet;

    fn macs() -> (MacAddr, MacAddr) {
        (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]))
    }

    #[test]
    fn round_trip() {
        let (a, b) = macs();
        let hdr = VxlanHeader::new(1, a, b);
        let packet = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 2], 100);
        let mut out = [0u8; 200];
        let n = hdr.encapsulate(&packet, &mut out).unwrap();
        assert_eq!(n, HEADER_LEN + packet.len());
        let f = VxlanFrame::new_checked(&out[..n], 1).unwrap();
        assert_eq!(f.vni(), 1);
        assert_eq!(f.src_mac(), a);
        assert_eq!(f.dst_mac(), b);
        assert_eq!(f.packet(), &packet[..]);
        assert_eq!(f.addrs().dst.to_string(), "10.244.2.2");
    }

    /// Framing where the packet lies gives the bytes framing into another buffer gives.
    #[test]
    fn frame_in_place_equals_encapsulate() {
        let (a, b) = macs();
        let hdr = VxlanHeader::new(7, a, b);
        for packet in [ipv4_packet([10, 244, 1, 2], [10, 244, 2, 2], 100), {
            let mut v6 = vec![0x60u8; 60];
            v6[1..].fill(0);
            v6
        }] {
            let mut copied = vec![0u8; HEADER_LEN + packet.len()];
            assert_eq!(hdr.encapsulate(&packet, &mut copied), Some(copied.len()));
            let mut slot = vec![0xeeu8; HEADER_LEN];
            slot.extend_from_slice(&packet);
            assert_eq!(hdr.frame_in_place(&mut slot), Some(copied.len()));
            assert_eq!(slot, copied);
        }
        let mut not_ip = vec![0u8; HEADER_LEN + 20];
        assert_eq!(hdr.frame_in_place(&mut not_ip), None);
        assert_eq!(hdr.frame_in_place(&mut [0u8; 10]), None);
    }

    #[test]
    fn header_bytes_match_rfc7348_layout() {
        let (a, b) = macs();
        let hdr = VxlanHeader::new(0x123456, a, b);
        let packet = ipv4_packet([1, 2, 3, 4], [5, 6, 7, 8], 0);
        let mut out = [0u8; 64];
        hdr.encapsulate(&packet, &mut out).unwrap();
        assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(&out[8..14], &b.0);
        assert_eq!(&out[14..20], &a.0);
        assert_eq!(&out[20..22], &[0x08, 0x00]);
    }

    #[test]
    fn rejects_wrong_vni_flags_type_and_truncation() {
        let (a, b) = macs();
        let packet = ipv4_packet([10, 244, 1, 2], [10, 244, 2, 2], 10);
        let mut out = [0u8; 100];
        let n = VxlanHeader::new(7, a, b)
            .encapsulate(&packet, &mut out)
            .unwrap();
        assert_eq!(
            VxlanFrame::new_checked(&out[..n], 1).unwrap_err(),
            FrameError::WrongVni
        );
        assert_eq!(
            VxlanFrame::new_checked(&out[..10], 7).unwrap_err(),
            FrameError::Truncated
        );
        assert_eq!(
            VxlanFrame::new_checked(&out[..n - 1], 7).unwrap_err(),
            FrameError::Truncated
        );
        let mut noflag = out;
        noflag[0] = 0;
        assert_eq!(
            VxlanFrame::new_checked(&noflag[..n], 7).unwrap_err(),
            FrameError::NoVni
        );
        let mut arp = out;
        arp[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            VxlanFrame::new_checked(&arp[..n], 7).unwrap_err(),
            FrameError::NotIp
        );
        let mut mismatch = out;
        mismatch[20..22].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            VxlanFrame::new_checked(&mismatch[..n], 7).unwrap_err(),
            FrameError::BadInnerHeader
        );
    }

    #[test]
    fn emit_refuses_non_ip_and_short_buffers() {
        let (a, b) = macs();
        let hdr = VxlanHeader::new(1, a, b);
        assert!(hdr.emit(&[0x00, 1, 2], &mut [0u8; 64]).is_none());
        assert!(hdr.emit(&[], &mut [0u8; 64]).is_none());
        assert!(hdr.encapsulate(&[0x45; 30], &mut [0u8; 40]).is_none());
    }
}
