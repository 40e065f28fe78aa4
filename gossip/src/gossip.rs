//! The gossip state machine the daemon drives: datagrams and deadlines in, datagrams and
//! events out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use foca::{AccumulatingRuntime, Foca, PostcardCodec};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::config::{Config, ConfigError};
use crate::identity::{Inbox, NodeId, RecordHandler, SharedInbox};
use crate::io::{Counters, Transmit};
use crate::record::{Lease, LocalNode, NodeRecord, Subnet, SubnetClaim, MAX_RESERVED};
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
        let inbox = SharedInbox::default();
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
        };
        // Refuse here what every peer would refuse (and what would make our own broadcasts fail).
        crate::record::encode_record(&me)
            .and_then(|bytes| crate::record::decode_record(&bytes))
            .map_err(ConfigError::LocalNode)?;
        let mut g = Self {
            pool,
            swim,
            rt: AccumulatingRuntime::new(),
            inbox,
            me,
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
                let result = self.swim.handle_data(env.payload, &mut self.rt);
                self.swim_result(result);
            }
            Some(Kind::StateRequest) => self.serve_state(from, env.payload, now),
            Some(Kind::StateChunk) => self.apply_chunk(env.payload, now),
            Some(Kind::RecordPull) => self.serve_record(from),
            Some(Kind::Records) => self.apply_records(env.payload),
            None => self.counters.unknown_kinds += 1,
        }
        self.after_swim(now);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
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
        Counters {
            decode_failures: self.counters.decode_failures + inbox.decode_failures,
            unknown_fields: self.counters.unknown_fields + inbox.unknown_fields,
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
        let received = self.inbox().drain();
        for record in received {
            self.apply_record(record, now);
        }
        while let Some(n) = self.rt.to_notify() {
            self.apply_notification(n, now);
        }
    }

    pub(crate) fn send(&mut self, dst: SocketAddr, kind: Kind, payload: &[u8]) {
        let mut out = Vec::with_capacity(payload.len() + ENVELOPE_OVERHEAD);
        wire::encode_envelope(kind, payload, &mut out);
        self.transmits.push_back(Transmit { dst, payload: out });
    }

    /// Re-disseminates our record under a new generation.
    pub(crate) fn publish_record(&mut self) {
        self.me.generation += 1;
        match crate::record::encode_record(&self.me) {
            Ok(blob) => {
                let result = self.swim.add_broadcast(&blob);
                self.swim_result(result.map(|_| ()));
            }
            Err(_) => self.counters.decode_failures += 1,
        }
    }

    pub(crate) fn own_claim(&self) -> Option<SubnetClaim> {
        self.me.subnet
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::record::SubnetRequest;
    use crate::sim::Sim;

    fn lone(now: Instant) -> Gossip {
        Gossip::new(
            Config::default(),
            Sim::local_node(0, SubnetRequest::Auto),
            1,
            now,
        )
        .unwrap()
    }

    #[test]
    fn garbage_and_unknown_kinds_are_counted_not_parsed() {
        let now = Instant::now();
        let mut g = lone(now);
        let from = "10.9.9.9:7946".parse().unwrap();
        g.handle_datagram(from, &[0xff, 0xff, 0xff], now);
        let mut future = Vec::new();
        wire::encode_envelope(Kind::Swim, b"x", &mut future);
        future[1] = 0x63; // kind 99
        g.handle_datagram(from, &future, now);
        let c = g.counters();
        assert_eq!(
            (c.datagrams_in, c.decode_failures, c.unknown_kinds),
            (2, 1, 1)
        );
    }

    #[test]
    fn a_lone_first_node_claims_after_the_delay() {
        let t0 = Instant::now();
        let mut g = lone(t0);
        assert!(g.lease().is_none());
        let mut now = t0;
        while now < t0 + g.config.claim_delay + g.config.tick {
            now = g.poll_timeout().unwrap();
            g.handle_timeout(now);
        }
        let lease = g.lease().unwrap();
        assert!(g.pool().holds(&lease.subnet));
        let events: Vec<Event> = std::iter::from_fn(|| g.poll_event()).collect();
        assert!(events.contains(&Event::SubnetAssigned(lease)));
    }

    #[test]
    fn explicit_and_persisted_subnets_are_held_at_once() {
        let now = Instant::now();
        let s: Subnet = "10.244.77.0/24".parse().unwrap();
        let mut local = Sim::local_node(0, SubnetRequest::Explicit(s));
        let g = Gossip::new(Config::default(), local.clone(), 1, now).unwrap();
        assert_eq!(g.local_record().subnet.unwrap().subnet, s);
        assert!(g.local_record().subnet.unwrap().explicit);
        local.subnet = SubnetRequest::Persisted(Lease {
            subnet: s,
            stamp: 12,
        });
        let g = Gossip::new(Config::default(), local, 1, now).unwrap();
        assert_eq!(
            g.lease(),
            Some(Lease {
                subnet: s,
                stamp: 12
            })
        );
    }

    #[test]
    fn an_oversized_local_record_is_refused() {
        let mut local = Sim::local_node(0, SubnetRequest::Auto);
        local.endpoints = vec![local.gossip_addr; crate::record::MAX_ENDPOINTS + 1];
        let err = Gossip::new(Config::default(), local, 1, Instant::now()).err();
        assert!(matches!(err, Some(ConfigError::LocalNode(_))));
        // The cause is in the message, and so not also a source (a chain would repeat it).
        let err = err.unwrap();
        assert!(err.to_string().contains("refused: record"), "{err}");
        assert!(std::error::Error::source(&err).is_none());
    }
}
