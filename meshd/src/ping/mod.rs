//! `meshd ping NODE|POD-ADDRESS`: echo probes through the overlay to a node's bridge address
//! (or a pod), from this node's bridge address, with per reply the round trip and the path it
//! took, then a summary; when nothing comes back, the likeliest reason, read off the status.
//!
//! ```text
//! $ meshd ping b
//! PING b (10.244.2.1, b's bridge): 84 B from 10.244.1.1, 3 probes (raw ICMP socket)
//! 84 B from 10.244.2.1: seq=1 time=0.412 ms path kernel-vxlan
//! ...
//! --- b (10.244.2.1): 3 sent, 3 received, 0% lost; rtt min/avg/max 0.301/0.412/0.520 ms; path kernel-vxlan
//! ```
//!
//! The path named is the one this node's status gives the peer that owns the destination when
//! the reply came: the way the request went (the reply came back by the path the other node
//! chose, which its own `meshd ping` or the picture shows). `--size` sets the probes' size
//! (the IPv4 packet, DF set, as the path manager's probes count it); `--until-direct` waits
//! for a direct path first (every path is direct until relaying lands, so it returns at once
//! on a routed peer).

mod args;
mod icmp;
mod target;

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use args::Args;
pub use icmp::MIN_SIZE;
pub use target::{resolve, why_silent, Target};

use crate::host::gateway;
use crate::status::{query, Status};

/// How `meshd ping` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: String,
    pub count: u32,
    /// The probes' size as IPv4 packets.
    pub size: u16,
    pub interval: Duration,
    /// How long to wait for the last reply.
    pub wait: Duration,
    /// Wait this long at most for a direct path before the first probe.
    pub until_direct: Option<Duration>,
    pub run_dir: PathBuf,
}

/// Pings as `o` says, writing to `out`. An error when nothing came back (with the reason), or
/// when the target is not one meshd reaches (nothing sent).
pub fn run(o: &Options, out: &mut dyn Write) -> Result<()> {
    let s = query(&o.run_dir)?;
    let t = resolve(&s, &o.target).map_err(anyhow::Error::msg)?;
    let src = s
        .subnet
        .parse::<ipnet::Ipv4Net>()
        .map(gateway)
        .with_context(|| format!("this node has no subnet yet ({})", s.subnet))?;
    if let Some(within) = o.until_direct {
        wait_direct(o, &t, within, out)?;
    }
    let mut pinger = icmp::Pinger::open(src, token()?)
        .with_context(|| format!("opening an ICMP socket on {src} (are you root?)"))?;
    let how = match pinger.kind {
        icmp::Kind::Datagram => "ICMP datagram socket",
        icmp::Kind::Raw => "raw ICMP socket",
    };
    writeln!(
        out,
        "PING {} ({}, {}): {} B from {src}, {} probes ({how})",
        o.target, t.dst, t.what, o.size, o.count
    )?;
    let since = SystemTime::now();
    let mut sent_at: Vec<Option<Instant>> = vec![None; o.count as usize + 1];
    let mut rtts: Vec<Duration> = Vec::new();
    let mut send_error = None;
    let mut sent = 0u32;
    for seq in 1..=o.count.min(u32::from(u16::MAX)) as u16 {
        let now = Instant::now();
        let next = now + o.interval;
        // The clock starts before the send: on a kernel path the whole round trip may happen
        // inside the call.
        match pinger.send(t.dst, seq, o.size) {
            Ok(()) => {
                sent_at[usize::from(seq)] = Some(now);
                sent += 1;
            }
            Err(e) => {
                writeln!(out, "seq={seq}: not sent: {e}")?;
                send_error = Some(e);
            }
        }
        let until = if u32::from(seq) == o.count {
            Instant::now() + o.wait
        } else {
            next
        };
        while let Some(r) = pinger.recv(t.dst, until)? {
            let Some(at) = sent_at.get_mut(usize::from(r.seq)).and_then(Option::take) else {
                continue;
            };
            let rtt = at.elapsed();
            rtts.push(rtt);
            writeln!(
                out,
                "{} B from {}: seq={} time={:.3} ms path {}",
                r.size,
                t.dst,
                r.seq,
                ms(rtt),
                path_now(o, &t)
            )?;
        }
    }
    let received = rtts.len() as u32;
    let lost = 100 * (sent - received.min(sent)) / sent.max(1);
    let mut line = format!(
        "--- {} ({}): {sent} sent, {received} received, {lost}% lost",
        o.target, t.dst
    );
    if !rtts.is_empty() {
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / received;
        line.push_str(&format!(
            "; rtt min/avg/max {:.3}/{:.3}/{:.3} ms; path {}",
            ms(min),
            ms(avg),
            ms(max),
            path_now(o, &t)
        ));
    }
    writeln!(out, "{line}")?;
    if received > 0 {
        return Ok(());
    }
    let after = query(&o.run_dir)?;
    let why = match send_error {
        Some(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => format!(
            "packets of {} B do not fit the route towards {} ({e})",
            o.size, t.dst
        ),
        _ => why_silent(&after, &t, o.size, since),
    };
    bail!("no reply from {} ({}): {why}", o.target, t.dst)
}

/// The path the status gives the destination's peer now.
fn path_now(o: &Options, t: &Target) -> String {
    match query(&o.run_dir) {
        Ok(s) => match target::peer(&s, t) {
            Some(p) => target::label(&s, p),
            None => "none (no route now)".into(),
        },
        Err(_) => "unknown (meshd does not answer)".into(),
    }
}

/// Waits until the destination's peer is on a direct path, at most `within`.
fn wait_direct(o: &Options, t: &Target, within: Duration, out: &mut dyn Write) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut said = false;
    loop {
        let s: Status = query(&o.run_dir)?;
        match target::peer(&s, t) {
            Some(p) if target::is_direct(p) => {
                writeln!(out, "path to {} is direct: {}", t.dst, target::label(&s, p))?;
                return Ok(());
            }
            Some(p) if Instant::now() >= deadline => bail!(
                "no direct path to {} within {} s: {}",
                t.dst,
                within.as_secs(),
                target::label(&s, p)
            ),
            None if Instant::now() >= deadline => bail!(
                "no direct path to {} within {} s: {}",
                t.dst,
                within.as_secs(),
                why_silent(&s, t, o.size, SystemTime::now())
            ),
            _ if !said => {
                writeln!(
                    out,
                    "waiting up to {} s for a direct path to {}",
                    within.as_secs(),
                    t.dst
                )?;
                said = true;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Eight random bytes that mark this run's echoes.
fn token() -> Result<[u8; 8]> {
    use std::io::Read;
    let mut t = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut t))
        .context("reading /dev/urandom")?;
    Ok(t)
}
