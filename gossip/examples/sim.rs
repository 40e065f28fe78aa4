//! Gossip benchmark on the deterministic simulator: prints the figures recorded in
//! `BENCHMARKS.md` for meshd's fast profile and, as the baseline in the same run, foca's stock
//! LAN profile.
//!
//! `cargo run --release -p meshd-gossip --example sim -- --nodes 1000 [--seed 1] [--only fast|stock]`

use std::time::{Duration, Instant};

use meshd_gossip::sim::scenario::{self, Report, Watch};
use meshd_gossip::sim::NetConfig;
use meshd_gossip::{Config, Profile, Subnet};

fn main() {
    let mut nodes = 100usize;
    let mut seed = 1u64;
    let mut only: Option<String> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => nodes = it.next().and_then(|v| v.parse().ok()).unwrap_or(nodes),
            "--seed" => seed = it.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--only" => only = it.next().cloned(),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    println!("nodes={nodes} seed={seed} net: 0.2-2 ms one-way delay");
    for (label, profile) in [("fast", Profile::Fast), ("stock", Profile::FocaLan)] {
        if only.as_deref().is_some_and(|o| o != label) {
            continue;
        }
        let wall = Instant::now();
        let r = run(nodes, seed, profile);
        println!(
            "profile={label} (wall {:.1} s)",
            wall.elapsed().as_secs_f64()
        );
        print_report(&r);
    }
}

fn config(nodes: usize, profile: Profile) -> Config {
    Config {
        // 1,000 nodes need more than the default /16's 256 subnets.
        cluster_cidr: Subnet::new([10, 0, 0, 0].into(), 12).unwrap_or(Subnet::DEFAULT_CLUSTER_CIDR),
        expected_nodes: u32::try_from(nodes).unwrap_or(u32::MAX),
        profile,
        ..Config::default()
    }
}

fn run(nodes: usize, seed: u64, profile: Profile) -> Report {
    let cfg = config(nodes, profile);
    let clean = NetConfig::default();
    let (mut sim, mut watch, mut report) = scenario::bootstrap(nodes, &cfg, clean, seed);
    if std::env::var_os("SIM_DEBUG").is_some() {
        diagnose(&sim);
    }
    // Let bootstrap rumours die down before measuring anything.
    scenario::drain(&mut sim, &mut watch, &mut report);
    scenario::steady(&mut sim, &mut watch, Duration::from_secs(10), &mut report);
    scenario::join_one(&mut sim, &cfg, &mut watch, nodes / 2, &mut report);
    sim.run_for(Duration::from_secs(5), &mut watch.hook());
    scenario::kill_one(&mut sim, &mut watch, nodes / 3, &mut report);
    let clean_false = scenario::false_deaths(&sim, &watch);

    // 5 % loss: run a while, count false deaths, and time a death under loss.
    let lossy = NetConfig {
        loss: 0.05,
        ..clean
    };
    sim.set_net(lossy);
    let mut lossy_watch = Watch::default();
    sim.run_for(Duration::from_secs(LOSSY_SECS), &mut lossy_watch.hook());
    let mut lossy_report = Report::default();
    scenario::kill_one(&mut sim, &mut lossy_watch, nodes / 4, &mut lossy_report);
    report.false_deaths = clean_false + scenario::false_deaths(&sim, &lossy_watch);
    report.dead_everywhere_lossy = lossy_report.dead_everywhere;
    report
}

/// Virtual seconds run at 5 % loss while counting false deaths.
const LOSSY_SECS: u64 = 30;

fn fmt(d: Option<Duration>) -> String {
    d.map_or_else(
        || "did not converge".into(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

fn print_report(r: &Report) {
    println!(
        "  bootstrap, all join one seed at once (meshed, leased, no duplicate): {}",
        fmt(r.bootstrap)
    );
    println!(
        "  bootstrap rumours drained everywhere {} later ({:.0} B/s per node until then)",
        fmt(r.drain),
        r.bootstrap_bytes_per_node_s
    );
    println!("  join known everywhere:   {}", fmt(r.join_everywhere));
    println!("  joiner knows everyone:   {}", fmt(r.joiner_complete));
    println!("  dead declared everywhere: {}", fmt(r.dead_everywhere));
    println!(
        "  dead declared everywhere at 5% loss: {}",
        fmt(r.dead_everywhere_lossy)
    );
    println!(
        "  steady gossip per node: {:.0} B/s plaintext (max node {:.0}), {:.0} B/s on the wire",
        r.steady_bytes_per_node_s, r.steady_bytes_max_node_s, r.steady_wire_bytes_per_node_s
    );
    println!(
        "  false deaths (whole clean run + {LOSSY_SECS} s at 5% loss): {}",
        r.false_deaths
    );
    println!(
        "  subnet conflicts during bootstrap: {}",
        r.subnet_conflicts
    );
}

fn diagnose(sim: &meshd_gossip::sim::Sim) {
    use meshd_gossip::MemberState;
    let up = sim.nodes.iter().filter(|n| n.up).count();
    let mut worst = (usize::MAX, 0);
    for (i, n) in sim.nodes.iter().enumerate() {
        let alive = n
            .gossip
            .members()
            .filter(|m| m.state == MemberState::Alive)
            .count();
        if alive < worst.0 {
            worst = (alive, i);
        }
    }
    let n = &sim.nodes[worst.1].gossip;
    let mut states = std::collections::BTreeMap::new();
    for m in n.members() {
        *states.entry(format!("{:?}", m.state)).or_insert(0) += 1;
    }
    println!(
        "  worst node {} sees {} alive of {}; states {:?}; leased {}; counters {:?}",
        worst.1,
        worst.0,
        up - 1,
        states,
        n.lease().is_some(),
        n.counters()
    );
}
