//! Path probes that look like pod traffic: an ICMP echo request from this node's bridge address
//! to the peer's bridge address, DF set, as large as a pod packet may be (the pod MTU) or small
//! (the caller chooses: `paths::cadence`), handed as an Ethernet frame to the very device pod
//! packets of that peer would leave by, addressed
//! to the MAC their route resolves to (the peer's VTEP MAC on the VXLAN device; the peer's
//! underlay MAC for host-gw). So a path can be probed while the peer's packets take another,
//! and what breaks pod packets on that path (a firewall, an MTU black hole, a VPC dropping
//! foreign destinations) breaks the probe too.
//!
//! The peer's kernel answers, by whichever path it routes to us; replies arrive at a raw ICMP
//! socket that sees only echo replies with this node's identifier (a socket filter drops the
//! host's other echo replies in the kernel).
//!
//! A reply counts only if it carries the probe's [`Token`]: 64 random bits (getrandom(2)) at
//! the start of the echo's payload, which the peer's kernel echoes back. The identifier and
//! the sequence number are 32 bits anyone can guess, and the source address is one a pod on
//! the peer may use, so without the token anyone able to send ICMP to this node could keep a
//! broken path "up" with forged replies.
//!
//! A probe may also be `partial`: its ICMP checksum left unfinished and handed to the kernel as
//! one to be finished by whoever offloads it (a virtio-net header on the frame socket,
//! `PACKET_VNET_HDR`), as a pod's TCP and UDP packets are. It shows whether the peer's receiver
//! copes with what a veth underlay hands on ([`crate::paths::receiver`]).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::wire::checksum::checksum;
use crate::wire::MacAddr;

const ETH_P_IP: u16 = 0x0800;
/// An Ethernet header: what [`Prober::send_ip`] leaves off a probe's frame.
const ETH_HEADER: usize = 14;
/// `SIOCGSTAMPNS`: the receive time of the last packet read from a socket (a `timespec`).
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMP_FILTER: libc::c_int = 1;
const SOL_RAW: libc::c_int = 255;
/// `PACKET_VNET_HDR` (linux/if_packet.h): frames written carry a virtio-net header.
const PACKET_VNET_HDR: libc::c_int = 15;
/// The reply socket's receive buffer: the kernel's default (208 KiB) held only about 75
/// pod-sized replies, fewer than a node with 100 peers may have coming back together, and
/// replies wait there for the manager's next tick (or longer, when its thread is busy).
const REPLY_BUFFER: libc::c_int = 1 << 20;

/// The identifier of this node's echoes: the low bits of meshd's pid.
pub(crate) fn ident() -> u16 {
    std::process::id() as u16
}

/// Whether IPv4 `packet` is an echo request with identifier `ident`: one of this node's probes
/// (the data path lets them past the peer's MTU: they are how it is found).
#[inline]
pub(crate) fn is_probe(packet: &[u8], ident: u16) -> bool {
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    packet.get(9) == Some(&(libc::IPPROTO_ICMP as u8))
        && packet.get(ihl) == Some(&ICMP_ECHO)
        && packet.get(ihl + 4..ihl + 6) == Some(&ident.to_be_bytes()[..])
}

/// Whether IPv4 `packet` is an echo request or reply to `subnet`'s bridge address (its first
/// host): a node's path or MTU probe, or a node's kernel answering one. Not pod traffic: what
/// discovery sends must never make a peer look busy (its probes would keep themselves going,
/// and each side's replies would make the other probe). One byte decides for any other packet.
#[inline]
pub(crate) fn is_node_echo(packet: &[u8], subnet: ipnet::Ipv4Net) -> bool {
    if packet.get(9) != Some(&(libc::IPPROTO_ICMP as u8)) {
        return false;
    }
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    matches!(packet.get(ihl), Some(&ICMP_ECHO | &ICMP_ECHO_REPLY))
        && packet.get(16..20) == Some(&crate::host::gateway(subnet).octets()[..])
}

/// The smallest probe (IPv4 total length): headers and the token.
const MIN_PROBE: usize = 20 + 8 + TOKEN_LEN;
const TOKEN_LEN: usize = 8;

/// A probe's secret: random, unpredictable, checked on the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl Token {
    /// A fresh token from the kernel's random source (getrandom(2), which never blocks once
    /// the pool is initialised, long before meshd runs).
    pub fn random() -> io::Result<Token> {
        let mut t = [0u8; TOKEN_LEN];
        let mut filled = 0;
        while filled < t.len() {
            // SAFETY: getrandom writes at most the given length into the buffer we own.
            let n =
                unsafe { libc::getrandom(t[filled..].as_mut_ptr().cast(), t.len() - filled, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        Ok(Token(t))
    }
}

/// One probe: who it is from and to, how big (the IPv4 total length), its sequence number and
/// its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub ifindex: u32,
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub size: u16,
    pub seq: u16,
    pub token: Token,
    /// Its ICMP checksum is left for the offload to finish (see the module's text).
    pub partial: bool,
}

/// An echo reply to one of this node's probes: its source, sequence number and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub src: Ipv4Addr,
    pub seq: u16,
    pub token: Token,
}

pub struct Prober {
    frames: OwnedFd,
    /// The frame socket takes a virtio-net header (`PACKET_VNET_HDR`): `partial` probes can
    /// be sent.
    vnet: bool,
    icmp: OwnedFd,
    ident: u16,
    buf: Vec<u8>,
}

impl Prober {
    /// The sockets, in the current network namespace; `ident` marks this node's echoes.
    pub fn new(ident: u16) -> io::Result<Prober> {
        // SAFETY: plain socket(2) calls; each result is checked before it is owned.
        let frames =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if frames < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by socket(2), owned from here on.
        let frames = unsafe { OwnedFd::from_raw_fd(frames) };
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with a c_int the call reads.
        let vnet = unsafe {
            libc::setsockopt(
                frames.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        } == 0;
        // SAFETY: as above.
        let icmp = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::IPPROTO_ICMP,
            )
        };
        if icmp < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let icmp = unsafe { OwnedFd::from_raw_fd(icmp) };
        // Only echo replies reach the socket: every other type is filtered in the kernel.
        let filter: u32 = !(1u32 << ICMP_ECHO_REPLY);
        // SAFETY: setsockopt with a u32 the call reads.
        let rc = unsafe {
            libc::setsockopt(
                icmp.as_raw_fd(),
                SOL_RAW,
                ICMP_FILTER,
                (&filter as *const u32).cast(),
                4,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Err(e) = only_ident(&icmp, ident) {
            // Replies are still matched by identifier and token when read: the filter only
            // keeps other replies out of the buffer.
            tracing::warn!(error = %e, "probe replies: socket filter refused; every echo reply the host gets is queued and sorted at each tick");
        }
        // SO_RCVBUFFORCE passes net.core.rmem_max (meshd has CAP_NET_ADMIN); without it,
        // SO_RCVBUF gets what rmem_max allows.
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt with a c_int the call reads.
            let rc = unsafe {
                libc::setsockopt(
                    icmp.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&REPLY_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                break;
            }
        }
        // Every reply is stamped by the kernel when it arrives, read back with SIOCGSTAMPNS: the
        // manager reads replies once per tick, so its own clock would round each round trip up
        // to the tick. The first such call turns the stamps on (SO_TIMESTAMPNS would too, but
        // then the kernel hands stamps only to recvmsg, not to the ioctl). Without stamps a
        // reply is timed when read.
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: SIOCGSTAMPNS writes one timespec we own.
        unsafe { libc::ioctl(icmp.as_raw_fd(), SIOCGSTAMPNS, &mut ts) };
        Ok(Prober {
            frames,
            vnet,
            icmp,
            ident,
            buf: Vec::with_capacity(9216),
        })
    }

    /// `partial` probes can be sent (the kernel takes a virtio-net header on frames).
    pub fn partial_ok(&self) -> bool {
        self.vnet
    }

    /// Send `p` as a frame on its device.
    pub fn send(&mut self, p: &Probe) -> io::Result<()> {
        self.send_from(p, 0)
    }

    /// Send `p` as a bare IP packet on a device without a link layer (the TUN device, whose
    /// reader is meshd's own data path; a WireGuard device): the probe then takes the path pod
    /// packets to that device take.
    pub fn send_ip(&mut self, p: &Probe) -> io::Result<()> {
        self.send_from(p, ETH_HEADER)
    }

    /// Send the frame of `p` from byte `skip` on (the Ethernet header skipped for bare IP),
    /// behind its virtio-net header when the socket takes one.
    fn send_from(&mut self, p: &Probe, skip: usize) -> io::Result<()> {
        if p.partial && (!self.vnet || skip > 0) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a probe with an unfinished checksum needs PACKET_VNET_HDR and a link layer",
            ));
        }
        if self.vnet {
            vnet_frame(&mut self.buf, p, self.ident);
            // The header goes right in front of the bytes sent: over the skipped Ethernet
            // header's end (it is shorter), when there is one to skip.
            if skip >= VNET_HDR_LEN {
                self.buf.copy_within(0..VNET_HDR_LEN, skip);
            }
        } else {
            frame(&mut self.buf, p, self.ident);
        }
        let bytes = self.buf.get(skip..).unwrap_or_default();
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_IP.to_be();
        sll.sll_ifindex = p.ifindex as i32;
        if skip == 0 {
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&p.dst_mac.0);
        }
        // SAFETY: sendto with a buffer and address that live across the call.
        let n = unsafe {
            libc::sendto(
                self.frames.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A small echo request to `dst` routed as the host routes it: it makes the kernel resolve
    /// `dst`'s MAC (host-gw probes need it). The reply is ignored (sequence 0).
    pub fn nudge(&mut self, dst: Ipv4Addr) -> io::Result<()> {
        let mut icmp = [0u8; 16];
        icmp[0] = ICMP_ECHO;
        icmp[4..6].copy_from_slice(&self.ident.to_be_bytes());
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: sockaddr_in is plain data.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: sendto with a buffer and address that live across the call.
        let n = unsafe {
            libc::sendto(
                self.icmp.as_raw_fd(),
                icmp.as_ptr().cast(),
                icmp.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every echo reply waiting; never blocks.
    /// Each with when it arrived.
    pub fn replies(&mut self, out: &mut Vec<(Reply, Instant)>) {
        let mut buf = [0u8; 1600];
        loop {
            // SAFETY: recv into a stack buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.icmp.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                return;
            }
            let n = (n as usize).min(buf.len());
            if let Some(r) = parse_reply(&buf[..n], self.ident) {
                out.push((r, self.arrival()));
            }
        }
    }

    /// When the reply last read arrived, by the kernel's stamp (realtime, taken back to this
    /// process's monotonic clock); now, if the kernel gave none.
    fn arrival(&self) -> Instant {
        let now = Instant::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: SIOCGSTAMPNS writes one timespec we own.
        let rc = unsafe { libc::ioctl(self.icmp.as_raw_fd(), SIOCGSTAMPNS, &mut ts) };
        if rc != 0 || ts.tv_sec <= 0 {
            return now;
        }
        let stamp = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                ts.tv_sec.max(0) as u64,
                ts.tv_nsec.clamp(0, 999_999_999) as u32,
            );
        let age = std::time::SystemTime::now()
            .duration_since(stamp)
            .unwrap_or_default();
        now.checked_sub(age).unwrap_or(now)
    }
}

/// Only echo replies carrying `ident` are queued on the raw socket `icmp` (a classic BPF
/// socket filter: the identifier after the IP header's options). A raw ICMP socket is handed
/// every echo reply the host gets: without it, each reply to a host's own `ping` (a monitoring
/// agent's, a benchmark's) was copied in, woke nobody but took buffer room until the manager's
/// next tick, where a flood of them could crowd out the probes' replies.
fn only_ident(icmp: &OwnedFd, ident: u16) -> io::Result<()> {
    // Classic BPF opcodes (linux/filter.h). The packet starts at the IP header.
    const LDX_B_MSH: u16 = 0xb1;
    const LD_H_IND: u16 = 0x48;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = [
        // X = the IP header's length; A = the identifier, 4 bytes into the ICMP header.
        op(LDX_B_MSH, 0, 0, 0),
        op(LD_H_IND, 0, 0, 4),
        op(JEQ_K, 0, 1, u32::from(ident)),
        op(RET_K, 0, 0, u32::MAX),
        op(RET_K, 0, 0, 0),
    ];
    super::attach_cbpf(icmp, libc::SO_ATTACH_FILTER, &mut prog)
}

mod frame;
pub use frame::{frame, parse_reply};
use frame::{vnet_frame, VNET_HDR_LEN};

#[cfg(test)]
mod tests;
