//! A side's choice of relay for each peer it has no direct path to: among the relays whose
//! signed summaries offer a port for the pair ([`meshd_gossip::RelayOffer`]), alive here and
//! reached from here, the lowest RTT through it; RTTs within [`NEAR`] plus a fifth of the
//! lowest tie, and the name breaks the tie, except that the relay in use is kept while it is
//! within that tie (measurements that come later move no pair; a relay clearly faster takes
//! over). Both legs are what the relay published (its RTTs to the two sides,
//! `status::health::rtt`: measured as their handshakes' responder too; one it has not measured
//! counts as [`UNMEASURED`]), so both sides usually choose alike; when they do not (one held an
//! offer the other did not yet), every relay offered forwards the pair, having had each side's
//! handshake (`datapath/wireguard/nat.rs`), and roaming follows the peer. Every offered port
//! goes to the cell ([`EndpointCell::set_offered`]). A relay that dies (suspect, then down,
//! within about a second with the gossip defaults) stops counting and the next one is chosen;
//! the endpoint in use moves off the old relay port at once ([`EndpointCell::set_relay`]), the
//! WireGuard session untouched, and a handshake is asked for, since a relay port learns a side
//! only from one (`super::port`).
//!
//! [`EndpointCell::set_relay`]: crate::link::endpoint::EndpointCell::set_relay
//! [`EndpointCell::set_offered`]: crate::link::endpoint::EndpointCell::set_offered

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_gossip::{Gossip, MemberState};

use crate::link::endpoint::RelayUse;
use crate::routes::RouteTable;
use crate::stats::Stamp;

/// An RTT a relay did not report counts as this.
const UNMEASURED: Duration = Duration::from_secs(1);
/// RTTs through relays within this much of the lowest, plus a fifth of it, tie (the name
/// breaks it): measurement noise does not move a pair between relays, and both sides still
/// choose alike (the rule reads only what the relays published, no side's own state).
const NEAR: Duration = Duration::from_millis(2);

struct Offer {
    via: Arc<str>,
    addr: SocketAddr,
    rtt: Duration,
    legs: (Option<Duration>, Option<Duration>),
}

/// Sets each peer's relay ([`crate::link::endpoint::EndpointCell::set_relay`]) from the
/// members' summaries; `me` is this node's name.
pub(crate) fn choose(gossip: &Gossip, table: &RouteTable, me: &str) {
    let now = Stamp::now();
    let mut offers: HashMap<&str, Vec<Offer>> = HashMap::new();
    for s in gossip.summaries() {
        let alive = gossip
            .member(s.reporter)
            .is_some_and(|m| m.state == MemberState::Alive);
        let Some(relay) = table.peers().iter().find(|p| p.name == s.reporter) else {
            continue;
        };
        if !alive || !relay.ep.working(now) {
            continue;
        }
        let Some(mine) = s.reports.iter().find(|r| r.peer == me) else {
            continue;
        };
        for o in &mine.relays {
            let theirs = s.reports.iter().find(|r| r.peer == o.other);
            let legs = (mine.rtt, theirs.and_then(|r| r.rtt));
            offers.entry(o.other.as_str()).or_default().push(Offer {
                via: Arc::from(s.reporter),
                addr: SocketAddr::new(relay.endpoint().ip(), o.port),
                rtt: legs.0.unwrap_or(UNMEASURED) + legs.1.unwrap_or(UNMEASURED),
                legs,
            });
        }
    }
    for p in table.peers() {
        let Some(list) = offers.get_mut(p.name.as_str()) else {
            p.ep.set_offered(Vec::new());
            p.ep.set_relay(None, now);
            continue;
        };
        rank(list);
        p.ep.set_offered(list.iter().map(|o| (o.addr, o.via.clone())).collect());
        // A pair keeps the relay it is on while that one is near the best (measurements that
        // come later move nobody); a relay clearly faster takes over.
        let cur = p.endpoint();
        let best = (list.iter())
            .find(|o| o.addr == cur && near(o.rtt, list[0].rtt))
            .unwrap_or(&list[0]);
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "unmeasured".into(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
            )
        };
        let why = format!(
            "lowest RTT through it (within 2 ms + 20 %: first by name) of {} relay(s) reaching both: {} ({} to this node + {} to {}){}",
            list.len(),
            ms(Some(best.rtt)),
            ms(best.legs.0),
            ms(best.legs.1),
            p.name,
            list.get(1)
                .map(|n| format!("; next {} at {}", n.via, ms(Some(n.rtt))))
                .unwrap_or_default()
        );
        let to = RelayUse {
            addr: best.addr,
            via: best.via.clone(),
            why,
        };
        if p.ep.set_relay(Some(to), now) {
            tracing::info!(peer = %p.name, via = %best.via, endpoint = %best.addr, "relayed: no direct path works");
            // The relay port learns where this node sends from only by a handshake message
            // (`super::port`): a session already up must not wait for its rekey.
            if let Some(w) = &p.wg {
                w.want_handshake();
            }
        }
    }
}

/// Orders `list` best first: the offers whose RTT is [`near`] the lowest by name, then the
/// others by RTT (and name).
fn rank(list: &mut [Offer]) {
    let Some(low) = list.iter().map(|o| o.rtt).min() else {
        return;
    };
    let key = |o: &Offer| (!near(o.rtt, low)).then_some(o.rtt);
    list.sort_by(|a, b| key(a).cmp(&key(b)).then(a.via.cmp(&b.via)));
}

/// Whether an RTT through a relay ties with the lowest: within [`NEAR`] plus a fifth.
fn near(rtt: Duration, low: Duration) -> bool {
    rtt <= low + NEAR + low / 5
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn offers(rtts: &[(&str, u64)]) -> Vec<Offer> {
        rtts.iter()
            .map(|&(via, us)| Offer {
                via: Arc::from(via),
                addr: "198.18.0.1:40000".parse().unwrap(),
                rtt: Duration::from_micros(us),
                legs: (None, None),
            })
            .collect()
    }

    fn ranked(rtts: &[(&str, u64)]) -> Vec<String> {
        let mut list = offers(rtts);
        rank(&mut list);
        list.iter().map(|o| o.via.to_string()).collect()
    }

    #[test]
    fn the_lower_rtt_through_a_relay_wins_and_near_ones_tie_by_name() {
        // A relay 80 ms away loses to one 2 ms away, whatever their names.
        assert_eq!(ranked(&[("a", 80_000), ("b", 2_000)]), ["b", "a"]);
        // Within 2 ms + 20 % of the lowest: a tie, by name (noise moves no pair).
        assert_eq!(ranked(&[("b", 1_000), ("a", 1_500)]), ["a", "b"]);
        assert_eq!(ranked(&[("b", 40_000), ("a", 49_000)]), ["a", "b"]);
        assert_eq!(ranked(&[("b", 1_000), ("a", 3_300)]), ["b", "a"]);
        // The far ones follow by RTT; an unmeasured relay (1 s a leg) after measured ones.
        let far = ranked(&[("c", 2_000_000), ("d", 9_000), ("e", 1_000), ("a", 30_000)]);
        assert_eq!(far, ["e", "d", "a", "c"]);
        assert_eq!(ranked(&[("b", 2_000_000), ("a", 2_000_000)]), ["a", "b"]);
    }
}
