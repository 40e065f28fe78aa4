//! Full-state sync: a joiner asks its seed for the whole member table, which arrives as a
//! train of datagrams (each a [`StateChunk`]); record pulls fill in for records still missing.
//!
//! This rides the same sealed UDP channel as SWIM. A lost chunk costs nothing but time: the
//! members it held arrive by rumour and their records by pull, and the subnet pick waits for
//! [`crate::Config::claim_delay`] instead of for the last chunk.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{Member, State};
use rand::RngExt;

use crate::gossip::Gossip;
use crate::wire::{self, Kind, Records, StateChunk, StateEntry, StateRequest};

/// A seed serves one requester at most this often: a state dump is the one reply far larger
/// than its request.
pub(crate) const SERVE_EVERY: Duration = Duration::from_secs(1);
/// Bytes per chunk reserved for the chunk's own fields and the entry count.
const CHUNK_HEADER: usize = 24;

/// After the first dump, a joiner asks once more this much later: when many nodes join at
/// once, the first dump predates most of them, while the second holds everyone the seed heard
/// from in between.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// The joiner's side of one state request.
#[derive(Debug, Clone)]
pub(crate) struct SyncState {
    nonce: u64,
    from: SocketAddr,
    round: u8,
    total: Option<u16>,
    got: BTreeSet<u16>,
    completed_at: Option<Instant>,
}

impl SyncState {
    /// Whether every chunk of the answer has arrived.
    pub(crate) fn complete(&self) -> bool {
        self.total.is_some_and(|t| self.got.len() >= usize::from(t))
    }

    /// Whether the final (second) round has completed.
    pub(crate) fn done(&self) -> bool {
        self.round >= 2 && self.complete()
    }
}

impl Gossip {
    /// Whether a full-state sync has completed.
    pub fn is_synced(&self) -> bool {
        self.sync.as_ref().is_some_and(SyncState::done)
    }

    pub(crate) fn request_state(&mut self, seed: SocketAddr) {
        self.request_round(seed, 1);
    }

    /// Asks for the second dump once the first is in and [`RESYNC_AFTER`] has passed.
    pub(crate) fn resync_tick(&mut self, now: Instant) {
        let Some(sync) = &self.sync else { return };
        if sync.round == 1
            && sync
                .completed_at
                .is_some_and(|t| now.duration_since(t) >= RESYNC_AFTER)
        {
            let from = sync.from;
            self.request_round(from, 2);
        }
    }

    fn request_round(&mut self, seed: SocketAddr, round: u8) {
        let nonce = self.rng.random::<u64>();
        self.sync = Some(SyncState {
            nonce,
            from: seed,
            round,
            total: None,
            got: BTreeSet::new(),
            completed_at: None,
        });
        let payload = wire::encode_payload(&StateRequest { nonce });
        self.send(seed, Kind::StateRequest, &payload);
    }

    pub(crate) fn serve_state(&mut self, from: SocketAddr, payload: &[u8], now: Instant) {
        let Ok((req, extra)) = wire::decode_payload::<StateRequest>(payload) else {
            self.counters.decode_failures += 1;
            return;
        };
        self.counters.unknown_fields += u64::from(extra);
        if self
            .served
            .get(&from)
            .is_some_and(|&t| now.duration_since(t) < SERVE_EVERY)
        {
            return;
        }
        let chunks = self.pack_entries(self.state_entries());
        // Within the budget, or not at all: half a dump is worth no more than none (the joiner
        // asks again, and learns the rest by rumour and pulls meanwhile).
        if self.served.len() >= crate::bounds::MAX_REQUESTERS
            || !self.serve_budget.take(chunks.len(), now)
        {
            self.counters.state_requests_refused += 1;
            return;
        }
        self.served.insert(from, now);
        let total = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        for (index, entries) in chunks.iter().take(usize::from(total)).enumerate() {
            let chunk = StateChunk {
                nonce: req.nonce,
                index: u16::try_from(index).unwrap_or(u16::MAX),
                total,
                entries: entries.iter().map(Vec::as_slice).collect(),
            };
            let bytes = wire::encode_payload(&chunk);
            self.send(from, Kind::StateChunk, &bytes);
        }
    }

    /// One blob per member foca knows (down ones included, so a joiner ignores their stale
    /// rumours), plus ourselves.
    /// Records go as their owners signed them.
    fn state_entries(&self) -> Vec<Vec<u8>> {
        let blob = |addr: &SocketAddr| {
            let name = self.by_addr.get(addr)?;
            Some(self.members.get(name)?.blob.as_slice())
        };
        let me = StateEntry {
            id: *self.swim.identity(),
            incarnation: 0,
            state: 0,
            record: Some(&self.me_blob),
        };
        let mut out = vec![wire::encode_payload(&me)];
        for m in self.swim.iter_membership_state() {
            let record = blob(&m.id().addr);
            let state = match m.state() {
                State::Alive => 0,
                State::Suspect => 1,
                State::Down => 2,
            };
            let entry = StateEntry {
                id: *m.id(),
                incarnation: m.incarnation(),
                state,
                record,
            };
            out.push(wire::encode_payload(&entry));
        }
        out
    }

    /// Greedily packs entry blobs into chunks that fit one datagram.
    fn pack_entries(&self, entries: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
        let room = self.max_packet.saturating_sub(CHUNK_HEADER);
        let mut chunks: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut used = 0;
        for e in entries {
            // Length prefix of a blob this size is at most 3 bytes.
            let cost = e.len() + 3;
            if cost > room {
                continue;
            }
            if used + cost > room {
                chunks.push(Vec::new());
                used = 0;
            }
            used += cost;
            if let Some(last) = chunks.last_mut() {
                last.push(e);
            }
        }
        chunks
    }

    pub(crate) fn apply_chunk(&mut self, from: SocketAddr, payload: &[u8], now: Instant) {
        let Ok((chunk, extra)) = wire::decode_payload::<StateChunk<'_>>(payload) else {
            self.counters.decode_failures += 1;
            return;
        };
        self.counters.unknown_fields += u64::from(extra);
        let mut updates = Vec::with_capacity(chunk.entries.len());
        let mut down = Vec::new();
        for blob in &chunk.entries {
            let Ok((entry, extra)) = wire::decode_payload::<StateEntry<'_>>(blob) else {
                self.counters.decode_failures += 1;
                continue;
            };
            self.counters.unknown_fields += u64::from(extra);
            let state = match entry.state {
                0 => State::Alive,
                1 => State::Suspect,
                2 => State::Down,
                _ => continue,
            };
            if let Some(record) = entry.record {
                self.inbox().offer_blob(record, Some(from));
            }
            if state == State::Down {
                down.push(entry.id.addr);
            }
            updates.push(Member::new(entry.id, entry.incarnation, state));
        }
        // Entries are authenticated cluster knowledge even from an older request, but only
        // the current request's chunks count towards completion.
        if let Some(sync) = self.sync.as_mut().filter(|s| s.nonce == chunk.nonce) {
            sync.total = Some(chunk.total);
            sync.got.insert(chunk.index);
            if sync.complete() && sync.completed_at.is_none() {
                sync.completed_at = Some(now);
            }
        }
        // Not re-broadcast: the rest of the cluster knows all this already.
        let result = self
            .swim
            .apply_many(updates.into_iter(), false, &mut self.rt);
        self.swim_result(result);
        self.after_swim(now);
        for addr in down {
            self.learned_down(addr, now);
        }
        if self.is_synced() {
            self.claim_tick(now);
        }
    }

    /// A record that came with a down member: foca raises no notification for a member that
    /// was never up here, so set the state ourselves (its grace period runs from now).
    fn learned_down(&mut self, addr: SocketAddr, now: Instant) {
        if self.active.contains_key(&addr) {
            return;
        }
        if let Some(entry) = self
            .by_addr
            .get(&addr)
            .and_then(|n| self.members.get_mut(n))
        {
            if entry.state.is_none() {
                let left = entry.record.leaving;
                entry.state = Some(if left {
                    crate::MemberState::Left
                } else {
                    crate::MemberState::Down
                });
                entry.since = now;
            }
        }
    }

    pub(crate) fn serve_record(&mut self, from: SocketAddr) {
        let bytes = wire::encode_payload(&Records {
            records: vec![self.me_blob.as_slice()],
        });
        self.send(from, Kind::Records, &bytes);
    }

    pub(crate) fn apply_records(&mut self, from: SocketAddr, payload: &[u8]) {
        let Ok((records, extra)) = wire::decode_payload::<Records<'_>>(payload) else {
            self.counters.decode_failures += 1;
            return;
        };
        self.counters.unknown_fields += u64::from(extra);
        let mut inbox = self.inbox();
        for blob in records.records {
            inbox.offer_blob(blob, Some(from));
        }
    }
}
