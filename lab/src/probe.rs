//! What `lab check` and the end-to-end tests measure: ICMP echo (once, or a steady stream whose
//! silences are timed, [`Pinger`]) and a checksummed TCP transfer, all in-process from inside
//! the namespaces (no ping or iperf3 needed).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::in_netns;
use meshd::wire::checksum::checksum;

/// Send ICMP echo requests from namespace `ns` to `dst` until one is answered or `attempts`
/// have timed out. Returns the round-trip time of the answered one.
pub fn ping(ns: &str, dst: Ipv4Addr, attempts: u32) -> Result<Duration> {
    in_netns(ns, move || ping_here(dst, attempts))?
}

fn ping_here(dst: Ipv4Addr, attempts: u32) -> Result<Duration> {
    let s =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).context("raw ICMP socket")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let ident = (std::process::id() as u16) ^ 0x6d73;
    for seq in 0..attempts as u16 {
        let req = echo_request(ident, seq);
        let start = Instant::now();
        s.send_to(&req, &SocketAddr::from((dst, 0)).into())?;
        while start.elapsed() < Duration::from_secs(1) {
            let Some(reply) = read_reply(&s, dst, ident) else {
                break;
            };
            if reply == Some(seq) {
                return Ok(start.elapsed());
            }
        }
    }
    bail!("no echo reply from {dst} after {attempts} attempts")
}

/// Echo requests from a namespace to one address at a fixed interval, on a thread of their own,
/// recording when each reply came back: how long a path goes silent, not whether it works.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<PingLog>>,
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone)]
pub struct PingLog {
    pub start: Instant,
    pub end: Instant,
    pub sent: u64,
    /// When each reply arrived, in order.
    pub replies: Vec<Instant>,
}

impl PingLog {
    /// The longest time without a reply, counting from the start and up to the end.
    pub fn longest_gap(&self) -> Duration {
        let mut last = self.start;
        let mut longest = Duration::ZERO;
        for &t in self.replies.iter().chain(std::iter::once(&self.end)) {
            longest = longest.max(t.saturating_duration_since(last));
            last = t;
        }
        longest
    }

    /// When the longest gap began, as an offset from the start.
    pub fn longest_gap_at(&self) -> Duration {
        let mut last = self.start;
        let (mut longest, mut at) = (Duration::ZERO, Duration::ZERO);
        for &t in self.replies.iter().chain(std::iter::once(&self.end)) {
            if t.saturating_duration_since(last) > longest {
                longest = t.saturating_duration_since(last);
                at = last.saturating_duration_since(self.start);
            }
            last = t;
        }
        at
    }

    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.replies.len() as u64)
    }
}

impl Pinger {
    /// Starts pinging `dst` from namespace `ns` every `every`.
    pub fn start(ns: &str, dst: Ipv4Addr, every: Duration) -> Result<Pinger> {
        static IDENT: AtomicU16 = AtomicU16::new(0x7000);
        let ident = IDENT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
        let socket = in_netns(ns, || {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        })?
        .context("raw ICMP socket")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || ping_every(&socket, dst, ident, every, &flag));
        Ok(Pinger { stop, thread })
    }

    /// Stops and returns what was seen.
    pub fn stop(self) -> Result<PingLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("pinger panicked"))?
    }
}

fn ping_every(
    s: &Socket,
    dst: Ipv4Addr,
    ident: u16,
    every: Duration,
    stop: &AtomicBool,
) -> Result<PingLog> {
    let start = Instant::now();
    let mut log = PingLog {
        start,
        end: start,
        sent: 0,
        replies: Vec::new(),
    };
    let mut next = start;
    let to = SocketAddr::from((dst, 0)).into();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            s.send_to(&echo_request(ident, log.sent as u16), &to)?;
            log.sent += 1;
            next += every;
            continue;
        }
        s.set_read_timeout(Some((next - now).max(Duration::from_millis(1))))?;
        if let Some(Some(_)) = read_reply(s, dst, ident) {
            log.replies.push(Instant::now());
        }
    }
    log.end = Instant::now();
    // The last echo may have left just before the stop: give its reply the time a reply takes
    // on a working path, so it is not counted lost for arriving after the loop.
    let grace = log.end + LAST_REPLY_GRACE;
    while (log.replies.len() as u64) < log.sent {
        let now = Instant::now();
        if now >= grace {
            break;
        }
        s.set_read_timeout(Some((grace - now).max(Duration::from_millis(1))))?;
        if let Some(Some(_)) = read_reply(s, dst, ident) {
            log.replies.push(log.end);
        }
    }
    Ok(log)
}

/// How long a stopped pinger still waits for the reply to its last echo.
const LAST_REPLY_GRACE: Duration = Duration::from_millis(200);

fn echo_request(ident: u16, seq: u16) -> [u8; 64] {
    let mut req = [0u8; 64];
    req[0] = 8; // echo request
    req[4..6].copy_from_slice(&ident.to_be_bytes());
    req[6..8].copy_from_slice(&seq.to_be_bytes());
    req[8..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let c = checksum(&req);
    req[2..4].copy_from_slice(&c.to_be_bytes());
    req
}

/// Reads one datagram: `None` when the read timed out, else the sequence number if it is an echo
/// reply from `dst` to our `ident` (`Some(None)` for anything else the raw socket saw).
fn read_reply(s: &Socket, dst: Ipv4Addr, ident: u16) -> Option<Option<u16>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    // SAFETY: recv_from initialised the first n bytes.
    let b: Vec<u8> = buf[..n]
        .iter()
        .map(|x| unsafe { x.assume_init() })
        .collect();
    Some(is_reply(&b, dst, ident))
}

/// The sequence number of an echo reply from `dst` to our `ident`, in an IPv4 packet.
fn is_reply(b: &[u8], dst: Ipv4Addr, ident: u16) -> Option<u16> {
    let ihl = usize::from(b.first().copied().unwrap_or(0) & 0x0f) * 4;
    let icmp = b.get(ihl..)?;
    let from = b.get(12..16).map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]));
    (icmp.len() >= 8 && icmp[0] == 0 && from == Some(dst) && icmp[4..6] == ident.to_be_bytes())
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// Outcome of a TCP transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub bytes: u64,
    pub elapsed: Duration,
    /// SHA-256 of what was sent equals SHA-256 of what arrived.
    pub verified: bool,
}

impl Transfer {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Send `bytes` of pseudo-random data over TCP from namespace `from_ns` to a listener at
/// `to_addr:port` in namespace `to_ns`, hashing both ends.
pub fn tcp_transfer(
    from_ns: &str,
    to_ns: &str,
    to_addr: Ipv4Addr,
    port: u16,
    bytes: u64,
) -> Result<Transfer> {
    let listener = in_netns(to_ns, move || TcpListener::bind((to_addr, port)))?
        .with_context(|| format!("listening on {to_addr}:{port} in {to_ns}"))?;
    let receiver = std::thread::spawn(move || -> Result<(u64, [u8; 32])> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        Ok((total, h.finalize().into()))
    });
    let stream = in_netns(from_ns, move || {
        let addr = SocketAddr::from((to_addr, port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?
    .with_context(|| format!("connecting to {to_addr}:{port} from {from_ns}"))?;
    let (sent_hash, elapsed) = send_stream(stream, bytes)?;
    let (got, got_hash) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(Transfer {
        bytes: got,
        elapsed,
        verified: got == bytes && got_hash == sent_hash,
    })
}

fn send_stream(mut s: TcpStream, bytes: u64) -> Result<([u8; 32], Duration)> {
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut h = Sha256::new();
    let mut block = vec![0u8; 256 * 1024];
    // xorshift: cheap, deterministic, and not compressible by anything on the path.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n])?;
        h.update(&block[..n]);
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the receiver to close so the time covers delivery, not just buffering.
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink);
    Ok((h.finalize().into(), start.elapsed()))
}
