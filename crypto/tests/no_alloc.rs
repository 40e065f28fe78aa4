//! Proof that the per-packet paths allocate nothing: a counting global allocator, measured on
//! this thread only, around `Session::encapsulate`/`decapsulate` of data on an established
//! session (also while a preshared key switch is pending) and `GossipSealer::seal`/`open`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, SystemTime};

use meshd_crypto::{
    Action, ClusterSecret, GossipSealer, Keyring, PrivateKey, RateLimiter, SealerConfig, Session,
};

struct Counting;

thread_local! {
    // const-initialised and without a destructor, so touching it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[10, 244, 1, 5]);
    p[16..20].copy_from_slice(&[10, 244, 2, 5]);
    p
}

/// Runs a handshake between two sessions, delivering everything, until quiet.
fn established_pair() -> (Session, Session) {
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let la = RateLimiter::new(&ka.public_key(), 100);
    let lb = RateLimiter::new(&kb.public_key(), 100);
    let mut a = Session::new(&ka, 1, kb.public_key(), [5; 32], &la).unwrap();
    let mut b = Session::new(&kb, 2, ka.public_key(), [5; 32], &lb).unwrap();
    let mut out = vec![0u8; 2048];
    let mut flight = match a.encapsulate(&[], &mut out) {
        Action::WriteToNetwork(n) => vec![out[..n].to_vec()],
        other => panic!("{other:?}"),
    };
    let mut to_b = true;
    while !flight.is_empty() {
        let mut next = Vec::new();
        for d in flight {
            let s = if to_b { &mut b } else { &mut a };
            if let Action::WriteToNetwork(n) = s.decapsulate(None, &d, &mut out) {
                next.push(out[..n].to_vec());
                while let Action::WriteToNetwork(n) = s.flush_queued(&mut out) {
                    next.push(out[..n].to_vec());
                }
            }
        }
        flight = next;
        to_b = !to_b;
    }
    (a, b)
}

/// Data both ways, 100 packets each, twice (the first round warms up: first data on a session
/// sets its "current" slot); returns the allocations of the second round.
fn data_round_trips(a: &mut Session, b: &mut Session) -> u64 {
    let packet = ipv4_packet(1400);
    let mut wire = vec![0u8; 2048];
    let mut inner = vec![0u8; 2048];
    let mut last = 0;
    for _ in 0..2 {
        let mut sent = 0;
        let mut delivered = 0;
        last = allocations_during(|| {
            for _ in 0..100 {
                for a_to_b in [true, false] {
                    let (tx, rx) = if a_to_b {
                        (&mut *a, &mut *b)
                    } else {
                        (&mut *b, &mut *a)
                    };
                    if let Action::WriteToNetwork(n) = tx.encapsulate(&packet, &mut wire) {
                        sent += 1;
                        if let Action::WriteToTunnelV4(m, _) =
                            rx.decapsulate(None, &wire[..n], &mut inner)
                        {
                            assert_eq!(m, packet.len());
                            delivered += 1;
                        }
                    }
                }
            }
        });
        assert_eq!((sent, delivered), (200, 200));
    }
    last
}

#[test]
fn data_path_and_sealer_allocate_nothing_per_call() {
    // Session data path, both directions.
    let (mut a, mut b) = established_pair();
    let count = data_round_trips(&mut a, &mut b);
    assert_eq!(
        count, 0,
        "session data path allocated {count} times in 400 calls"
    );
    // A preshared key switch under way on one side: its traffic rides the retiring tunnel.
    assert!(a.set_psk([6; 32]));
    let count = data_round_trips(&mut a, &mut b);
    assert!(a.stats().psk_pending, "{:?}", a.stats());
    assert_eq!(
        count, 0,
        "data path during a key switch allocated {count} times in 400 calls"
    );

    // Gossip sealing, with the receiver already knowing the sender.
    let ring = Keyring::single(ClusterSecret::from_bytes([3; 32]));
    let mut tx = GossipSealer::with_sender_id(&ring, SealerConfig::default(), 1);
    let mut rx = GossipSealer::with_sender_id(&ring, SealerConfig::default(), 2);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let msg = [0x5a_u8; 1000];
    let mut sealed = vec![0u8; 2048];
    let mut opened = vec![0u8; 2048];
    let n = tx.seal(&msg, &mut sealed, now).unwrap();
    rx.open(&sealed[..n], &mut opened, now).unwrap();
    let count = allocations_during(|| {
        for _ in 0..200 {
            let n = tx.seal(&msg, &mut sealed, now).unwrap();
            let m = rx.open(&sealed[..n], &mut opened, now).unwrap();
            assert_eq!(m, msg.len());
        }
    });
    assert_eq!(count, 0, "sealer allocated {count} times in 400 calls");
}

/// The counter is real: a call that must allocate is seen.
#[test]
fn the_counter_counts() {
    let count = allocations_during(|| {
        std::hint::black_box(vec![1u8; 64]);
    });
    assert!(count >= 1);
}
