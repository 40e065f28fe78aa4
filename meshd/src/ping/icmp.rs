//! ICMP echo for `meshd ping`: from this node's bridge address, DF set, so a probe crosses the
//! overlay as a pod's packet would and a packet larger than the path fails instead of being
//! fragmented.
//!
//! The socket is an ICMP datagram socket (`SOCK_DGRAM`, `IPPROTO_ICMP`: what `ping` uses
//! unprivileged, allowed by `net.ipv4.ping_group_range`) where the kernel allows it, else a raw
//! ICMP socket (root or `CAP_NET_RAW`, which an operator running `meshd ping` has: the status
//! socket it reads is root's). On a datagram socket the kernel picks the echo identifier and
//! hands back only our replies; on a raw one every echo reply arrives (the path manager's probe
//! replies too), so replies are matched by identifier, sequence and a random token in the
//! payload either way.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::checksum::checksum;

const ECHO: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// ICMP header: type, code, checksum, identifier, sequence.
const ICMP_HEADER: usize = 8;
/// IPv4 header without options.
pub const IP_HEADER: usize = 20;
/// The token that marks our echoes, first in the payload.
const TOKEN: usize = 8;
/// The smallest probe: IPv4 and ICMP headers and the token.
pub const MIN_SIZE: u16 = (IP_HEADER + ICMP_HEADER + TOKEN) as u16;

/// Which socket the kernel gave us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_DGRAM`/`IPPROTO_ICMP` (ping socket).
    Datagram,
    /// `SOCK_RAW`/`IPPROTO_ICMP`.
    Raw,
}

/// One echo reply that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub seq: u16,
    /// Bytes of the IPv4 packet that came back.
    pub size: usize,
}

/// An ICMP echo socket bound to one source address.
pub struct Pinger {
    socket: UdpSocket,
    pub kind: Kind,
    ident: u16,
    token: [u8; TOKEN],
    buf: Vec<u8>,
}

impl Pinger {
    /// A socket that sends from `src` with DF set.
    pub fn open(src: Ipv4Addr, token: [u8; TOKEN]) -> io::Result<Pinger> {
        let (socket, kind) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, Kind::Datagram),
            Err(_) => (
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
                Kind::Raw,
            ),
        };
        socket.bind(&SocketAddrV4::new(src, 0).into())?;
        let df: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: setsockopt with a c_int the call reads, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&df as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let ident = match (kind, socket.local_addr()?.as_socket()) {
            // The kernel puts the socket's "port" in the identifier of what it sends.
            (Kind::Datagram, Some(a)) => a.port(),
            _ => u16::from_be_bytes([token[0], token[1]]),
        };
        // A datagram socket's calls (sendto, recvfrom) are the same whatever its protocol.
        let socket = UdpSocket::from(socket);
        Ok(Pinger {
            socket,
            kind,
            ident,
            token,
            buf: vec![0u8; 65536],
        })
    }

    /// Sends echo `seq` to `dst`, `size` bytes as an IPv4 packet (at least [`MIN_SIZE`]).
    pub fn send(&mut self, dst: Ipv4Addr, seq: u16, size: u16) -> io::Result<()> {
        let len = usize::from(size.max(MIN_SIZE)) - IP_HEADER;
        let msg = echo(self.ident, seq, &self.token, len);
        self.socket.send_to(&msg, SocketAddr::from((dst, 0)))?;
        Ok(())
    }

    /// The next reply of ours from `dst`, waiting until `until`; `None` when none came by then.
    pub fn recv(&mut self, dst: Ipv4Addr, until: Instant) -> io::Result<Option<Reply>> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            if from.ip() != dst {
                continue;
            }
            let packet = &self.buf[..n];
            let (icmp, size) = match self.kind {
                Kind::Datagram => (packet, n + IP_HEADER),
                Kind::Raw => {
                    let ihl = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
                    (packet.get(ihl..).unwrap_or_default(), n)
                }
            };
            if let Some(seq) = reply_seq(icmp, self.ident, &self.token, self.kind) {
                return Ok(Some(Reply { seq, size }));
            }
        }
    }
}

/// An echo request of `len` bytes (ICMP header and payload): the token first, then a pattern.
pub fn echo(ident: u16, seq: u16, token: &[u8; TOKEN], len: usize) -> Vec<u8> {
    let len = len.max(ICMP_HEADER + TOKEN);
    let mut m = vec![0u8; len];
    m[0] = ECHO;
    m[4..6].copy_from_slice(&ident.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..8 + TOKEN].copy_from_slice(token);
    for (i, b) in m[8 + TOKEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The sequence number of `icmp` if it is an echo reply to one of ours. A datagram socket's
/// identifier is the kernel's to check (it delivers only ours).
pub fn reply_seq(icmp: &[u8], ident: u16, token: &[u8; TOKEN], kind: Kind) -> Option<u16> {
    if icmp.len() < ICMP_HEADER + TOKEN || icmp[0] != ECHO_REPLY {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    if kind == Kind::Raw && id != ident {
        return None;
    }
    (icmp[8..8 + TOKEN] == token[..]).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_echo_is_checksummed_and_only_its_reply_matches() {
        let token = [9u8; TOKEN];
        let m = echo(0x1234, 7, &token, 64);
        assert_eq!(m.len(), 64);
        assert_eq!(checksum(&m), 0, "a correct checksum sums to zero");
        let mut reply = m.clone();
        reply[0] = ECHO_REPLY;
        assert_eq!(reply_seq(&reply, 0x1234, &token, Kind::Raw), Some(7));
        assert_eq!(reply_seq(&reply, 0x9999, &token, Kind::Raw), None);
        assert_eq!(reply_seq(&reply, 0x9999, &token, Kind::Datagram), Some(7));
        assert_eq!(reply_seq(&reply, 0x1234, &[1; TOKEN], Kind::Raw), None);
        assert_eq!(
            reply_seq(&m, 0x1234, &token, Kind::Raw),
            None,
            "a request is no reply"
        );
        assert_eq!(reply_seq(&reply[..10], 0x1234, &token, Kind::Raw), None);
        assert_eq!(echo(1, 1, &token, 0).len(), ICMP_HEADER + TOKEN);
    }
}
