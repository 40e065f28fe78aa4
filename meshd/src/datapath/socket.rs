//! UDP sockets as the data path wants them: large buffers forced past the system limits, GRO
//! switched as configured, reuseport groups made only on free ports, and the classic BPF
//! program that decides which member of a group receives a datagram.

use anyhow::Result;
use quinn_udp::UdpSocketState;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::tiers::Steer;

/// Whether the userspace data path binds the data port (VXLAN's or WireGuard's, per the
/// encryption) or leaves it to a kernel device that owns it. Said explicitly, rather than with a
/// configuration whose port is zeroed, so that the configuration keeps saying which port the
/// node's peers send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataPort {
    /// Bind the data port, a socket per queue in one reuseport group, and receive on it.
    Bind,
    /// A kernel device (VXLAN or WireGuard) owns the data port and receives from every peer:
    /// only send, each queue from a port of its own that the kernel picks.
    SendOnly,
}

/// A UDP socket and quinn-udp's state for it (its GSO and GRO settings).
pub(crate) type QueueSocket = (UdpSocket, UdpSocketState);

/// A UDP socket bound to `addr`, with `buffer` bytes each way and SO_REUSEPORT when asked.
pub fn bind_socket(addr: SocketAddr, buffer: usize, reuse_port: bool) -> Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    // As root, force buffers past net.core.{r,w}mem_max: a userspace overlay that keeps the
    // 208 KiB default drops a datagram per burst and TCP pays with a retransmit.
    if s.set_recv_buffer_size_force(buffer).is_err() {
        let _ = s.set_recv_buffer_size(buffer);
    }
    if s.set_send_buffer_size_force(buffer).is_err() {
        let _ = s.set_send_buffer_size(buffer);
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Turn the kernel's UDP receive coalescing (`UDP_GRO`) on or off; best effort.
pub(crate) fn set_udp_gro(s: &UdpSocket, on: bool) {
    let v: libc::c_int = on.into();
    // SAFETY: a valid fd and a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Buffer sizes past `net.core.{r,w}mem_max`, which root may set.
trait ForceBuffers {
    fn set_recv_buffer_size_force(&self, n: usize) -> std::io::Result<()>;
    fn set_send_buffer_size_force(&self, n: usize) -> std::io::Result<()>;
}

impl ForceBuffers for Socket {
    fn set_recv_buffer_size_force(&self, n: usize) -> std::io::Result<()> {
        setsockopt_int(self.as_raw_fd(), libc::SO_RCVBUFFORCE, n)
    }
    fn set_send_buffer_size_force(&self, n: usize) -> std::io::Result<()> {
        setsockopt_int(self.as_raw_fd(), libc::SO_SNDBUFFORCE, n)
    }
}

fn setsockopt_int(fd: i32, opt: libc::c_int, n: usize) -> std::io::Result<()> {
    let v = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid fd and a pointer to a c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `members` sockets on `addr` (port 0: one the kernel picks), with SO_REUSEPORT when more
/// than one. A group is only made on a port nobody holds: a plain bind tries it first, so
/// that no other process's reuseport socket (of the same user) is joined.
pub(crate) fn bind_group(
    addr: SocketAddr,
    members: usize,
    buffer: usize,
) -> std::io::Result<Vec<UdpSocket>> {
    let first = bind_socket(addr, buffer, false).map_err(io_error)?;
    if members == 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr()?;
    drop(first);
    (0..members)
        .map(|_| bind_socket(addr, buffer, true).map_err(io_error))
        .collect()
}

/// The I/O error inside `e`, or `e` in words as one.
fn io_error(e: anyhow::Error) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(e) => e,
        Err(e) => std::io::Error::other(e.to_string()),
    }
}

/// A classic BPF program for the data port's SO_REUSEPORT group: a datagram goes to socket
/// number (its source port, or the low 32 bits of its source address, mod `count`). Senders
/// send consecutive flows from consecutive ports, so by port they land on different queues
/// (the kernel's default, a hash of the addresses and ports, puts two flows on one queue half
/// the time with two queues). Where the program's answer is not a socket, the kernel falls
/// back to its hash.
pub(crate) fn reuseport_program(ipv4: bool, count: usize, by: Steer) -> Vec<libc::sock_filter> {
    // Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
    const LD: u16 = 0x00;
    const LDX: u16 = 0x01;
    const ALU: u16 = 0x04;
    const RET: u16 = 0x06;
    const W: u16 = 0x00;
    const H: u16 = 0x08;
    const B: u16 = 0x10;
    const ABS: u16 = 0x20;
    const IND: u16 = 0x40;
    const MSH: u16 = 0xa0;
    const MOD: u16 = 0x90;
    const K: u16 = 0x00;
    const A: u16 = 0x10;
    // Offsets from SKF_NET_OFF reach the network header; the UDP header follows it.
    const NET: u32 = (-0x10_0000i32) as u32;
    let op = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut prog = match (by, ipv4) {
        (Steer::SourcePort, true) => vec![
            // X = IPv4 header length; A = the UDP source port after it.
            op(LDX | B | MSH, NET),
            op(LD | H | IND, NET),
        ],
        (Steer::SourcePort, false) => vec![op(LD | H | ABS, NET.wrapping_add(40))],
        // The IPv4 source address; the last word of the IPv6 one.
        (Steer::PeerAddress, true) => vec![op(LD | W | ABS, NET.wrapping_add(12))],
        (Steer::PeerAddress, false) => vec![op(LD | W | ABS, NET.wrapping_add(20))],
    };
    prog.push(op(ALU | MOD | K, count as u32));
    prog.push(op(RET | A, 0));
    prog
}

/// Attach [`reuseport_program`] to the group `socket` belongs to.
pub fn steer(socket: &UdpSocket, ipv4: bool, count: usize, by: Steer) -> std::io::Result<()> {
    let mut prog = reuseport_program(ipv4, count, by);
    crate::kernel::attach_cbpf(socket, libc::SO_ATTACH_REUSEPORT_CBPF, &mut prog)
}
