//! Measured scenarios on the simulator, shared by the tests (which assert on correctness) and
//! the `sim` example (which prints the figures recorded in `BENCHMARKS.md`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{NetConfig, Sim};
use crate::{Config, Event, SubnetRequest};

/// Virtual time a scenario waits for convergence before giving up.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// Granularity of convergence checks.
const STEP: Duration = Duration::from_millis(50);

/// What a scenario measured. `None` means "did not converge within [`PATIENCE`]".
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Time until every node knew every other node alive and held a subnet of its own.
    pub bootstrap: Option<Duration>,
    /// Time until every member saw a newcomer up.
    pub join_everywhere: Option<Duration>,
    /// Time until the newcomer saw every member up.
    pub joiner_complete: Option<Duration>,
    /// Time until every live member declared a killed node down.
    pub dead_everywhere: Option<Duration>,
    /// Same as `dead_everywhere`, with 5 % loss on every datagram.
    pub dead_everywhere_lossy: Option<Duration>,
    /// Time after bootstrap until every node's rumour queue was empty.
    pub drain: Option<Duration>,
    /// Mean plaintext bytes per node per second from the start until drained.
    pub bootstrap_bytes_per_node_s: f64,
    /// Mean plaintext gossip bytes per node per second in steady state.
    pub steady_bytes_per_node_s: f64,
    /// The busiest node's plaintext bytes per second in steady state.
    pub steady_bytes_max_node_s: f64,
    /// Same as `steady_bytes_per_node_s`, with sealing and IP/UDP headers added.
    pub steady_wire_bytes_per_node_s: f64,
    /// Members declared down although they never stopped, over the whole run.
    pub false_deaths: u64,
    /// Subnet conflicts raised while nodes claimed concurrently.
    pub subnet_conflicts: u64,
}

/// Records the events a scenario cares about.
#[derive(Default)]
pub struct Watch {
    /// `(observer, subject)` pairs that saw `subject` up, and when.
    pub up: HashMap<(usize, String), Instant>,
    /// `(observer, subject)` pairs that declared `subject` down, and when.
    pub down: HashMap<(usize, String), Instant>,
    /// Subnet conflict events seen.
    pub conflicts: u64,
}

impl Watch {
    /// Hands this to [`Sim::run_for`].
    pub fn hook(&mut self) -> impl FnMut(usize, Instant, &Event) + '_ {
        move |i, now, e| match e {
            Event::MemberUp(r) => {
                self.up.entry((i, r.name.clone())).or_insert(now);
            }
            Event::MemberDown(n) => {
                self.down.entry((i, n.clone())).or_insert(now);
            }
            Event::SubnetConflict(_) => self.conflicts += 1,
            _ => {}
        }
    }
}

/// Builds `n` nodes that all join node 0 at once, and runs until each knows all others alive.
pub fn bootstrap(n: usize, config: &Config, net: NetConfig, seed: u64) -> (Sim, Watch, Report) {
    let mut sim = Sim::new(net, seed);
    let mut watch = Watch::default();
    for i in 0..n {
        let local = Sim::local_node(i, SubnetRequest::Auto);
        if sim.add_node(config.clone(), local).is_err() {
            return (sim, watch, Report::default());
        }
    }
    for i in 1..n {
        sim.join(i, 0);
    }
    let t0 = sim.now;
    let done = run_until(&mut sim, &mut watch, |s| {
        fully_meshed(s) && all_leased(s) && unique_leases(s)
    });
    let report = Report {
        bootstrap: done.map(|t| t.duration_since(t0)),
        subnet_conflicts: watch.conflicts,
        ..Report::default()
    };
    (sim, watch, report)
}

/// Whether every up node sees every other up node alive.
pub fn fully_meshed(sim: &Sim) -> bool {
    let up = sim.nodes.iter().filter(|n| n.up).count();
    sim.nodes.iter().filter(|n| n.up).all(|n| {
        n.gossip
            .members()
            .filter(|m| m.state == crate::MemberState::Alive)
            .count()
            + 1
            >= up
    })
}

/// Whether every up node holds a subnet.
pub fn all_leased(sim: &Sim) -> bool {
    sim.nodes
        .iter()
        .filter(|n| n.up)
        .all(|n| n.gossip.lease().is_some())
}

/// Whether no two up nodes hold the same subnet (conflicting claims have all been settled).
pub fn unique_leases(sim: &Sim) -> bool {
    let mut seen = HashSet::new();
    sim.nodes
        .iter()
        .filter(|n| n.up)
        .filter_map(|n| n.gossip.lease())
        .all(|l| seen.insert(l.subnet))
}

/// Runs until `done` holds (checked every 50 ms of virtual time) or [`PATIENCE`] runs out.
pub fn run_until(sim: &mut Sim, watch: &mut Watch, done: impl Fn(&Sim) -> bool) -> Option<Instant> {
    let deadline = sim.now + PATIENCE;
    while sim.now < deadline {
        sim.run_for(STEP, &mut watch.hook());
        if done(sim) {
            return Some(sim.now);
        }
    }
    None
}

/// A new node joins through a random member; measures both directions of discovery.
pub fn join_one(
    sim: &mut Sim,
    config: &Config,
    watch: &mut Watch,
    seed_node: usize,
    report: &mut Report,
) {
    let i = sim.nodes.len();
    let Ok(i) = sim.add_node(config.clone(), Sim::local_node(i, SubnetRequest::Auto)) else {
        return;
    };
    let name = format!("node-{i}");
    let t0 = sim.now;
    sim.join(i, seed_node);
    let others: Vec<usize> = (0..sim.nodes.len())
        .filter(|&j| j != i && sim.nodes[j].up)
        .collect();
    let deadline = t0 + PATIENCE;
    while sim.now < deadline
        && (report.join_everywhere.is_none() || report.joiner_complete.is_none())
    {
        sim.run_for(STEP, &mut watch.hook());
        if report.join_everywhere.is_none()
            && others
                .iter()
                .all(|&j| watch.up.contains_key(&(j, name.clone())))
        {
            let last = others
                .iter()
                .filter_map(|&j| watch.up.get(&(j, name.clone())))
                .max();
            report.join_everywhere = last.map(|t| t.duration_since(t0));
        }
        if report.joiner_complete.is_none()
            && sim.nodes[i]
                .gossip
                .members()
                .filter(|m| m.state == crate::MemberState::Alive)
                .count()
                >= others.len()
        {
            report.joiner_complete = Some(sim.now.duration_since(t0));
        }
    }
}

/// Kills node `victim` and measures until every live node has declared it down.
pub fn kill_one(sim: &mut Sim, watch: &mut Watch, victim: usize, report: &mut Report) {
    let name = format!("node-{victim}");
    sim.kill(victim);
    let t0 = sim.now;
    let live: Vec<usize> = (0..sim.nodes.len()).filter(|&j| sim.nodes[j].up).collect();
    let deadline = t0 + PATIENCE;
    while sim.now < deadline {
        sim.run_for(STEP, &mut watch.hook());
        let seen: Option<Vec<Instant>> = live
            .iter()
            .map(|&j| watch.down.get(&(j, name.clone())).copied())
            .collect();
        if let Some(times) = seen {
            report.dead_everywhere = times.into_iter().max().map(|t| t.duration_since(t0));
            return;
        }
    }
}

/// Runs until every node's rumour queue is empty; records how long that took and the mean
/// bytes per node per second spent since the simulation started.
pub fn drain(sim: &mut Sim, watch: &mut Watch, report: &mut Report) {
    let t0 = sim.now;
    let done = run_until(sim, watch, |s| {
        s.nodes
            .iter()
            .filter(|n| n.up)
            .all(|n| n.gossip.backlog() == 0)
    });
    report.drain = done.map(|t| t.duration_since(t0));
    let secs = sim.elapsed().as_secs_f64();
    let up: Vec<_> = sim.nodes.iter().filter(|n| n.up).collect();
    if secs > 0.0 && !up.is_empty() {
        let total: u64 = up.iter().map(|n| n.bytes_out).sum();
        report.bootstrap_bytes_per_node_s = total as f64 / secs / up.len() as f64;
    }
}

/// Runs `d` with no membership change and reports mean and max bytes per node per second.
pub fn steady(sim: &mut Sim, watch: &mut Watch, d: Duration, report: &mut Report) {
    let before: Vec<(u64, u64)> = sim
        .nodes
        .iter()
        .map(|n| (n.bytes_out, n.datagrams_out))
        .collect();
    sim.run_for(d, &mut watch.hook());
    let secs = d.as_secs_f64();
    let (mut total, mut wire, mut max, mut count) = (0.0, 0.0, 0.0f64, 0.0);
    for (n, (b0, d0)) in sim.nodes.iter().zip(before) {
        if !n.up {
            continue;
        }
        let bytes = (n.bytes_out - b0) as f64;
        let dgrams = (n.datagrams_out - d0) as f64;
        total += bytes / secs;
        wire += (bytes + dgrams * super::WIRE_OVERHEAD as f64) / secs;
        max = max.max(bytes / secs);
        count += 1.0;
    }
    if count > 0.0 {
        report.steady_bytes_per_node_s = total / count;
        report.steady_wire_bytes_per_node_s = wire / count;
        report.steady_bytes_max_node_s = max;
    }
}

/// Counts MemberDown events about nodes that are up (they never stopped).
pub fn false_deaths(sim: &Sim, watch: &Watch) -> u64 {
    let up: HashSet<String> = sim
        .nodes
        .iter()
        .filter(|n| n.up)
        .map(|n| n.gossip.local_record().name.clone())
        .collect();
    watch
        .down
        .keys()
        .filter(|(_, subject)| up.contains(subject))
        .count() as u64
}
