//! A side's choice of relay for each peer it has no direct path to: among the relays whose
//! signed summaries offer a port for the pair ([`meshd_gossip::RelayOffer`]), alive here and
//! reached from here, the lowest RTT through it, ties by name. Both legs are what the relay
//! published (its RTTs to the two sides; one it has not measured counts as [`UNMEASURED`]): the
//! relay's summary is the one both sides are sure to hold (the other side's may never reach this
//! one: the pair has no direct path), so both choose the same relay, which needs both to send
//! to its port. A relay that dies (suspect, then down, within
//! about a second with the gossip defaults) stops counting and the next one is chosen; the
//! endpoint in use moves off the old relay port at once ([`EndpointCell::set_relay`]), the
//! WireGuard session untouched.
//!
//! [`EndpointCell::set_relay`]: crate::link::endpoint::EndpointCell::set_relay

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
        list.sort_by(|a, b| a.rtt.cmp(&b.rtt).then(a.via.cmp(&b.via)));
        p.ep.set_offered(list.iter().map(|o| (o.addr, o.via.clone())).collect());
        let best = &list[0];
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "unmeasured".into(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
            )
        };
        let why = format!(
            "no direct path works; lowest RTT through it of {} relay(s) reaching both: {} ({} to this node + {} to {}){}",
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
        }
    }
}
