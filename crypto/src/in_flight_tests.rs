//! Eight senders share one session and the receiver takes what they send in the order they
//! send it: whatever the schedule, [`InFlight`] keeps every counter inside boringtun's window,
//! where the same schedules without it lose datagrams as replays.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::{Action, PrivateKey, RateLimiter, Session, SessionError};

const SENDERS: usize = 8;
/// Packets a sender encrypts before it sends them all: the daemon's TX batch.
const BATCH: usize = 256;

struct Sim {
    a: Session,
    b: Session,
    flight: InFlight,
    /// Whether senders ask [`InFlight::admit`] (false: the daemon before it did).
    gate: bool,
    held: Vec<Vec<Vec<u8>>>,
    delivered: usize,
    replays: usize,
}

impl Sim {
    fn new(gate: bool) -> Sim {
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let la = RateLimiter::new(&ka.public_key(), 100);
        let lb = RateLimiter::new(&kb.public_key(), 100);
        let mut a = Session::new(&ka, 1, kb.public_key(), [3; 32], &la).unwrap();
        let mut b = Session::new(&kb, 2, ka.public_key(), [3; 32], &lb).unwrap();
        let mut out = vec![0u8; 256];
        let Action::WriteToNetwork(n) = a.initiate_handshake(&mut out) else {
            panic!("no initiation")
        };
        let init = out[..n].to_vec();
        let Action::WriteToNetwork(n) = b.decapsulate(None, &init, &mut out) else {
            panic!("no response")
        };
        let response = out[..n].to_vec();
        let Action::WriteToNetwork(n) = a.decapsulate(None, &response, &mut out) else {
            panic!("no keepalive")
        };
        let keepalive = out[..n].to_vec();
        assert_eq!(b.decapsulate(None, &keepalive, &mut out), Action::Done);
        Sim {
            a,
            b,
            flight: InFlight::default(),
            gate,
            held: vec![Vec::new(); SENDERS],
            delivered: 0,
            replays: 0,
        }
    }

    /// Sender `s` encrypts one packet and holds it, if admitted.
    fn encrypt(&mut self, s: usize) -> Result<(), Blocked> {
        let next = self.a.data_sent();
        if self.gate {
            self.flight.admit(s, next)?;
        }
        let mut out = vec![0u8; 256];
        let Action::WriteToNetwork(n) = self.a.encapsulate(&packet(), &mut out) else {
            panic!("no data message")
        };
        self.flight.held(s, next);
        self.held[s].push(out[..n].to_vec());
        Ok(())
    }

    /// Sender `s` sends what it holds; the receiver takes it at once, in order.
    fn send(&mut self, s: usize) {
        let mut out = vec![0u8; 256];
        for d in std::mem::take(&mut self.held[s]) {
            match self.b.decapsulate(None, &d, &mut out) {
                Action::WriteToTunnelV4(..) => self.delivered += 1,
                Action::Error(SessionError::Replayed) => self.replays += 1,
                other => panic!("{other:?}"),
            }
        }
        self.flight.release(s);
    }

    /// Sender `s` encrypts up to a batch as the daemon does: when refused, it sends what it
    /// holds and goes on; refused while holding nothing, it must wait (false).
    fn batch(&mut self, s: usize, mut left: usize) -> usize {
        while left > 0 {
            match self.encrypt(s) {
                Ok(()) => left -= 1,
                Err(Blocked::Holding) => self.send(s),
                Err(Blocked::Others) if !self.held[s].is_empty() => self.send(s),
                Err(Blocked::Others) => break,
            }
        }
        left
    }

    fn sent(&self) -> usize {
        usize::try_from(self.a.data_sent()).unwrap() - 1
    }
}

/// A small IPv4 packet (the receiver only checks that it is IP).
fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[3] = 28;
    p[9] = 17;
    p
}

/// Sender 0 encrypts a batch and is preempted before it sends; the seven others run batch
/// after batch meanwhile, then sender 0 sends, then whoever waited.
fn preempted_sender(sim: &mut Sim) {
    assert_eq!(sim.batch(0, BATCH), 0);
    let mut waiting = Vec::new();
    for s in 1..SENDERS {
        let left = sim.batch(s, BATCH);
        if left > 0 {
            waiting.push((s, left));
        } else {
            sim.send(s);
        }
    }
    sim.send(0);
    for (s, left) in waiting {
        assert_eq!(sim.batch(s, left), 0, "sender {s} still refused");
        sim.send(s);
    }
}

#[test]
fn a_preempted_batch_stays_inside_the_window() {
    let mut sim = Sim::new(true);
    preempted_sender(&mut sim);
    assert_eq!(sim.replays, 0);
    assert_eq!(sim.delivered, SENDERS * BATCH);
    assert_eq!(sim.sent(), SENDERS * BATCH, "every packet encrypted once");
    // The same schedule without the bound: sender 0's batch arrives 1,792 counters late.
    let mut ungated = Sim::new(false);
    preempted_sender(&mut ungated);
    assert_eq!(ungated.replays, BATCH, "sender 0's batch, all of it");
}

#[test]
fn any_schedule_stays_inside_the_window() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for gate in [true, false] {
        let mut sim = Sim::new(gate);
        for _ in 0..40_000 {
            let s = rand(SENDERS as u64) as usize;
            // Senders send rarely: long holds are what the bound is for.
            if rand(100) < 2 {
                sim.send(s);
            } else if sim.batch(s, 1 + rand(8) as usize) > 0 {
                // Refused while holding nothing: it waits (another sender runs).
            }
        }
        for s in 0..SENDERS {
            sim.send(s);
        }
        assert_eq!(sim.delivered + sim.replays, sim.sent());
        if gate {
            assert_eq!(sim.replays, 0);
        } else {
            assert!(sim.replays > 0, "the schedule never overran the window");
        }
    }
}

#[test]
fn the_fast_path_and_the_refusals() {
    let f = InFlight::default();
    assert_eq!(f.admit(0, 0), Ok(()));
    f.held(0, 0);
    f.held(0, 5);
    assert!(f.holds(0) && !f.holds(1));
    assert_eq!(f.admit(1, IN_FLIGHT_LIMIT - 1), Ok(()));
    assert_eq!(f.admit(1, IN_FLIGHT_LIMIT), Err(Blocked::Others));
    assert_eq!(f.admit(0, IN_FLIGHT_LIMIT), Err(Blocked::Holding));
    f.release(0);
    assert_eq!(f.admit(1, IN_FLIGHT_LIMIT), Ok(()));
    // Far ahead with nothing held is fine: nothing is in flight.
    assert_eq!(f.admit(3, 1 << 40), Ok(()));
    // No slot, nothing tracked.
    f.held(MAX_SENDERS, 1);
    assert!(!f.holds(MAX_SENDERS));
}
