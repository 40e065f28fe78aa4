//! A deterministic network simulator for [`Gossip`] nodes: one process, a virtual clock, a
//! seeded RNG, and a lossy network with per-datagram delay and partitions.
//!
//! The same seed gives the same run, event for event, which is what lets the tests assert on
//! outcomes and the benchmark report figures that anyone can reproduce.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub mod scenario;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::{Capabilities, Config, Event, Gossip, LocalNode, SubnetRequest};

/// The simulated network.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// One-way delay, drawn uniformly from `min_delay..=max_delay` per datagram.
    pub min_delay: Duration,
    /// See `min_delay`.
    pub max_delay: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
        }
    }
}

/// Bytes each datagram costs on the wire beyond the plaintext: AEAD nonce and tag (the
/// `crypto` crate's sealing, estimated) plus IPv4 and UDP headers.
pub const WIRE_OVERHEAD: u64 = 32 + 28;

/// One simulated node.
pub struct SimNode {
    /// Its state machine.
    pub gossip: Gossip,
    /// False once killed: it neither receives nor runs timers.
    pub up: bool,
    /// Plaintext bytes it sent.
    pub bytes_out: u64,
    /// Datagrams it sent.
    pub datagrams_out: u64,
}

struct Delivery {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulator.
pub struct Sim {
    /// Virtual now.
    pub now: Instant,
    start: Instant,
    /// Nodes, by index.
    pub nodes: Vec<SimNode>,
    net: NetConfig,
    rng: SmallRng,
    deliveries: BinaryHeap<Reverse<Delivery>>,
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: Vec<Option<Instant>>,
    by_addr: HashMap<SocketAddr, usize>,
    groups: Vec<u32>,
    /// Links cut one by one (both directions), on top of the groups.
    cut: HashSet<(usize, usize)>,
    rewrite: Vec<Option<Rewrite>>,
    seq: u64,
}

/// Rewrites one datagram a node sends into the datagrams that actually leave it (used to play
/// a node of another software version).
pub type Rewrite = fn(Vec<u8>) -> Vec<Vec<u8>>;

impl Sim {
    /// An empty network.
    pub fn new(net: NetConfig, seed: u64) -> Self {
        // Only differences between instants matter, so the base is arbitrary.
        let start = Instant::now();
        Self {
            now: start,
            start,
            nodes: Vec::new(),
            net,
            rng: SmallRng::seed_from_u64(seed),
            deliveries: BinaryHeap::new(),
            wakeups: BinaryHeap::new(),
            scheduled: Vec::new(),
            by_addr: HashMap::new(),
            groups: Vec::new(),
            cut: HashSet::new(),
            rewrite: Vec::new(),
            seq: 0,
        }
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    /// Changes loss and delay from now on.
    pub fn set_net(&mut self, net: NetConfig) {
        self.net = net;
    }

    /// A plausible local node for index `i`: name `node-i`, gossip on 10.x.y.z:7946.
    pub fn local_node(i: usize, subnet: SubnetRequest) -> LocalNode {
        let n = u32::try_from(i).unwrap_or(u32::MAX);
        let ip = Ipv4Addr::from(0x0a00_0000 | (n + 1));
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let m = n.to_be_bytes();
        LocalNode {
            name: format!("node-{i}"),
            gossip_addr: SocketAddr::new(ip.into(), 7946),
            public_key: key,
            endpoints: vec![SocketAddr::new(ip.into(), 51820)],
            vtep_mac: [0x02, 0x6d, m[0], m[1], m[2], m[3]],
            capabilities: Capabilities(Capabilities::ENCRYPTION_WIREGUARD),
            version: "0.1.0".into(),
            subnet,
            secret_ids: vec![[0x5e, 0xc7, 0, 1]],
            reserved: Vec::new(),
            boot_epoch: 1,
            signing_key: Some(Self::signing_key(i)),
        }
    }

    /// The record-signing key of the node [`Sim::local_node`] makes for index `i`: derived from
    /// `i`, so that a test can speak as a node (a forger needs a key of its own).
    pub fn signing_key(i: usize) -> crate::SigningKey {
        let mut seed = [0x5au8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        crate::SigningKey::from_seed(&seed)
    }

    /// Adds a node (not yet joined anywhere) and returns its index.
    pub fn add_node(
        &mut self,
        config: Config,
        local: LocalNode,
    ) -> Result<usize, crate::ConfigError> {
        let addr = local.gossip_addr;
        let seed = self.rng.random::<u64>();
        let gossip = Gossip::new(config, local, seed, self.now)?;
        let i = match self.by_addr.get(&addr) {
            // Same address: a restart of that node.
            Some(&i) => {
                self.nodes[i] = SimNode {
                    gossip,
                    up: true,
                    bytes_out: 0,
                    datagrams_out: 0,
                };
                i
            }
            None => {
                self.nodes.push(SimNode {
                    gossip,
                    up: true,
                    bytes_out: 0,
                    datagrams_out: 0,
                });
                self.scheduled.push(None);
                self.groups.push(0);
                self.rewrite.push(None);
                self.by_addr.insert(addr, self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        self.scheduled[i] = None;
        self.flush(i, &mut |_, _, _| {});
        Ok(i)
    }

    /// Node `i` joins through node `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        let addr = self.nodes[seed].gossip.local_record().gossip_addr;
        let now = self.now;
        self.nodes[i].gossip.join(addr, now);
        self.flush(i, &mut |_, _, _| {});
    }

    /// Node `i` leaves gracefully (and keeps running so its goodbyes get out).
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].gossip.leave(now);
        self.flush(i, &mut |_, _, _| {});
    }

    /// Node `i` stops dead: no goodbye, no more datagrams or timers.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Puts node `i` in partition group `group`; datagrams only flow within a group.
    pub fn set_group(&mut self, i: usize, group: u32) {
        self.groups[i] = group;
    }

    /// Passes every datagram node `i` sends through `rewrite`.
    pub fn set_rewrite(&mut self, i: usize, rewrite: Rewrite) {
        self.rewrite[i] = Some(rewrite);
    }

    /// Cuts (`up` false) or restores the link between nodes `a` and `b`, both ways: for
    /// partitions groups cannot draw (a node cut from some nodes of a group but not others).
    pub fn set_link(&mut self, a: usize, b: usize, up: bool) {
        for pair in [(a, b), (b, a)] {
            if up {
                self.cut.remove(&pair);
            } else {
                self.cut.insert(pair);
            }
        }
    }

    /// Heals every partition, and every cut link.
    pub fn heal(&mut self) {
        self.groups.iter_mut().for_each(|g| *g = 0);
        self.cut.clear();
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.groups[a] == self.groups[b] && !self.cut.contains(&(a, b))
    }

    /// Runs for `d` of virtual time, handing every event to `on_event(node, now, event)`.
    pub fn run_for(&mut self, d: Duration, on_event: &mut impl FnMut(usize, Instant, &Event)) {
        let end = self.now + d;
        loop {
            let next_delivery = self.deliveries.peek().map(|Reverse(d)| d.at);
            let next_wake = self.wakeups.peek().map(|Reverse((at, _))| *at);
            let next = match (next_delivery, next_wake) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = next;
            if next_delivery == Some(next) {
                let Some(Reverse(d)) = self.deliveries.pop() else {
                    break;
                };
                if self.nodes[d.to].up {
                    self.nodes[d.to]
                        .gossip
                        .handle_datagram(d.from, &d.bytes, next);
                    self.flush(d.to, on_event);
                }
            } else {
                let Some(Reverse((at, i))) = self.wakeups.pop() else {
                    break;
                };
                if self.scheduled[i] != Some(at) || !self.nodes[i].up {
                    continue;
                }
                self.scheduled[i] = None;
                self.nodes[i].gossip.handle_timeout(next);
                self.flush(i, on_event);
            }
        }
        self.now = end;
    }

    /// Like [`Sim::run_for`], with data-path traffic between every two up nodes of the same
    /// partition group: every `every`, each reports to its state machine that it heard from
    /// each of the others ([`Gossip::handle_evidence`]), unless the network's loss took that
    /// packet.
    pub fn run_with_traffic(
        &mut self,
        d: Duration,
        every: Duration,
        on_event: &mut impl FnMut(usize, Instant, &Event),
    ) {
        let end = self.now + d;
        while self.now < end {
            let step = every.min(end.saturating_duration_since(self.now));
            self.run_for(step, on_event);
            let names: Vec<String> = self
                .nodes
                .iter()
                .map(|n| n.gossip.local_record().name.clone())
                .collect();
            for a in 0..self.nodes.len() {
                for (b, name) in names.iter().enumerate() {
                    let linked =
                        a != b && self.nodes[a].up && self.nodes[b].up && self.linked(a, b);
                    if linked && !self.rng.random_bool(self.net.loss) {
                        let now = self.now;
                        self.nodes[a].gossip.handle_evidence(name, now);
                    }
                }
            }
        }
    }

    fn send(&mut self, i: usize, from: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        self.nodes[i].bytes_out += bytes.len() as u64;
        self.nodes[i].datagrams_out += 1;
        let Some(&to) = self.by_addr.get(&dst) else {
            return;
        };
        if !self.linked(i, to) || self.rng.random_bool(self.net.loss) {
            return;
        }
        let span = self
            .net
            .max_delay
            .saturating_sub(self.net.min_delay)
            .as_nanos();
        let jitter = u64::try_from(span).unwrap_or(u64::MAX);
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter)
        };
        self.seq += 1;
        self.deliveries.push(Reverse(Delivery {
            at: self.now + self.net.min_delay + Duration::from_nanos(extra),
            seq: self.seq,
            to,
            from,
            bytes,
        }));
    }

    /// Sends node `i`'s datagrams into the network, hands out its events, re-arms its timer.
    fn flush(&mut self, i: usize, on_event: &mut impl FnMut(usize, Instant, &Event)) {
        let from = self.nodes[i].gossip.local_record().gossip_addr;
        while let Some(t) = self.nodes[i].gossip.poll_transmit() {
            let datagrams = match self.rewrite[i] {
                Some(rewrite) => rewrite(t.payload),
                None => vec![t.payload],
            };
            for bytes in datagrams {
                self.send(i, from, t.dst, bytes);
            }
        }
        while let Some(e) = self.nodes[i].gossip.poll_event() {
            on_event(i, self.now, &e);
        }
        if let Some(at) = self.nodes[i].gossip.poll_timeout() {
            if self.scheduled[i] != Some(at) {
                self.scheduled[i] = Some(at);
                self.wakeups.push(Reverse((at, i)));
            }
        }
    }
}
