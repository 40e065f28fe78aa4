//! The TUN coalescer (meshd/src/datapath/gro.rs) against a simple reference: the kernel
//! receiving every packet on its own. The input is a script that builds packets of a few
//! connections (IPv4 and IPv6 TCP, IPv4 UDP: consecutive, short, gapped, with any flags, bad
//! checksums, IP options, fragments) and garbage between them. Whatever the coalescer writes,
//! cut back into the segments the kernel makes of a super-packet, must give each connection
//! the packets it was sent, in order, and everything else as it came; a super-packet may only
//! be made of packets the kernel's own GRO would merge (IPv4 without options and with a valid
//! header checksum, TCP ACK or ACK+PSH with a payload, valid L4 checksums where the packets
//! were not authenticated), and must complete to valid checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::datapath::gro::{Coalescer, VNET_HDR_LEN};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The script: bytes taken one at a time, zero once spent.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn more(&self) -> bool {
        !self.0.is_empty()
    }
}

fn sum(data: &[u8], mut acc: u64) -> u64 {
    for c in data.chunks(2) {
        acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Where the L4 header starts, the protocol, and the address bytes of the pseudo-header.
fn layout(p: &[u8]) -> Option<(usize, u8, &[u8])> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            (p.len() >= 20 && ihl >= 20 && p.len() >= ihl).then(|| (ihl, p[9], &p[12..20]))
        }
        6 => (p.len() >= 40).then(|| (40, p[6], &p[8..40])),
        _ => None,
    }
}

fn l4_sum_ok(p: &[u8], at: usize, proto: u8, addrs: &[u8]) -> bool {
    let l4 = &p[at..];
    fold(sum(l4, sum(addrs, u64::from(proto) + l4.len() as u64))) == 0xffff
}

/// A packet of connection `conn`, with `flags` (TCP), `len` payload bytes of `fill`, `seq`.
fn build(conn: u8, seq: u32, flags: u8, len: usize, fill: u8, opts: bool) -> Vec<u8> {
    let (v6, proto) = match conn % 4 {
        0 | 1 => (false, TCP),
        2 => (true, TCP),
        _ => (false, UDP),
    };
    let iph = if v6 { 40 } else { 20 };
    let l4h = if proto == UDP {
        8
    } else if opts {
        32
    } else {
        20
    };
    let mut p = vec![0u8; iph + l4h + len];
    let total = p.len();
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((l4h + len) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let t = &mut p[iph..];
    t[0..2].copy_from_slice(&(40000 + u16::from(conn)).to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    if proto == UDP {
        t[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    } else {
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = ((l4h / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        if opts {
            t[20..24].copy_from_slice(&[1, 1, 8, 10]);
        }
    }
    t[l4h..].fill(fill);
    fix_l4(&mut p);
    p
}

fn fix_l4(p: &mut [u8]) {
    let Some((at, proto, _)) = layout(p) else {
        return;
    };
    let off = if proto == UDP { 6 } else { 16 };
    if p.len() < at + off + 2 {
        return;
    }
    p[at + off..at + off + 2].fill(0);
    let (at, proto, addrs) = layout(p).unwrap();
    let l4 = &p[at..];
    let c = !fold(sum(l4, sum(addrs, u64::from(proto) + l4.len() as u64)));
    p[at + off..at + off + 2].copy_from_slice(&c.to_be_bytes());
}

/// `p` with 4 bytes of IPv4 options, lengths and checksums fixed.
fn with_ip_options(p: &[u8]) -> Vec<u8> {
    let mut q = p[..20].to_vec();
    q.extend_from_slice(&[1, 1, 1, 1]);
    q.extend_from_slice(&p[20..]);
    q[0] = 0x46;
    let len = q.len() as u16;
    q[2..4].copy_from_slice(&len.to_be_bytes());
    q[10..12].fill(0);
    let c = !fold(sum(&q[..24], 0));
    q[10..12].copy_from_slice(&c.to_be_bytes());
    fix_l4(&mut q);
    q
}

/// The packets the script makes.
fn packets(s: &mut Script) -> Vec<Vec<u8>> {
    let mut next = [1u32; 4];
    let mut out = Vec::new();
    let mut n = 0u8;
    while s.more() && out.len() < 64 {
        let op = s.byte();
        n = n.wrapping_add(1);
        if op % 16 == 15 {
            // Garbage: whatever bytes follow.
            let len = usize::from(s.byte() % 80);
            out.push((0..len).map(|_| s.byte()).collect());
            continue;
        }
        let conn = (op >> 4) % 4;
        let c = usize::from(conn);
        let flags = match op % 16 {
            0 => 0,
            1 => ACK | PSH,
            2 => ACK | 0x01,
            3 => ACK | 0x04,
            4 => 0x02,
            5 => ACK | 0x20,
            6 => ACK | 0x40,
            7 => ACK | 0x80,
            _ => ACK,
        };
        let shape = s.byte();
        let mss = [100usize, 1000, 1400, 9000][usize::from(shape & 3)];
        let len = match (shape >> 2) & 3 {
            0 => 0,
            1 => usize::from(s.byte()) % mss + 1,
            _ => mss,
        };
        if shape & 0x10 != 0 {
            next[c] = next[c].wrapping_add(u32::from(s.byte()) + 1);
        }
        let mut p = build(conn, next[c], flags, len, n, shape & 0x20 != 0);
        next[c] = next[c].wrapping_add(len as u32);
        let harm = if shape & 0x40 != 0 { s.byte() } else { 0 };
        let v4 = p[0] >> 4 == 4;
        match harm % 8 {
            1 if v4 => p[10] ^= 0x10, // IPv4 header checksum
            2 => {
                let at = p.len() - 1;
                p[at] ^= 0x01; // L4 checksum
            }
            3 if v4 => p = with_ip_options(&p),
            4 => {
                p[8 + 8 * usize::from(!v4)] ^= 0x01; // TTL / hop limit, or an address
                if v4 {
                    p[10..12].fill(0);
                    let c = !fold(sum(&p[..20], 0));
                    p[10..12].copy_from_slice(&c.to_be_bytes());
                }
                fix_l4(&mut p);
            }
            5 if v4 => {
                p[6] |= 0x20; // more fragments
                p[10..12].fill(0);
                let c = !fold(sum(&p[..20], 0));
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            6 => p.truncate(p.len().saturating_sub(usize::from(harm >> 3))),
            7 => p.push(harm), // a byte past the lengths
            _ => {}
        }
        out.push(p);
    }
    out
}

/// The connection (direction, protocol, ports) a packet belongs to as the kernel sees it, or
/// none (not TCP or UDP, a later fragment, too short).
fn connection(p: &[u8]) -> Option<Vec<u8>> {
    let (at, proto, addrs) = layout(p)?;
    if proto != TCP && proto != UDP || p.len() < at + 4 {
        return None;
    }
    if p[0] >> 4 == 4 && u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return None;
    }
    Some([addrs, &p[at..at + 4], &[proto]].concat())
}

/// What the receiving stack makes of one packet, the IP checksum, ID and length and the PSH
/// flag left out: what must survive coalescing unchanged.
fn identity(p: &[u8]) -> Vec<u8> {
    let Some((at, proto, _)) = layout(p) else {
        return p.to_vec();
    };
    let mut v = if p[0] >> 4 == 4 {
        [&p[..2], &p[6..10], &p[12..at]].concat()
    } else {
        [&p[..4], &p[6..40]].concat()
    };
    let l4 = &p[at..];
    if proto == TCP && l4.len() >= 20 {
        let h = usize::from(l4[12] >> 4) * 4;
        v.extend_from_slice(&l4[..13]);
        v.push(l4[13] & !PSH);
        v.extend_from_slice(&l4[14..16]);
        v.extend_from_slice(&l4[18..h.min(l4.len())]);
        v.extend_from_slice(&l4[h.min(l4.len())..]);
    } else if proto == UDP && l4.len() >= 8 {
        v.extend_from_slice(&l4[..4]);
        v.extend_from_slice(&l4[8..]);
    } else {
        v.extend_from_slice(l4);
    }
    v
}

/// Whether the kernel's GRO would merge `p` into a flow (the rules the module docs name).
fn mergeable(p: &[u8], uso: bool, verify: bool) -> bool {
    let Some((at, proto, addrs)) = layout(p) else {
        return false;
    };
    if p[0] >> 4 == 4 {
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if at != 20 || total != p.len() || fold(sum(&p[..20], 0)) != 0xffff {
            return false;
        }
        if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
            return false;
        }
    } else if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
        return false;
    }
    let l4 = &p[at..];
    let ok_sum = !verify || l4_sum_ok(p, at, proto, addrs);
    match proto {
        TCP => {
            l4.len() > 20
                && l4.len() > usize::from(l4[12] >> 4) * 4
                && (l4[13] == ACK || l4[13] == ACK | PSH)
                && ok_sum
        }
        UDP => {
            uso && l4.len() > 8
                && usize::from(u16::from_be_bytes([l4[4], l4[5]])) == l4.len()
                && (ok_sum || (p[0] >> 4 == 4 && l4[6..8] == [0, 0]))
        }
        _ => false,
    }
}

/// The packets the kernel makes of one write: the packet, or a super-packet cut at its
/// `gso_size` (each piece with the head's headers, its sequence number, its lengths).
fn cut(w: &[u8], vnet: bool) -> (bool, Vec<Vec<u8>>) {
    if !vnet {
        return (false, vec![w.to_vec()]);
    }
    let (hdr, p) = w.split_at(VNET_HDR_LEN);
    if hdr[1] == 0 {
        assert_eq!(hdr, [0; VNET_HDR_LEN], "a lone packet's header");
        return (false, vec![p.to_vec()]);
    }
    // A super-packet: its checksums complete as the kernel completes them.
    let start = usize::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
    let off = usize::from(u16::from_ne_bytes([hdr[8], hdr[9]]));
    let mut done = p.to_vec();
    let c = !fold(sum(&done[start..], 0));
    done[start + off..start + off + 2].copy_from_slice(&c.to_be_bytes());
    let (at, proto, addrs) = layout(&done).expect("a super-packet is IP");
    assert!(
        l4_sum_ok(&done, at, proto, addrs),
        "a super-packet's L4 checksum"
    );
    if done[0] >> 4 == 4 {
        assert_eq!(
            fold(sum(&done[..20], 0)),
            0xffff,
            "a super-packet's IP checksum"
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([done[2], done[3]])),
            done.len()
        );
    }
    let hlen = usize::from(u16::from_ne_bytes([hdr[2], hdr[3]]));
    let gso = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
    assert!(gso > 0 && hlen < p.len() && p.len() <= 65_535);
    let seq0 = (proto == TCP).then(|| u32::from_be_bytes(p[at + 4..at + 8].try_into().unwrap()));
    let pieces = p[hlen..]
        .chunks(gso)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = p[..hlen].to_vec();
            if let Some(seq0) = seq0 {
                let seq = seq0.wrapping_add((i * gso) as u32);
                s[at + 4..at + 8].copy_from_slice(&seq.to_be_bytes());
            }
            s.extend_from_slice(chunk);
            s
        })
        .collect();
    (true, pieces)
}

/// Packets by connection (`None`: not TCP or UDP), each group in order.
type Groups<T> = Vec<(Option<Vec<u8>>, Vec<T>)>;

fn add<T>(groups: &mut Groups<T>, key: Option<Vec<u8>>, item: T) {
    match groups.iter_mut().find(|(k, _)| *k == key) {
        Some((_, items)) => items.push(item),
        None => groups.push((key, vec![item])),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let mode = s.byte();
    let (vnet, uso, verify, via_next) =
        (mode & 1 == 0, mode & 2 == 0, mode & 4 != 0, mode & 8 != 0);
    let batch = [1, 2, 3, 8, 16, 48][usize::from(s.byte() % 6)];
    let input = packets(&mut s);

    // Coalescers are made once per configuration and reused, as the daemon reuses its own
    // (a flush leaves one as new): allocating 64 KiB buffers per run would cost most of the time.
    thread_local! {
        static MADE: std::cell::RefCell<Vec<((usize, u8), Coalescer)>> = const {
            std::cell::RefCell::new(Vec::new())
        };
    }
    let config = (batch, mode & 7);
    let mut c = MADE
        .with(|m| {
            let mut m = m.borrow_mut();
            let i = m.iter().position(|(k, _)| *k == config)?;
            Some(m.swap_remove(i).1)
        })
        .unwrap_or_else(|| Coalescer::new(batch, vnet, uso, verify));
    let mut writes = Vec::new();
    let flush = |c: &mut Coalescer, writes: &mut Vec<Vec<u8>>| {
        let mut errors = 0;
        c.flush_with(
            |b| {
                writes.push(b.to_vec());
                Ok(())
            },
            &mut errors,
        );
    };
    for p in &input {
        let full = if via_next && !p.is_empty() && p.len() <= 65_535 {
            c.next(p.len()).copy_from_slice(p);
            c.commit(p.len())
        } else {
            c.push(p)
        };
        if full {
            flush(&mut c, &mut writes);
        }
    }
    flush(&mut c, &mut writes);
    MADE.with(|m| m.borrow_mut().push((config, c)));

    // The reference: each connection's packets, and everything else, in the order sent.
    let mut want: Groups<&[u8]> = Vec::new();
    for p in &input {
        add(&mut want, connection(p), &p[..]);
    }
    let mut got: Groups<(bool, Vec<u8>)> = Vec::new();
    for w in &writes {
        let (merged, pieces) = cut(w, vnet);
        for piece in pieces {
            add(&mut got, connection(&piece), (merged, piece));
        }
    }
    assert_eq!(got.len(), want.len(), "connections written");
    for (key, sent) in &want {
        let (_, written) = got
            .iter()
            .find(|(k, _)| k == key)
            .expect("a connection lost");
        assert_eq!(written.len(), sent.len(), "packets of {key:?}");
        for (i, ((merged, w), p)) in written.iter().zip(sent).enumerate() {
            if *merged {
                assert!(
                    mergeable(p, uso, verify),
                    "packet {i} of {key:?} merged: {p:?}"
                );
                assert_eq!(identity(w), identity(p), "packet {i} of {key:?}");
            } else {
                assert_eq!(&w[..], *p, "packet {i} of {key:?} not as it came");
            }
        }
    }
});
