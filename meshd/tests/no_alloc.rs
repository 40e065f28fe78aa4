//! The per-packet encode and decode path allocates nothing: proven by counting allocations with
//! a global allocator around a steady-state loop, not by timing it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meshd::datapath::encode::{decode, Encoder};
use meshd::routes::{Local, Peer, Routes};
use meshd::stats::DropTally;
use meshd::wire::{vtep_mac, VxlanHeader};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn packet(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let total = 20 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[test]
fn encode_and_decode_allocate_nothing_per_packet() {
    let routes = Routes::new(Local {
        name: "a".into(),
        vni: 1,
        port: 8472,
    });
    let peers: Vec<Peer> = (2..50u8)
        .map(|i| Peer {
            name: format!("n{i}"),
            address: format!("198.18.0.{i}").parse().unwrap(),
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
        })
        .collect();
    routes.update(&peers);
    let mut enc = Encoder::new(256 * 1500, 256, 64);
    let mut drops = DropTally::default();
    let outgoing: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            packet(
                [10, 244, 1, 2],
                [10, 244, 2 + (i % 48) as u8, 7],
                1000 + i % 400,
            )
        })
        .collect();
    let hdr = VxlanHeader::new(1, vtep_mac("n7"), vtep_mac("a"));
    let incoming = {
        let p = packet([10, 244, 7, 9], [10, 244, 1, 2], 1200);
        let mut f = vec![0u8; 22 + p.len()];
        hdr.encapsulate(&p, &mut f).unwrap();
        f
    };
    let from = "198.18.0.7".parse().unwrap();

    COUNTING.store(true, Ordering::SeqCst);
    let mut delivered = 0usize;
    for _ in 0..100 {
        let table = routes.load();
        enc.clear();
        for p in &outgoing {
            enc.push(&table, p, &mut drops);
        }
        for _ in 0..256 {
            let (_, inner) = decode(&table, from, 1, &incoming).unwrap();
            delivered += inner.len();
        }
    }
    COUNTING.store(false, Ordering::SeqCst);

    assert_eq!(enc.runs().iter().map(|r| r.frames).sum::<usize>(), 256);
    assert_eq!(delivered, 100 * 256 * 1220);
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        0,
        "the per-packet path allocated"
    );
}
