//! The whole mesh as one node sees it: every node with its subnet and state, every pair with
//! the path each end uses to the other, as each end reported it. The picture at `/` draws it
//! (`/mesh.json`), `meshd status --dot` and `--all` print it ([`super::graph`]).
//!
//! Built from this node's status (its own peers, which it describes in its own words, and the
//! gossip members with their states) and the path summaries other members gossiped
//! ([`SummaryStatus`]): what a member says about its peers is its signed word, and each view of
//! a pair names its reporter.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use super::health::assess;
use super::Status;
use crate::paths::clock;

/// A member's path summary as this node holds it: its reporter's word about its peers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryStatus {
    pub reporter: String,
    pub version: u64,
    /// Seconds since it arrived.
    pub age_secs: u64,
    /// Peers the reporter left out (beyond the summary's bound).
    pub omitted: u32,
    pub reports: Vec<ReportStatus>,
}

/// One entry of a summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportStatus {
    pub peer: String,
    pub path: String,
    pub route: String,
    pub health: String,
    /// Empty when there is nothing to say.
    pub reason: String,
    pub rtt_us: Option<u64>,
    pub mtu: u16,
}

impl SummaryStatus {
    /// A held summary, as `now` sees its age.
    pub fn of(s: &meshd_gossip::Summary<'_>, now: Instant) -> Self {
        SummaryStatus {
            reporter: s.reporter.to_owned(),
            version: s.version,
            age_secs: now.saturating_duration_since(s.received).as_secs(),
            omitted: s.omitted,
            reports: s
                .reports
                .iter()
                .map(|r| ReportStatus {
                    peer: r.peer.clone(),
                    path: r.path.as_str().into(),
                    route: r.route.as_str().into(),
                    health: r.health.as_str().into(),
                    reason: r.reason.as_str().into(),
                    rtt_us: r.rtt.map(|d| d.as_micros() as u64),
                    mtu: r.mtu,
                })
                .collect(),
        }
    }
}

/// The picture's document (`/mesh.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mesh {
    /// The node that sees it so.
    pub viewer: String,
    /// `wireguard` or `none`: what a userspace path carries.
    pub encryption: String,
    /// When it was gathered (UTC, HH:MM:SS).
    pub at: String,
    pub nodes: Vec<MeshNode>,
    pub pairs: Vec<MeshPair>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshNode {
    pub name: String,
    pub subnet: Option<String>,
    /// `self`, `alive`, `suspect`, `down`, `left`, `static` (a configured peer of this node,
    /// outside gossip) or `reported` (known only from another member's summary).
    pub state: String,
    /// Since when it is in that state (UTC, HH:MM:SS), for members.
    pub since: Option<String>,
    pub address: Option<String>,
    /// Age in seconds of the summary held from it (0 for this node); `None` without one.
    pub summary_age_secs: Option<u64>,
    /// Peers its summary left out.
    pub omitted: u32,
}

/// Two nodes and what each end says of the path between them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshPair {
    pub a: String,
    pub b: String,
    /// The worst of the views, or `down` when an end is down, `unknown` with no view.
    pub health: String,
    pub reason: Option<String>,
    /// At most two: `a`'s word about `b`, `b`'s about `a`.
    pub views: Vec<MeshView>,
}

/// One end's report of a pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshView {
    pub reporter: String,
    pub peer: String,
    pub path: String,
    pub route: String,
    pub rtt_ms: Option<f64>,
    pub mtu: u16,
    pub health: String,
    pub reason: Option<String>,
    /// Seconds since the reporter said it (0 for this node's own).
    pub age_secs: u64,
}

/// Node states that take part in pairs whether or not anyone reported on them.
const MEMBERS: [&str; 4] = ["self", "alive", "suspect", "down"];

fn severity(health: &str) -> u8 {
    match health {
        "down" => 3,
        "degraded" => 2,
        "ok" => 1,
        _ => 0,
    }
}

impl Mesh {
    /// The mesh from this node's status `s` and the summaries it holds, at wall time `now`.
    pub fn build(s: &Status, summaries: &[SummaryStatus], now: SystemTime) -> Mesh {
        let members = s.members.as_deref().unwrap_or_default();
        let node = |name: &str, state: &str| MeshNode {
            name: name.into(),
            subnet: None,
            state: state.into(),
            since: None,
            address: None,
            summary_age_secs: None,
            omitted: 0,
        };
        let mut nodes: BTreeMap<String, MeshNode> = BTreeMap::new();
        let mut me = node(&s.node, "self");
        me.subnet = s
            .subnet
            .parse::<ipnet::Ipv4Net>()
            .ok()
            .map(|n| n.to_string());
        me.address = Some(s.address.clone());
        me.summary_age_secs = Some(0);
        nodes.insert(s.node.clone(), me);
        for m in members {
            let mut n = node(&m.name, &m.state);
            n.subnet = m.subnet.clone();
            n.address = Some(m.address.clone());
            n.since = now
                .checked_sub(Duration::from_secs(m.since_secs))
                .map(clock);
            nodes.insert(m.name.clone(), n);
        }
        let mut views: HashMap<(String, String), Vec<MeshView>> = HashMap::new();
        let mut add = |v: MeshView| {
            let key = if v.reporter < v.peer {
                (v.reporter.clone(), v.peer.clone())
            } else {
                (v.peer.clone(), v.reporter.clone())
            };
            views.entry(key).or_default().push(v);
        };
        for p in &s.peers {
            let suspect = members
                .iter()
                .any(|m| m.name == p.name && m.state == "suspect");
            let a = assess(p, suspect);
            nodes.entry(p.name.clone()).or_insert_with(|| {
                let mut n = node(&p.name, "static");
                n.subnet = Some(p.subnet.clone());
                n.address = Some(p.endpoint.clone());
                n
            });
            add(MeshView {
                reporter: s.node.clone(),
                peer: p.name.clone(),
                path: super::health::path_code(p).as_str().into(),
                route: "direct".into(),
                rtt_ms: super::health::rtt(p).map(|d| d.as_secs_f64() * 1000.0),
                mtu: p.mtu,
                health: a.health.as_str().into(),
                reason: a.text.filter(|t| !t.is_empty()),
                age_secs: 0,
            });
        }
        for sm in summaries.iter().filter(|x| x.reporter != s.node) {
            if let Some(n) = nodes.get_mut(&sm.reporter) {
                n.summary_age_secs = Some(sm.age_secs);
                n.omitted = sm.omitted;
            }
            for r in &sm.reports {
                nodes
                    .entry(r.peer.clone())
                    .or_insert_with(|| node(&r.peer, "reported"));
                add(MeshView {
                    reporter: sm.reporter.clone(),
                    peer: r.peer.clone(),
                    path: r.path.clone(),
                    route: r.route.clone(),
                    rtt_ms: r.rtt_us.map(|us| us as f64 / 1000.0),
                    mtu: r.mtu,
                    health: r.health.clone(),
                    reason: Some(r.reason.clone()).filter(|t| !t.is_empty()),
                    age_secs: sm.age_secs,
                });
            }
        }
        let list: Vec<&MeshNode> = nodes.values().filter(|n| n.state != "left").collect();
        let mut pairs = Vec::new();
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                let key = (a.name.clone(), b.name.clone());
                let mut v = views.remove(&key).unwrap_or_default();
                let both_members =
                    MEMBERS.contains(&a.state.as_str()) && MEMBERS.contains(&b.state.as_str());
                if v.is_empty() && !both_members {
                    continue;
                }
                v.sort_by(|x, y| x.reporter.cmp(&y.reporter));
                pairs.push(pair(a, b, v));
            }
        }
        Mesh {
            viewer: s.node.clone(),
            encryption: s
                .encryption
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            at: clock(now),
            nodes: nodes.into_values().collect(),
            pairs,
        }
    }
}

fn pair(a: &MeshNode, b: &MeshNode, views: Vec<MeshView>) -> MeshPair {
    let down = [a, b].into_iter().find(|n| n.state == "down");
    let (health, reason) = match (down, views.iter().max_by_key(|v| severity(&v.health))) {
        (Some(n), _) => (
            "down".to_owned(),
            Some(match &n.since {
                Some(t) => format!("{} down since {t}", n.name),
                None => format!("{} down", n.name),
            }),
        ),
        (None, None) => ("unknown".to_owned(), Some("no report yet".to_owned())),
        (None, Some(w)) => (
            w.health.clone(),
            w.reason.as_ref().map(|r| format!("{}: {r}", w.reporter)),
        ),
    };
    MeshPair {
        a: a.name.clone(),
        b: b.name.clone(),
        health,
        reason,
        views,
    }
}

#[cfg(test)]
#[path = "mesh_tests.rs"]
pub(crate) mod tests;
