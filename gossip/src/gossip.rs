//! The gossip state machine the daemon drives: datagrams and deadlines in, datagrams and
//! events out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::config::{Config, ConfigError};
use crate::identity::{NodeId, RecordHandler, SharedInbox};
use crate::inbox::Inbox;
use crate::io::{Counters, Transmit};
use crate::record::{
    encode_record, Lease, LocalNode, NodeRecord, Subnet, SubnetClaim, MAX_RESERVED,
};
use crate::signature::SigningKey;
use crate::subnet::Pool;
use crate::timers::{TimerKind, Timers};
use crate::view::Entry;
use crate::wire::{self, Kind, ENVELOPE_OVERHEAD};
use crate::Event;

pub(crate) type Swim = Foca<NodeId, PostcardCodec, SmallRng, RecordHandler>;

/// The gossip state machine: SWIM membership, node records, subnet allocation.
pub struct Gossip {
    pub(crate) config: Config,
    pub(crate) pool: Pool,
    pub(crate) swim: Swim,
    pub(crate) rt: AccumulatingRuntime<NodeId>,
    pub(crate) inbox: SharedInbox,
    pub(crate) me: NodeRecord,
    /// Our record as we send it (signed once per change, not per pull).
    pub(crate) me_blob: Vec<u8>,
    pub(crate) signing_key: Option<SigningKey>,
    /// When each forget in our record was issued (`trust.rs`).
    pub(crate) forgot_at: Vec<([u8; 32], Instant)>,
    /// Forgets of our own key already outbid.
    pub(crate) defended: HashSet<crate::record::Forget>,
    pub(crate) claim: crate::alloc::ClaimState,
    pub(crate) lamport: u64,
    pub(crate) members: BTreeMap<String, Entry>,
    pub(crate) by_addr: BTreeMap<SocketAddr, String>,
    pub(crate) active: BTreeMap<SocketAddr, NodeId>,
    pub(crate) timers: Timers,
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) events: VecDeque<Event>,
    pub(crate) counters: Counters,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) sync: Option<crate::sync::SyncState>,
    pub(crate) served: HashMap<SocketAddr, Instant>,
    /// State-dump chunks this node may still send now (`bounds.rs`).
    pub(crate) serve_budget: crate::bounds::Budget,
    pub(crate) pulled: HashMap<SocketAddr, Instant>,
    /// Conflicts already reported: (other node, its record generation, over a reservation).
    pub(crate) reported: HashSet<(String, u64, bool)>,
    pub(crate) rng: SmallRng,
    pub(crate) max_packet: usize,
    pub(crate) leaving: bool,
    pub(crate) last_rejoin: Option<Instant>,
    pub(crate) refresh_after: Option<SocketAddr>,
    pub(crate) missing: BTreeSet<SocketAddr>,
    pub(crate) any_suspect: bool,
    pub(crate) ticks: u64,
    /// Path summaries: this node's and the members' (`summary/`).
    pub(crate) summaries: crate::summary::Summaries,
    /// Members whose gossip comes through a NAT, and from where (`via.rs`).
    pub(crate) via: crate::via::Via,
}

impl Gossip {
    /// Creates the state machine for `local`. `rng_seed` seeds every random choice (the daemon
    /// passes OS randomness; the simulator a fixed seed).
    pub fn new(
        config: Config,
        local: LocalNode,
        rng_seed: u64,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let pool = config.pool()?;
        // Only what could collide with a node subnet, and what peers count, is published.
        let mut reserved: Vec<Subnet> = local
            .reserved
            .iter()
            .filter(|r| pool.check_reserved(r).is_ok())
            .copied()
            .collect();
        reserved.sort();
        reserved.dedup();
        if reserved.len() > MAX_RESERVED {
            return Err(ConfigError::TooManyReserved(reserved.len()));
        }
        let max_packet = config.max_datagram - ENVELOPE_OVERHEAD;
        let id = NodeId {
            addr: local.gossip_addr,
            epoch: local.boot_epoch,
        };
        let inbox = SharedInbox::new(Inbox::new(local.boot_epoch, now));
        let swim = Foca::with_custom_broadcast(
            id,
            config.swim(max_packet),
            SmallRng::seed_from_u64(rng_seed),
            PostcardCodec,
            RecordHandler(inbox.clone()),
        );
        let me = NodeRecord {
            name: local.name,
            gossip_addr: local.gossip_addr,
            public_key: local.public_key,
            endpoints: local.endpoints,
            subnet: None,
            vtep_mac: local.vtep_mac,
            capabilities: local.capabilities,
            version: local.version,
            generation: u64::from(local.boot_epoch) << 32,
            leaving: false,
            secret_ids: local.secret_ids,
            reserved,
            signer: local.signing_key.as_ref().map(SigningKey::public),
            forgets: Vec::new(),
            learned: Vec::new(),
            punch: Vec::new(),
        };
        // Refuse here what every peer would refuse (and what would make our own broadcasts fail).
        let me_blob = encode_record(&me, local.signing_key.as_ref())
            .and_then(|bytes| crate::record::decode_verified(&bytes).map(|_| bytes))
            .map_err(ConfigError::LocalNode)?;
        if let Some(key) = &me.signer {
            // Our name is ours: a record under it with another key is an impostor's.
            inbox.lock().bind(&me.name, *key);
        }
        let mut g = Self {
            pool,
            swim,
            rt: AccumulatingRuntime::new(),
            inbox,
            me,
            me_blob,
            signing_key: local.signing_key,
            forgot_at: Vec::new(),
            defended: HashSet::new(),
            claim: crate::alloc::ClaimState::Pending { since: now },
            lamport: 0,
            members: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            active: BTreeMap::new(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            seeds: Vec::new(),
            sync: None,
            served: HashMap::new(),
            serve_budget: crate::bounds::Budget::new(now),
            pulled: HashMap::new(),
            reported: HashSet::new(),
            rng: SmallRng::seed_from_u64(rng_seed ^ 0x9e37_79b9_7f4a_7c15),
            max_packet,
            leaving: false,
            last_rejoin: None,
            refresh_after: Some(id.addr),
            missing: BTreeSet::new(),
            any_suspect: false,
            ticks: 0,
            summaries: crate::summary::Summaries::new(local.boot_epoch, now),
            via: crate::via::Via::default(),
            config,
        };
        g.start_claim(local.subnet, now);
        g.timers.at(now + g.config.tick, TimerKind::Tick);
        Ok(g)
    }

    /// Joins the cluster `seed` belongs to: a SWIM announce plus a full-state request.
    /// Call it again (with the same or another seed) at will; the node also retries on its own
    /// while it knows no live member.
    pub fn join(&mut self, seed: SocketAddr, now: Instant) {
        if !self.seeds.contains(&seed) {
            self.seeds.push(seed);
        }
        self.announce_to(seed, now);
        self.request_state(seed);
    }

    /// Announces a graceful departure: our record is marked leaving and our identity down.
    /// Keep driving the state machine for a moment so the datagrams get out.
    pub fn leave(&mut self, now: Instant) {
        self.leaving = true;
        self.me.leaving = true;
        self.publish_record();
        let result = self.swim.leave_cluster(&mut self.rt);
        self.swim_result(result);
        self.after_swim(now);
    }

    /// Handles one plaintext datagram (already opened by the daemon) from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.inbox().now = now;
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += bytes.len() as u64;
        let env = match wire::decode_envelope(bytes) {
            Ok(env) => env,
            Err(_) => {
                self.counters.decode_failures += 1;
                return;
            }
        };
        match Kind::from_code(env.kind) {
            Some(Kind::Swim) => {
                if let Some(addr) = self.via.heard(env.payload, from, now) {
                    // Heard through its NAT: alive (`via.rs`).
                    if let Some(name) = self.by_addr.get(&addr).cloned() {
                        self.handle_evidence(&name, now);
                    }
                }
                let result = self.swim.handle_data(env.payload, &mut self.rt);
                self.swim_result(result);
            }
            Some(Kind::StateRequest) => self.serve_state(from, env.payload, now),
            Some(Kind::StateChunk) => self.apply_chunk(from, env.payload, now),
            Some(Kind::RecordPull) => self.serve_record(from),
            Some(Kind::Records) => self.apply_records(from, env.payload),
            Some(Kind::Summary) => self.apply_summary(env.payload, now),
            Some(Kind::SummaryPull) => self.serve_summary_pull(from, env.payload, now),
            None => self.counters.unknown_kinds += 1,
        }
        self.after_swim(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.inbox().now = now;
        while let Some(kind) = self.timers.pop_due(now) {
            match kind {
                TimerKind::Swim(timer) => {
                    if let Some(at) = self.postpone_down(&timer, now) {
                        self.timers.at(at, TimerKind::Swim(timer));
                        continue;
                    }
                    let result = self.swim.handle_timer(timer, &mut self.rt);
                    self.swim_result(result);
                }
                TimerKind::Tick => {
                    self.tick(now);
                    self.summary_tick(now);
                    self.timers.at(now + self.config.tick, TimerKind::Tick);
                }
            }
            self.after_swim(now);
        }
    }

    /// When [`Gossip::handle_timeout`] next wants to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next datagram to seal and send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += t.payload.len() as u64;
        Some(t)
    }

    /// The next membership or subnet event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Publishes a new set of cluster secret ids (the daemon reloaded its keyring).
    pub fn set_secret_ids(&mut self, ids: Vec<[u8; 4]>) {
        if self.me.secret_ids != ids {
            self.me.secret_ids = ids;
            self.publish_record();
        }
    }

    /// Publishes where other members see this node from outside (its public endpoints behind
    /// a NAT, [`NodeRecord::learned`]), at most [`crate::MAX_LEARNED`]; a new record only when
    /// they changed.
    pub fn set_learned(&mut self, mut learned: Vec<SocketAddr>) {
        learned.truncate(crate::record::MAX_LEARNED);
        if self.me.learned != learned {
            self.me.learned = learned;
            self.publish_record();
        }
    }

    /// Publishes the hole punches this node asks of its peers ([`NodeRecord::punch`]), at most
    /// [`crate::MAX_PUNCH`]; a new record only when they changed. False (and nothing
    /// published) when they do not fit the record.
    pub fn set_punch(&mut self, mut punch: Vec<crate::PunchRequest>) -> bool {
        punch.truncate(crate::record::MAX_PUNCH);
        if self.me.punch == punch {
            return true;
        }
        let mut next = self.me.clone();
        next.punch = punch;
        if encode_record(&next, self.signing_key.as_ref()).is_err() {
            return false;
        }
        self.me.punch = next.punch;
        self.publish_record();
        true
    }

    /// Where member `name`'s gossip comes from, when that is not the address its record
    /// names (it is behind a NAT).
    pub fn observed_gossip(&self, name: &str) -> Option<SocketAddr> {
        let m = self.members.get(name)?;
        self.via.observed(m.record.gossip_addr)
    }

    /// Pins member `name`'s gossip to `ip`, where its traffic authenticated under its own key
    /// comes from (the daemon's WireGuard endpoint in use), or unpins it: a datagram naming it
    /// from anywhere else then moves nothing (`via.rs`).
    pub fn pin_source(&mut self, name: &str, ip: Option<std::net::IpAddr>) {
        if let Some(m) = self.members.get(name) {
            let addr = m.record.gossip_addr;
            self.via.pin(addr, ip);
        }
    }

    /// Datagrams that named a pinned member from another address (see
    /// [`Gossip::pin_source`]).
    pub fn via_refused(&self) -> u64 {
        self.via.refused
    }

    /// This node's current record.
    pub fn local_record(&self) -> &NodeRecord {
        &self.me
    }

    /// This node's subnet lease, once it holds one; the daemon persists it.
    pub fn lease(&self) -> Option<Lease> {
        self.me.subnet.map(|c| Lease {
            subnet: c.subnet,
            stamp: c.stamp,
        })
    }

    /// Traffic and error counters.
    pub fn counters(&self) -> Counters {
        let inbox = self.inbox.lock();
        let [bad_name, generation, impostor, unsigned, bad_signature, full] = inbox.refused;
        Counters {
            decode_failures: self.counters.decode_failures + inbox.decode_failures,
            unknown_fields: self.counters.unknown_fields + inbox.unknown_fields,
            refused_bad_name: bad_name,
            refused_generation: generation,
            refused_impostor: impostor,
            refused_unsigned: unsigned,
            refused_bad_signature: bad_signature,
            refused_full: full,
            ..self.counters
        }
    }

    /// Rumours still queued for dissemination (SWIM updates plus records); zero once a change
    /// has been gossiped out.
    pub fn backlog(&self) -> usize {
        self.swim.updates_backlog() + self.swim.custom_broadcast_backlog()
    }

    /// The node pool this cluster cuts subnets from.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    pub(crate) fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock()
    }

    pub(crate) fn swim_result(&mut self, result: Result<(), foca::Error>) {
        if result.is_err() {
            self.counters.swim_errors += 1;
        }
    }

    pub(crate) fn announce_to(&mut self, addr: SocketAddr, now: Instant) {
        // foca accepts an announce addressed to any identity at the receiver's address.
        let result = self.swim.announce(NodeId { addr, epoch: 0 }, &mut self.rt);
        self.swim_result(result);
        self.after_swim(now);
    }

    /// Moves what foca produced into our queues and applies what it learned.
    pub(crate) fn after_swim(&mut self, now: Instant) {
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timers.at(now + after, TimerKind::Swim(timer));
        }
        while let Some((dst, data)) = self.rt.to_send() {
            self.send(dst.addr, Kind::Swim, &data);
        }
        let (received, refused) = {
            let mut inbox = self.inbox();
            (inbox.drain(), inbox.drain_refusals())
        };
        for (record, blob) in received {
            self.apply_record(record, blob, now);
        }
        self.events
            .extend(refused.into_iter().map(Event::RecordRefused));
        while let Some(n) = self.rt.to_notify() {
            self.apply_notification(n, now);
        }
    }

    pub(crate) fn send(&mut self, dst: SocketAddr, kind: Kind, payload: &[u8]) {
        // A member behind NAT: where its gossip comes from, and where it is claimed (`via.rs`).
        let mut out = Vec::with_capacity(payload.len() + ENVELOPE_OVERHEAD);
        wire::encode_envelope(kind, payload, &mut out);
        for dst in self.via.routes(dst).into_iter().flatten() {
            if self.transmits.len() >= crate::bounds::MAX_TRANSMITS {
                self.counters.transmits_dropped += 1;
                return;
            }
            let payload = out.clone();
            self.transmits.push_back(Transmit { dst, payload });
        }
    }

    /// Re-disseminates our record under a new generation. Saturating: the inbox refuses every
    /// generation that could bring it near the end, ours included.
    pub(crate) fn publish_record(&mut self) {
        self.me.generation = self.me.generation.saturating_add(1);
        match encode_record(&self.me, self.signing_key.as_ref()) {
            Ok(blob) => {
                let result = self.swim.add_broadcast(&blob);
                self.swim_result(result.map(|_| ()));
                self.me_blob = blob;
            }
            Err(_) => self.counters.decode_failures += 1,
        }
    }

    pub(crate) fn own_claim(&self) -> Option<SubnetClaim> {
        self.me.subnet
    }
}

#[cfg(test)]
#[path = "gossip_tests.rs"]
pub(crate) mod tests;
