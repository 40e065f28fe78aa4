//! Relaying: WireGuard datagrams of a pair of members with no direct path go through a member
//! that reaches both, which cannot open them.
//!
//! **A port per pair** (like a TURN allocation): a relay binds one UDP port for each pair it
//! relays ([`port::Port`]) and forwards, unopened and unchanged, what each side sends there to
//! the other. Each side uses `relay:port` as the other's endpoint, so the WireGuard session is
//! the pair's own, end to end; relayed bytes are standard WireGuard, and a datagram the relay
//! forwards could as well come from a kernel WireGuard device. The relay learns nothing it could
//! use against the pair: it cannot forge or open their messages, and everything the sides
//! refuse directly they refuse through it.
//!
//! **Which pairs.** Every [`crate::daemon::membership`] tick (2 s) a relay keeps a port for each
//! pair of its peers that are both behind a NAT (as this node sees them: their authenticated
//! traffic comes from an address they do not advertise), at different public addresses, one
//! of them behind a NAT that maps each destination anew (its learned endpoints differ in port:
//! no direct path can be made to it), and that authenticated something lately; at most
//! [`MAX_PORTS`]. It offers the ports in its
//! signed path summary (`meshd_gossip::RelayOffer`, in each side's entry), so only the relay
//! speaks for its ports. A port not wanted for [`LINGER`] is closed.
//!
//! **Who relays.** `relay = true` always, `false` never; absent: while this node is behind no
//! NAT (no member observes it at an address it does not advertise).
//!
//! **The sides' choice** is [`choose`]'s.

pub(crate) mod choose;
pub(crate) mod port;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshd_crypto::PublicKey;
use meshd_gossip::RelayOffer;

use crate::link::endpoint::PEER_NAT;
use crate::peers::EndpointSource;
use crate::routes::RouteTable;
use crate::stats::Stamp;
use crate::status::reach::{maps_per_destination, RelayPairStatus};

/// Pairs one node relays at most (a port and a thread each).
pub(crate) const MAX_PORTS: usize = 64;
/// A port no longer wanted is kept this long (a pair's NAT state flickers; sides still on it).
const LINGER: Duration = Duration::from_secs(30);

struct Kept {
    port: port::Port,
    since: SystemTime,
    wanted: Instant,
}

/// The pairs this node relays, by their names (in order).
#[derive(Default)]
pub(crate) struct Relay {
    pairs: Mutex<HashMap<(String, String), Kept>>,
}

impl Relay {
    /// Keeps a port for each pair that needs one (none when `on` is false), closes those not
    /// wanted for [`LINGER`], and keeps each port's sides at their links' endpoints.
    pub(crate) fn update(&self, table: &RouteTable, on: bool, bind: IpAddr) {
        let now = Stamp::now();
        // (name, address, its NAT maps each destination anew, its public key)
        let behind: Vec<(&str, IpAddr, bool, PublicKey)> = table
            .peers()
            .iter()
            .filter(|p| on && p.ep.nat() & PEER_NAT != 0 && p.ep.working(now))
            .filter_map(|p| {
                let key = p.peer().key.as_ref()?.public;
                let learned: Vec<SocketAddr> = (p.peer().endpoints.iter())
                    .filter(|e| e.source == EndpointSource::Learned)
                    .map(|e| e.addr)
                    .collect();
                Some((
                    p.name.as_str(),
                    p.endpoint().ip(),
                    maps_per_destination(&learned),
                    key,
                ))
            })
            .collect();
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        for (i, (a, a_ip, a_anew, a_key)) in behind.iter().enumerate() {
            for (b, b_ip, b_anew, b_key) in &behind[i + 1..] {
                // Two NATs that keep ports could be punched; behind one, no direct path.
                if a_ip == b_ip || !(*a_anew || *b_anew) {
                    continue;
                }
                let (key, sides, keys) = if a < b {
                    (
                        (a.to_string(), b.to_string()),
                        [*a_ip, *b_ip],
                        [*a_key, *b_key],
                    )
                } else {
                    (
                        (b.to_string(), a.to_string()),
                        [*b_ip, *a_ip],
                        [*b_key, *a_key],
                    )
                };
                if let Some(k) = pairs.get_mut(&key) {
                    k.wanted = at;
                    if **k.port.shared.sides.load() != sides {
                        k.port.shared.sides.store(Arc::new(sides));
                    }
                    if k.port.shared.keys.load().public != keys {
                        k.port.shared.keys.store(Arc::new(port::Keys::new(keys)));
                    }
                    continue;
                }
                if pairs.len() >= MAX_PORTS {
                    tracing::warn!(a = %key.0, b = %key.1, "relay: {MAX_PORTS} pairs relayed already; not this one");
                    continue;
                }
                match port::Port::open(bind, sides, keys, &key.0) {
                    Ok(port) => {
                        tracing::info!(a = %key.0, b = %key.1, port = port.port, "relay: a port for a pair behind NATs");
                        pairs.insert(
                            key,
                            Kept {
                                port,
                                since: SystemTime::now(),
                                wanted: at,
                            },
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "relay: cannot bind a port"),
                }
            }
        }
        pairs.retain(|(a, b), k| {
            let keep = at.duration_since(k.wanted) < LINGER;
            if !keep {
                tracing::info!(%a, %b, port = k.port.port, "relay: the pair no longer needs this relay; port closed");
            }
            keep
        });
    }

    /// What this node's summary offers in `peer`'s entry: the other side and port of each pair
    /// relayed with it.
    pub(crate) fn offers(&self, peer: &str) -> Vec<RelayOffer> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<RelayOffer> = pairs
            .iter()
            .filter_map(|((a, b), k)| {
                let other = if a == peer {
                    b
                } else if b == peer {
                    a
                } else {
                    return None;
                };
                Some(RelayOffer {
                    other: other.clone(),
                    port: k.port.port,
                })
            })
            .collect();
        out.sort_by(|x, y| x.other.cmp(&y.other));
        out
    }

    /// The pairs relayed, for the status.
    pub(crate) fn status(&self) -> Vec<RelayPairStatus> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<RelayPairStatus> = pairs
            .iter()
            .map(|((a, b), k)| {
                let s = &k.port.shared;
                let learnt = *s.learnt.lock().unwrap_or_else(|p| p.into_inner());
                let text = |i: usize| learnt[i].map(|x| x.to_string());
                RelayPairStatus {
                    a: a.clone(),
                    b: b.clone(),
                    port: k.port.port,
                    a_from: text(0),
                    b_from: text(1),
                    since_secs: SystemTime::now()
                        .duration_since(k.since)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    a_to_b_bytes: s.ways[0].bytes.load(Ordering::Relaxed),
                    a_to_b_datagrams: s.ways[0].datagrams.load(Ordering::Relaxed),
                    b_to_a_bytes: s.ways[1].bytes.load(Ordering::Relaxed),
                    b_to_a_datagrams: s.ways[1].datagrams.load(Ordering::Relaxed),
                    refused: s.refused.load(Ordering::Relaxed),
                    waiting: s.waiting.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|x, y| (&x.a, &x.b).cmp(&(&y.a, &y.b)));
        out
    }
}
