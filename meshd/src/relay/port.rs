//! One relay port: a UDP socket kept for one pair of members, forwarding each side's WireGuard
//! datagrams, unopened, to the other side.
//!
//! **Who is a side.** Each side is known by the address its authenticated WireGuard traffic
//! comes from at this node (the endpoint in use of its link, set every
//! [`super::Relay::update`]): a datagram from any other address is refused and counted. A side
//! sends from a port of its own choosing (behind a NAT that maps each destination anew, a port
//! this node has never seen), so the port is learnt, and only from a handshake message (an
//! initiation or a response) made for the *other* side: its mac1, keyed by the other side's
//! public key, must check ([`meshd_crypto::Mac1Check`]). Anything else from a port not learnt
//! is refused: a host behind the same NAT as a side, or one that forges the NAT's address,
//! cannot take the side's place at the port (it would receive the pair's datagrams and lock the
//! side out), since it cannot make such a message. A side whose mapping changed, or that moves
//! to this relay with a session already up, sends a handshake (the sides ask for one when they
//! choose a relay, `super::choose`). Only WireGuard messages pass (type and length checked), so
//! the port is no general tunnel; what they carry only the two sides can open.
//!
//! **Batches.** One `recvmmsg` reads up to [`BATCH`] slots, each a GRO train of one side's
//! datagrams where the kernel coalesces them, and a train leaves for the other side as one GSO
//! send (the segments as they came), so a bulk transfer costs the relay a few syscalls per 64 KiB.
//! One thread per port; nothing allocated per datagram.

use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use meshd_crypto::{Mac1Check, PublicKey, WgDatagram};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

use crate::datapath::io::{send, wait};
use crate::datapath::socket::{bind_socket, set_udp_gro};

/// Slots per `recvmmsg`.
const BATCH: usize = 8;
/// One slot: a GRO train of up to 64 KiB.
const SLOT: usize = 65535;
/// Socket buffers each way: a burst of a fast pair is not dropped at the relay.
const BUFFER: usize = 4 << 20;

/// Counters of one direction (from side `i` to the other).
#[derive(Debug, Default)]
pub(crate) struct Way {
    pub(crate) datagrams: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// What the forwarding thread shares with the status and the control step.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The sides' addresses (the endpoints in use of their links here).
    pub(crate) sides: ArcSwap<[IpAddr; 2]>,
    /// The sides' public keys, which key the mac1 check of what may teach a side's port.
    pub(crate) keys: ArcSwap<Keys>,
    /// Where each side's datagrams come from, as learnt (written on a change only).
    pub(crate) learnt: Mutex<[Option<SocketAddr>; 2]>,
    pub(crate) ways: [Way; 2],
    /// Refused: from neither side, from a port of a side not learnt without a handshake made
    /// for the other side, or not WireGuard.
    pub(crate) refused: AtomicU64,
    /// Held back: the other side has not sent anything yet (nowhere to forward to).
    pub(crate) waiting: AtomicU64,
    pub(crate) stop: AtomicBool,
}

/// The sides' public keys and, for each side, the check of what it sends (made for the other).
pub(crate) struct Keys {
    pub(crate) public: [PublicKey; 2],
    /// `from[i]`: what side `i` sends must be made for side `1 - i`.
    from: [Mac1Check; 2],
}

impl Keys {
    pub(crate) fn new(public: [PublicKey; 2]) -> Self {
        Keys {
            from: [Mac1Check::new(&public[1]), Mac1Check::new(&public[0])],
            public,
        }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public", &self.public)
            .finish()
    }
}

/// A bound relay port and its thread.
pub(crate) struct Port {
    pub(crate) port: u16,
    pub(crate) shared: Arc<Shared>,
}

impl Port {
    /// Binds a port on `bind` for sides at `sides` with public keys `keys`, and starts
    /// forwarding.
    pub(crate) fn open(
        bind: IpAddr,
        sides: [IpAddr; 2],
        keys: [PublicKey; 2],
        name: &str,
    ) -> std::io::Result<Port> {
        let socket = bind_socket(SocketAddr::new(bind, 0), BUFFER, false)
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        socket.set_nonblocking(true)?;
        set_udp_gro(&socket, true);
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let port = socket.local_addr()?.port();
        let shared = Arc::new(Shared {
            sides: ArcSwap::from_pointee(sides),
            keys: ArcSwap::from_pointee(Keys::new(keys)),
            learnt: Mutex::new([None, None]),
            ways: [Way::default(), Way::default()],
            refused: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("relay-{name}"))
            .spawn(move || Forwarder::new().run(&socket, &state, &s))?;
        Ok(Port { port, shared })
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The forwarding loop's buffers, allocated once: a batch of `recvmmsg` slots, each large
/// enough for a GRO train of one side's datagrams, which leaves as one GSO send.
struct Forwarder {
    big: Vec<u8>,
    meta: [RecvMeta; BATCH],
    learnt: [Option<SocketAddr>; 2],
}

impl Forwarder {
    fn new() -> Self {
        Forwarder {
            big: vec![0u8; BATCH * SLOT],
            meta: [RecvMeta::default(); BATCH],
            learnt: [None, None],
        }
    }

    fn run(&mut self, socket: &UdpSocket, state: &UdpSocketState, s: &Shared) {
        while !s.stop.load(Ordering::Relaxed) {
            let received = {
                let mut chunks = self.big.chunks_mut(SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                state.recv(UdpSockRef::from(socket), &mut iovs, &mut self.meta)
            };
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait(socket, libc::POLLIN);
                    continue;
                }
                // An ICMP error queued on the socket, say: read again.
                Err(e) => {
                    tracing::trace!(error = %e, "relay port: receive");
                    continue;
                }
            };
            for i in 0..n {
                let m = self.meta[i];
                let data = &self.big[i * SLOT..i * SLOT + m.len.min(SLOT)];
                if let Some((to, stride)) = admit(&mut self.learnt, s, m.addr, data, m.stride) {
                    send_on(socket, state, s, to, data, stride);
                }
            }
        }
    }
}

/// Which side `src` is and where its datagrams go: `None` (counted) when refused or when the
/// other side has sent nothing yet. Every segment of a GRO train must be a WireGuard message; a
/// port not learnt is learnt from a train whose first segment is a handshake message made for
/// the other side.
fn admit(
    learnt: &mut [Option<SocketAddr>; 2],
    s: &Shared,
    src: SocketAddr,
    data: &[u8],
    stride: usize,
) -> Option<(SocketAddr, usize)> {
    let stride = if stride == 0 || stride > data.len() {
        data.len().max(1)
    } else {
        stride
    };
    let segments = data.len().div_ceil(stride).max(1) as u64;
    let sides = s.sides.load();
    let Some(i) = sides.iter().position(|ip| *ip == src.ip()) else {
        s.refused.fetch_add(segments, Ordering::Relaxed);
        return None;
    };
    if data.is_empty()
        || data
            .chunks(stride)
            .any(|d| WgDatagram::new_checked(d).is_err())
    {
        s.refused.fetch_add(segments, Ordering::Relaxed);
        return None;
    }
    if learnt[i] != Some(src) {
        let first = &data[..stride.min(data.len())];
        if !s.keys.load().from[i].verifies(first) {
            s.refused.fetch_add(segments, Ordering::Relaxed);
            return None;
        }
        learnt[i] = Some(src);
        s.learnt.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(src);
    }
    let Some(to) = learnt[1 - i] else {
        s.waiting.fetch_add(segments, Ordering::Relaxed);
        return None;
    };
    s.ways[i].datagrams.fetch_add(segments, Ordering::Relaxed);
    s.ways[i]
        .bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    Some((to, stride))
}

/// Sends `data` (segments of `stride` bytes) to `to`: one GSO send when the socket can, else
/// one send per segment; waits while the socket buffer is full.
fn send_on(
    socket: &UdpSocket,
    state: &UdpSocketState,
    s: &Shared,
    to: SocketAddr,
    data: &[u8],
    stride: usize,
) {
    let segments = data.len().div_ceil(stride);
    let gso = segments > 1 && segments <= state.max_gso_segments();
    let pieces: &mut dyn Iterator<Item = &[u8]> = if gso {
        &mut std::iter::once(data)
    } else {
        &mut data.chunks(stride)
    };
    for contents in pieces {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (gso && contents.len() > stride).then_some(stride),
            src_ip: None,
        };
        if let Err(e) = send(socket, state, &t, &s.stop) {
            tracing::trace!(error = %e, %to, "relay send");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use meshd_crypto::{Action, PrivateKey, RateLimiter, Session};
    use std::time::{Duration, Instant};

    fn side(ip: &str) -> UdpSocket {
        let s = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// A WireGuard data message's shape (type 4, reserved zeros, a counter and a tag's room).
    fn datagram(tag: u8) -> Vec<u8> {
        let mut d = vec![4, 0, 0, 0];
        d.extend([tag; 44]);
        d
    }

    fn wait(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A side's handshake messages: `a`'s initiation made for `b`, and `b`'s response to it.
    fn handshake(a: &PrivateKey, b: &PrivateKey) -> (Vec<u8>, Vec<u8>) {
        let limiter = |k: &PrivateKey| RateLimiter::new(&k.public_key(), 100);
        let mut sa = Session::new(a, 1, b.public_key(), [9; 32], &limiter(a)).unwrap();
        let mut sb = Session::new(b, 2, a.public_key(), [9; 32], &limiter(b)).unwrap();
        let mut out = vec![0u8; 256];
        let Action::WriteToNetwork(n) = sa.encapsulate(&[], &mut out) else {
            panic!("no initiation");
        };
        let init = out[..n].to_vec();
        let Action::WriteToNetwork(n) = sb.decapsulate(None, &init, &mut out) else {
            panic!("no response");
        };
        (init, out[..n].to_vec())
    }

    #[test]
    fn a_port_forwards_wireguard_between_its_two_sides_and_refuses_everyone_else() {
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let (ip_a, ip_b) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let port = Port::open(
            "127.0.0.1".parse().unwrap(),
            [ip_a, ip_b],
            [ka.public_key(), kb.public_key()],
            "t",
        )
        .unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], port.port));
        let (a, b) = (side("127.0.0.2"), side("127.0.0.3"));
        let s = &port.shared;
        let refused = |n: u64| move || s.refused.load(Ordering::Relaxed) == n;
        let (init, response) = handshake(&ka, &kb);
        // Data from a side not learnt teaches nothing.
        a.send_to(&datagram(1), to).unwrap();
        wait("data before a handshake refused", refused(1));
        // a's initiation for b: a learnt, nowhere to forward yet.
        a.send_to(&init, to).unwrap();
        wait("held back", || s.waiting.load(Ordering::Relaxed) == 1);
        // b's response for a: b learnt, forwarded to a's port unchanged; then data both ways.
        b.send_to(&response, to).unwrap();
        let mut buf = [0u8; 256];
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&response[..], to));
        a.send_to(&datagram(3), to).unwrap();
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(3)[..]);
        // A stranger; another port of a's address with data, or with a handshake made for a
        // (not for b: someone else's, replayed); bytes that are no WireGuard message: refused,
        // nothing forwarded, a's port unchanged.
        side("127.0.0.4").send_to(&init, to).unwrap();
        let intruder = side("127.0.0.2");
        intruder.send_to(&datagram(5), to).unwrap();
        intruder.send_to(&response, to).unwrap();
        a.send_to(b"GET / HTTP/1.1\r\n\r\n", to).unwrap();
        wait("refused", refused(5));
        b.send_to(&datagram(6), to).unwrap();
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(6)[..], "b's data still reaches a");
        intruder
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(
            intruder.recv_from(&mut buf).is_err(),
            "nothing reached the intruder"
        );
        assert_eq!(s.ways[0].datagrams.load(Ordering::Relaxed), 1);
        assert_eq!(s.ways[1].datagrams.load(Ordering::Relaxed), 2);
        assert_eq!(s.ways[0].bytes.load(Ordering::Relaxed), 48);
        let learnt = *s.learnt.lock().unwrap();
        assert_eq!(
            learnt,
            [Some(a.local_addr().unwrap()), Some(b.local_addr().unwrap())]
        );
        // a's mapping moves (a new port of its address) with a handshake for b: it takes over.
        let moved = side("127.0.0.2");
        moved.send_to(&init, to).unwrap();
        wait("a's new port learnt", || {
            s.learnt.lock().unwrap()[0] == Some(moved.local_addr().unwrap())
        });
        b.send_to(&datagram(7), to).unwrap();
        let (n, _) = moved.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &datagram(7)[..]);
    }
}
