//! Garbage at a running node: datagrams from a stranger, truncated frames, a wrong VNI, a
//! non-IP frame and a spoofed inner source are each dropped and counted under their reason, and
//! pod traffic keeps flowing.
//!
//! ```text
//!   sw: br0 ─┬─ h1 (meshd, target)
//!            ├─ h2 (meshd; the test also sends crafted datagrams from here)
//!            └─ x  (stranger, 198.18.0.200, not a peer)
//! ```

use super::cluster::spec;
use crate::support::{add_stranger, drops, require_root, status, wait_until};
use meshd::wire::{vtep_mac, VxlanHeader};
use meshd_lab::netns::in_netns;
use meshd_lab::probe::ping;
use meshd_lab::{HostKind, Topology};
use std::net::UdpSocket;

fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

fn send_all(ns: &str, datagrams: Vec<Vec<u8>>) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for d in &datagrams {
            s.send_to(d, "198.18.0.1:8472").unwrap();
        }
    })
    .unwrap();
}

#[test]
fn malformed_datagrams_are_dropped_counted_and_harmless() {
    require_root();
    let t = Topology::up(spec("bad", vec![HostKind::Meshd; 2], &[])).unwrap();
    let (h1, h2) = (&t.hosts[0], &t.hosts[1]);
    let stranger = add_stranger(&t);
    let hdr = VxlanHeader::new(1, vtep_mac(&h2.name), vtep_mac(&h1.name));
    let frame = |hdr: &VxlanHeader, packet: &[u8]| {
        let mut out = vec![0u8; 22 + packet.len()];
        hdr.encapsulate(packet, &mut out).unwrap();
        out
    };
    let good = frame(&hdr, &ipv4([10, 244, 2, 2], [10, 244, 1, 2]));
    let wrong_vni = frame(
        &VxlanHeader::new(7, vtep_mac(&h2.name), vtep_mac(&h1.name)),
        &ipv4([10, 244, 2, 2], [10, 244, 1, 2]),
    );
    let spoofed = frame(&hdr, &ipv4([10, 244, 9, 9], [10, 244, 1, 2]));
    let mut arp = good.clone();
    arp[20..22].copy_from_slice(&[0x08, 0x06]);
    let mut garbage: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage[0] = 0; // no I flag

    send_all(&stranger, vec![good.clone(); 5]);
    send_all(
        &h2.ns,
        vec![good[..10].to_vec(), good[..30].to_vec(), garbage, vec![]],
    );
    send_all(&h2.ns, vec![wrong_vni; 3]);
    send_all(&h2.ns, vec![arp; 2]);
    send_all(&h2.ns, vec![spoofed; 4]);

    let want = [
        (None, "unknown-source", 5),
        (Some(h2.name.as_str()), "malformed", 4),
        (Some(h2.name.as_str()), "wrong-vni", 3),
        (Some(h2.name.as_str()), "not-ip", 2),
        (Some(h2.name.as_str()), "spoofed-source", 4),
    ];
    let expected: Vec<u64> = want.iter().map(|w| w.2).collect();
    wait_until(&format!("drop counters {expected:?}"), || {
        let s = status(&t, 0);
        let got: Vec<u64> = want.iter().map(|(p, r, _)| drops(&s, *p, r)).collect();
        (got == expected).then_some(()).ok_or(Box::new((got, s)))
    });
    // And the mesh still works.
    let (a, b) = (&h1.pods[0], &h2.pods[1]);
    ping(&a.ns, b.addr, 5).unwrap();
    ping(&b.ns, a.addr, 5).unwrap();
}
