//! Packet captures of a lab host's underlay (`u0`) with tcpdump, and the pcap file they write.
//!
//! A capture is ready when tcpdump says it is listening (its filter is attached: whatever
//! crosses `u0` from then on is captured), and done when what was captured satisfies the test's
//! condition: no sleep guesses how long either takes. tcpdump runs in immediate mode, writing
//! each packet to the file as it comes (`-U`), so the file can be read while it runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::SETTLE;

/// A tcpdump writing what a filter matches on `u0` of a namespace to a file of its own; killed,
/// and its file removed, when dropped.
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `u0` of namespace `ns` with the pcap `filter`, writing to a file
    /// named after `name` (a lab prefix and a tag), and returns once it listens.
    pub fn start(ns: &str, name: &str, filter: &str) -> Capture {
        Capture::start_on(ns, "u0", name, filter)
    }

    /// [`Capture::start`] on interface `iface` (a pod's `eth0`, say).
    pub fn start_on(ns: &str, iface: &str, name: &str, filter: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("{name}.pcap"));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-i",
                iface,
                "--immediate-mode",
            ])
            .args(["-U", "-s", "0", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let stderr = child.stderr.take().unwrap();
        let capture = Capture { child, file };
        // tcpdump says "listening on u0, ..." once the filter is attached. The thread keeps
        // reading its stderr afterwards, so tcpdump never blocks on a full pipe.
        let (listening, heard) = mpsc::channel();
        std::thread::spawn(move || {
            let mut said = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = listening.send(Ok(()));
                }
                said.push_str(&line);
                said.push('\n');
            }
            let _ = listening.send(Err(said));
        });
        match heard.recv_timeout(SETTLE) {
            Ok(Ok(())) => capture,
            Ok(Err(said)) => panic!("tcpdump in {ns} stopped before listening: {said}"),
            Err(e) => panic!("tcpdump in {ns} did not listen within {SETTLE:?}: {e}"),
        }
    }

    /// The capture file as written so far.
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }

    /// Waits until the capture so far satisfies `done` (at most [`SETTLE`]; then what was
    /// captured is returned all the same, for the caller's assertions to judge), stops tcpdump
    /// and returns the file's bytes.
    pub fn finish_when(mut self, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = std::time::Instant::now() + SETTLE;
        while !done(&self.bytes()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // SAFETY: kill(2) on the tcpdump this capture started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        self.bytes()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The frames of a pcap file (Ethernet link type, the classic format tcpdump writes).
pub fn frames(pcap: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push(&pcap[at + 16..(at + 16 + len).min(pcap.len())]);
        at += 16 + len;
    }
    out
}

/// UDP payloads of the datagrams in a pcap file (Ethernet link type, IPv4).
pub fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    frames(pcap)
        .into_iter()
        .filter(|frame| frame.len() >= 14 + 20 + 8)
        .filter_map(|frame| {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            frame.get(14 + ihl + 8..).map(<[u8]>::to_vec)
        })
        .collect()
}

/// The UDP datagrams of a pcap file (Ethernet link type, IPv4): source, destination, payload.
pub fn udp_datagrams(pcap: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    frames(pcap)
        .into_iter()
        .filter(|f| f.len() >= 14 + 20 + 8 && f[12..14] == [0x08, 0x00] && f[14 + 9] == 17)
        .filter_map(|f| {
            let ip = &f[14..];
            let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
            let at = |a: &[u8], p: &[u8]| {
                SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([p[0], p[1]])))
            };
            let payload = udp.get(8..)?.to_vec();
            Some((
                at(&ip[12..16], &udp[0..2]),
                at(&ip[16..20], &udp[2..4]),
                payload,
            ))
        })
        .collect()
}
