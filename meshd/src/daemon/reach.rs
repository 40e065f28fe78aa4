//! A peer's reachability for the status (encrypted mode) ([`ReachStatus`]), read off its link: the endpoint in
//! use and how it was learned, the pair's NAT state, flows and keepalives, each with why.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::link::endpoint::{How, RelayUse, PEER_NAT, SELF_NAT};
use crate::link::punch::Mode;
use crate::link::PeerLink;
use crate::stats::Stamp;
use crate::status::reach::{PunchStatus, ReachStatus};

/// `link`'s reachability now; `keepalive` is this node's NAT keepalive interval (`None`: off).
pub(crate) fn reach(link: &PeerLink, keepalive: Option<Duration>) -> ReachStatus {
    let change = link.ep.change();
    let endpoint = link.endpoint();
    let learned = match &change.how {
        How::Roamed => "roamed".to_string(),
        How::Relay(via) => format!("relay port kept by {via}"),
        How::Candidate(source) => source.text(),
    };
    let relay = link.ep.relay();
    let route = match link.ep.relay_via(endpoint) {
        Some(via) => format!("relayed via {via}"),
        None => "direct".into(),
    };
    let changed_why = match (&change.how, change.from) {
        (How::Roamed, Some(from)) => {
            format!("authenticated traffic came from {endpoint}, not {from}")
        }
        (How::Roamed, None) => "authenticated traffic came from there".into(),
        (How::Relay(_), _) => relay.as_ref().map_or_else(
            || "a relay port".into(),
            |r| format!("no direct path works; {}", r.why),
        ),
        (How::Candidate(_), None) => "the peer's first candidate".into(),
        (How::Candidate(_), Some(from)) => format!(
            "the peer's record changed and {from} had authenticated nothing for {} s",
            crate::link::endpoint::WORKING.as_secs()
        ),
    };
    let nat = link.ep.nat();
    let seen_as = link.ep.seen_as();
    let (nat_text, behind) = match (nat & PEER_NAT != 0, nat & SELF_NAT != 0) {
        (false, false) => ("none", None),
        (true, false) => (
            "peer",
            Some(format!(
                "the peer's traffic comes from {endpoint}, which it does not advertise"
            )),
        ),
        (false, true) => (
            "this node",
            Some(format!(
                "the peer sees this node at {}, which it does not advertise",
                seen_as.map_or_else(|| "another address".into(), |a| a.to_string())
            )),
        ),
        (true, true) => ("both", Some("both ends are behind a NAT".into())),
    };
    let (flows, flows_why) = match &behind {
        Some(_) => (
            "one",
            "from the data port only: a NAT passes answers only from the address and port its mapping was made towards".to_string(),
        ),
        None => ("several", "one per TX queue: no NAT on this pair".to_string()),
    };
    let (ka, ka_why, ka_secs) = match (&behind, keepalive) {
        (None, _) => (
            "off",
            "a public path both ways: an idle pair stays silent".to_string(),
            None,
        ),
        (Some(why), Some(every)) => (
            "on",
            format!(
                "every {} s of silence, to hold the NAT mapping open: {why}",
                every.as_secs()
            ),
            Some(every.as_secs()),
        ),
        (Some(why), None) => (
            "off",
            format!("wireguard.nat-keepalive = 0, though {why}"),
            None,
        ),
    };
    let now = Stamp::now();
    let (punched, punch) = punch_status(link, endpoint);
    ReachStatus {
        // A punched pair is direct; `relayed via` only while the relay port is in use.
        route: if punched && route == "direct" {
            "direct (punched)".into()
        } else {
            route
        },
        relay: relay.map(|r| {
            let on = link.ep.relay_via(endpoint);
            relay_line(&r, endpoint, on.as_deref(), link.ep.working(now))
        }),
        endpoint: endpoint.to_string(),
        learned,
        changed_secs: SystemTime::now()
            .duration_since(change.at)
            .unwrap_or_default()
            .as_secs_f64(),
        changed_why,
        heard_secs: link.ep.heard().map(|t| t.age(now).as_secs_f64()),
        nat: nat_text.into(),
        seen_as: seen_as.map(|a| a.to_string()),
        flows: flows.into(),
        flows_why,
        keepalive: ka.into(),
        keepalive_why: ka_why,
        keepalive_secs: ka_secs,
        punch,
    }
}

/// The pair's `relay` line: the relay chosen, whether the pair is on its port (`endpoint` is
/// the one in use, `on` the relay whose port that is, if any, `works` whether it authenticated
/// something lately), and why it was chosen. A relay is chosen for every pair offered one, so
/// a pair on a direct path has one on standby.
fn relay_line(r: &RelayUse, endpoint: SocketAddr, on: Option<&str>, works: bool) -> String {
    let standing = match on {
        _ if r.addr == endpoint => "in use, no direct path works".to_string(),
        Some(other) => format!("standby, the pair is on {other}'s port"),
        None if works => "standby, the direct path works".to_string(),
        // About to move to the relay, or the peer is down.
        None => format!("standby, {endpoint} authenticated nothing lately"),
    };
    format!("{} at {}, {standing}: {}", r.via, r.addr, r.why)
}

/// Whether the endpoint in use was reached by hole punching, and the pair's punch state.
fn punch_status(link: &PeerLink, endpoint: SocketAddr) -> (bool, Option<PunchStatus>) {
    let st = link.punch.lock();
    let now = crate::link::punch::now_ms();
    let secs = |ms: u64| ms as f64 / 1000.0;
    match &st.mode {
        Mode::Trying => (
            false,
            Some(PunchStatus {
                state: "trying".into(),
                why: "both ends behind NATs that keep their port, no direct path yet: both send to the other's public endpoints at a shared moment".into(),
                attempts: st.attempts,
                punched_secs: None,
                next_attempt_secs: Some(secs(st.next_ms.saturating_sub(now))),
                backoff_secs: Some(st.backoff.as_secs_f64()),
            }),
        ),
        Mode::NotPunchable(why) => (
            false,
            Some(PunchStatus {
                state: "not punchable".into(),
                why: format!("{why}; still tried now and then, at the peer's own port too"),
                attempts: st.attempts,
                punched_secs: None,
                next_attempt_secs: Some(secs(st.next_ms.saturating_sub(now))),
                backoff_secs: Some(st.backoff.as_secs_f64()),
            }),
        ),
        Mode::Idle => match &st.punched {
            Some(p) if p.endpoint == endpoint => (
                true,
                Some(PunchStatus {
                    state: "punched".into(),
                    why: format!("a coordinated burst reached {} through both NATs", p.endpoint),
                    attempts: p.attempts,
                    punched_secs: Some(secs(now.saturating_sub(p.at_ms))),
                    ..PunchStatus::default()
                }),
            ),
            _ => (false, None),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_relay_line_says_whether_the_pair_is_on_the_relay() {
        let r = RelayUse {
            addr: "198.18.0.1:33040".parse().unwrap(),
            via: "h1".into(),
            why: "lowest RTT through it".into(),
        };
        let direct: SocketAddr = "198.18.0.102:51820".parse().unwrap();
        assert_eq!(
            relay_line(&r, r.addr, Some("h1"), true),
            "h1 at 198.18.0.1:33040, in use, no direct path works: lowest RTT through it"
        );
        // Punched or direct: the relay waits, and nothing says no direct path works.
        let standby = relay_line(&r, direct, None, true);
        assert_eq!(
            standby,
            "h1 at 198.18.0.1:33040, standby, the direct path works: lowest RTT through it"
        );
        // A direct endpoint gone quiet is not called working.
        let quiet = relay_line(&r, direct, None, false);
        assert!(
            quiet.contains("standby, 198.18.0.102:51820 authenticated nothing lately"),
            "{quiet}"
        );
        let other = relay_line(&r, "198.18.0.2:40000".parse().unwrap(), Some("h2"), true);
        assert!(
            other.contains("standby, the pair is on h2's port"),
            "{other}"
        );
    }
}
