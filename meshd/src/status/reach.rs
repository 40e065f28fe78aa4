//! How a peer is reached (encrypted mode): the route (`direct`, `direct (punched)`), the endpoint in use and how it was learned, when and why it last changed, whether
//! the pair is behind a NAT, its UDP flows and its keepalives, each with why.

use serde::{Deserialize, Serialize};

/// One peer's reachability, as `meshd status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReachStatus {
    /// `direct`, `direct (punched)` (reached by hole punching), or `relayed via NODE` (the
    /// endpoint in use is the relay port NODE keeps for the pair).
    pub route: String,
    /// The relay chosen for the pair, whether in use or not (a direct path wins): `NODE at
    /// ADDR:PORT, in use, no direct path works: why`, or `…, standby, REASON: why` (the direct
    /// path works, the pair is on another relay's port, or the direct endpoint is quiet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The endpoint in use.
    pub endpoint: String,
    /// How it was learned: `configured`, `advertised`, `advertised (observed by others)`,
    /// `observed by NODE`, or `roamed` (authenticated traffic came from there).
    pub learned: String,
    /// Seconds since the endpoint in use last changed (or was first set).
    pub changed_secs: f64,
    /// Why it changed, in a sentence.
    pub changed_why: String,
    /// Seconds since the endpoint in use last authenticated a datagram; `None`: never.
    #[serde(default)]
    pub heard_secs: Option<f64>,
    /// Who is behind a NAT on this pair: `none`, `peer`, `this node`, `both`.
    pub nat: String,
    /// Where the peer sees this node's traffic from, when we do not advertise that (its signed
    /// path summary says so).
    #[serde(default)]
    pub seen_as: Option<String>,
    /// `several` (one per TX queue) or `one`.
    pub flows: String,
    pub flows_why: String,
    /// `on` or `off`.
    pub keepalive: String,
    pub keepalive_why: String,
    /// The keepalive interval, when on.
    #[serde(default)]
    pub keepalive_secs: Option<u64>,
    /// Hole punching on this pair, when both ends are behind NATs (`None`: not needed).
    #[serde(default)]
    pub punch: Option<PunchStatus>,
}

/// Hole punching on one pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PunchStatus {
    /// `punched`, `trying` or `not punchable`.
    pub state: String,
    /// Why, in a sentence.
    pub why: String,
    /// Attempts it took (`punched`) or made so far (`trying`).
    pub attempts: u32,
    /// Seconds since the punch worked.
    #[serde(default)]
    pub punched_secs: Option<f64>,
    /// Seconds until the next attempt (`trying`).
    #[serde(default)]
    pub next_attempt_secs: Option<f64>,
    /// The wait after that one (`trying`).
    #[serde(default)]
    pub backoff_secs: Option<f64>,
}

/// Whether a NAT maps each destination anew, from where members observe its node: one
/// address at several ports.
pub(crate) fn maps_per_destination(public: &[std::net::SocketAddr]) -> bool {
    public.iter().any(|a| {
        public
            .iter()
            .any(|b| a.ip() == b.ip() && a.port() != b.port())
    })
}

/// This node's public endpoints as other members observe them (behind a NAT).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PublicStatus {
    /// The endpoints its record advertises as observed (`learned`), most reported first.
    pub endpoints: Vec<String>,
    /// `kept` (one public port whoever sends) or `per destination` (a new port for each peer:
    /// two such nodes have no direct path until hole punching or relays).
    pub mapping: String,
}

/// One pair this node relays: its port, where each side's datagrams come from, and what went
/// through each way (WireGuard datagrams, unopened).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RelayPairStatus {
    pub a: String,
    pub b: String,
    pub port: u16,
    /// Where `a`'s datagrams come from (learnt from the first; `None`: nothing yet).
    pub a_from: Option<String>,
    pub b_from: Option<String>,
    /// Seconds since the port was opened.
    pub since_secs: f64,
    pub a_to_b_bytes: u64,
    pub a_to_b_datagrams: u64,
    pub b_to_a_bytes: u64,
    pub b_to_a_datagrams: u64,
    /// Datagrams refused: from neither side's address, from a side's other port while its
    /// learnt one is live, or not WireGuard.
    pub refused: u64,
    /// Datagrams held back while the other side had sent nothing yet.
    pub waiting: u64,
}

impl RelayPairStatus {
    /// One line for `meshd status`.
    pub(crate) fn render(&self) -> String {
        let from = |x: &Option<String>| x.clone().unwrap_or_else(|| "(nothing yet)".into());
        format!(
            "relaying    {} ↔ {} on port {} for {:.0} s: {} → {} {} B in {} datagrams, {} → {} {} B in {}; from {} and {}; refused {}, held back {}\n",
            self.a,
            self.b,
            self.port,
            self.since_secs,
            self.a,
            self.b,
            self.a_to_b_bytes,
            self.a_to_b_datagrams,
            self.b,
            self.a,
            self.b_to_a_bytes,
            self.b_to_a_datagrams,
            from(&self.a_from),
            from(&self.b_from),
            self.refused,
            self.waiting
        )
    }
}

impl PublicStatus {
    /// From the learned endpoints; `None` when there are none (no NAT seen).
    pub(crate) fn of(learned: &[std::net::SocketAddr]) -> Option<PublicStatus> {
        learned.first()?;
        Some(PublicStatus {
            endpoints: learned.iter().map(|a| a.to_string()).collect(),
            mapping: if maps_per_destination(learned) {
                "per destination"
            } else {
                "kept"
            }
            .into(),
        })
    }
}

impl ReachStatus {
    /// Two lines for `meshd status`.
    pub(crate) fn render(&self) -> String {
        let heard = self
            .heard_secs
            .map_or_else(|| "never".into(), |s| format!("{s:.0} s ago"));
        let seen = self
            .seen_as
            .as_deref()
            .map(|s| format!(", it sees us at {s}"))
            .unwrap_or_default();
        let relay = self
            .relay
            .as_deref()
            .map(|r| format!("  relay {r}\n"))
            .unwrap_or_default();
        let punch = self.punch.as_ref().map_or_else(String::new, |p| {
            let mut line = format!("  punch {} ({}; {} attempts", p.state, p.why, p.attempts);
            if let Some(s) = p.punched_secs {
                line += &format!(", {s:.0} s ago");
            }
            if let (Some(n), Some(b)) = (p.next_attempt_secs, p.backoff_secs) {
                line += &format!(", next in {n:.1} s, then backoff {b:.0} s");
            }
            line + ")\n"
        });
        format!(
            "  reach {} to {} ({}; changed {:.0} s ago: {}; heard {heard})\n{relay}  nat {}{seen}  flows {} ({})  keepalive {} ({})\n{punch}",
            self.route,
            self.endpoint,
            self.learned,
            self.changed_secs,
            self.changed_why,
            self.nat,
            self.flows,
            self.flows_why,
            self.keepalive,
            self.keepalive_why
        )
    }
}
