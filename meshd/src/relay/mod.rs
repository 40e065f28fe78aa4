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
//! **Which pairs.** Whenever the gossip driver reacts to a change (a peer's endpoint moved or
//! started to work, a summary arrived) and every tick (2 s), a relay keeps a port for each pair
//! of its peers that are both behind a NAT (as this node sees them: their authenticated traffic
//! comes from an address they do not advertise), at different public addresses, that
//! authenticated something lately, and that no side reports a working direct path for (its
//! signed summary: a direct route, the peer observed). So the port is **ready before the pair
//! needs it**, as soon as the relay hears both, and the pair starts relayed, as Tailscale starts
//! on DERP; punching goes on meanwhile and a direct path takes over
//! ([`crate::link::endpoint`]'s roaming rule), after which the port is no longer wanted. At most
//! [`MAX_PORTS`]: past it, the pairs that need a relay (one side behind a NAT that maps each
//! destination anew: its learned endpoints differ in port) come first, then those already kept;
//! a port no longer wanted makes room. It offers the ports in its signed path summary
//! (`meshd_gossip::RelayOffer`, in each side's entry), so only the relay speaks for its ports.
//! A port not wanted for [`LINGER`] is closed.
//!
//! **Who relays.** `relay = true` always, `false` never; absent: while this node is behind no
//! NAT (no member observes it at an address it does not advertise).
//!
//! **The sides' choice** is [`choose`]'s.

pub(crate) mod choose;
pub(crate) mod port;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A pair a port may be kept for: how much it needs one (0: no direct path can be made, 1:
/// none known yet), its names in order, its sides' addresses and public keys.
type Wanted = (u8, (String, String), [IpAddr; 2], [PublicKey; 2]);

/// The pairs this node relays, by their names (in order).
#[derive(Default)]
pub(crate) struct Relay {
    pairs: Mutex<HashMap<(String, String), Kept>>,
    /// Pairs past [`MAX_PORTS`] at the last update (logged when it changes).
    over: AtomicUsize,
}

impl Relay {
    /// Keeps a port for each pair that may need one (none when `on` is false), closes those
    /// not wanted for [`LINGER`], and keeps each port's sides at their links' endpoints.
    /// `direct`: whether a side of the pair reports a working direct path to the other.
    pub(crate) fn update(
        &self,
        table: &RouteTable,
        on: bool,
        bind: IpAddr,
        direct: impl Fn(&str, &str) -> bool,
    ) {
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
        // (0: no direct path can be made, 1: none known yet; the pair; its sides' addresses
        // and public keys)
        let mut want: Vec<Wanted> = Vec::new();
        for (i, (a, a_ip, a_anew, a_key)) in behind.iter().enumerate() {
            for (b, b_ip, b_anew, b_key) in &behind[i + 1..] {
                // Behind one NAT: their own network; a direct path known: not needed.
                if a_ip == b_ip || direct(a, b) {
                    continue;
                }
                let class = u8::from(!(*a_anew || *b_anew));
                want.push(if a < b {
                    let key = (a.to_string(), b.to_string());
                    (class, key, [*a_ip, *b_ip], [*a_key, *b_key])
                } else {
                    let key = (b.to_string(), a.to_string());
                    (class, key, [*b_ip, *a_ip], [*b_key, *a_key])
                });
            }
        }
        // Past the bound, pairs that need a relay first, then those already kept.
        want.sort_by(|x, y| {
            (x.0, !pairs.contains_key(&x.1), &x.1).cmp(&(y.0, !pairs.contains_key(&y.1), &y.1))
        });
        let over = want.len().saturating_sub(MAX_PORTS);
        if self.over.swap(over, Ordering::Relaxed) != over && over > 0 {
            tracing::warn!("relay: {over} pair(s) behind NATs past the {MAX_PORTS} ports kept; those that need a relay first");
        }
        want.truncate(MAX_PORTS);
        let at = Instant::now();
        for (_, key, sides, keys) in want {
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
                // Room from the port wanted longest ago, if it is no longer wanted.
                let old = (pairs.iter())
                    .filter(|(_, k)| k.wanted < at)
                    .min_by_key(|(_, k)| k.wanted)
                    .map(|(key, _)| key.clone());
                let Some(old) = old else { continue };
                pairs.remove(&old);
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
