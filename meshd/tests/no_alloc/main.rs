//! The per-packet paths allocate nothing once warm, proven by counting allocations with a
//! global allocator around steady-state loops, not by timing them:
//! - cleartext VXLAN: route + frame into GSO runs, and the receive decoder;
//! - WireGuard: route + encrypt into runs (TX batch), and demultiplex + decrypt + the
//!   cryptokey-routing check (RX), refusals included (what they remember for the control
//!   thread), and the per-peer receive tally;
//! - packets over their peer's path MTU: dropped and answered, or sent (`too_big.rs`);
//! - the I/O both share (`io.rs`, as root): batched TUN reads and GRO TUN writes on a real TUN
//!   device, batched UDP receives and GSO run sends on real sockets, in a namespace of its own.
//!
//! Counting is per thread: the tests of this binary run in parallel, and each counts only its own
//! allocations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // const-initialised: reading it never allocates, so the allocator may use it.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(|n| n.get())
}

fn packet(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let total = 20 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

mod io;
mod too_big;
mod vxlan;
mod wireguard;

/// A cleartext route table of 48 peers, n2..n49, each owning 10.244.<i>.0/24.
fn clear_routes() -> meshd::routes::Routes {
    let routes = meshd::routes::Routes::new(meshd::routes::Local {
        name: "a".into(),
        vni: 1,
        port: 8472,
    });
    let peers: Vec<meshd::peers::Peer> = (2..50u8)
        .map(|i| {
            meshd::peers::Peer::clear(
                format!("n{i}"),
                format!("198.18.0.{i}:8472").parse().unwrap(),
                format!("10.244.{i}.0/24").parse().unwrap(),
            )
        })
        .collect();
    routes.install_clear(&peers);
    routes
}
