//! One [`Status`] snapshot gathered from every source the daemon has: the fixed facts of the
//! node, every peer's link (counters, endpoint, session, path: one object each, no joins),
//! gossip and the secrets.
//! The status socket serves it; a metrics endpoint would read the same snapshot.

use ipnet::Ipv4Net;
use meshd_gossip::MemberState;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::membership::Shared;
use crate::backend::Backend;
use crate::datapath::QueueCounters;
use crate::peers::wireguard::WgPeer;
use crate::routes::PeerEntry;
use crate::status::{
    GossipCounters, MemberStatus, PeerStatus, QueueStatus, RefusedRecords, RefusedStatus,
    SecretStatus, Status, WireguardStatus,
};

/// The fixed part of the status and where the rest is read, fresh on every request.
pub(crate) struct Report {
    pub(crate) base: Status,
    pub(crate) backend: Arc<Backend>,
    /// Gossip state, when gossip runs.
    pub(crate) gossip: Option<Arc<Mutex<Shared>>>,
    /// The node's current subnet, when gossip assigns it.
    pub(crate) subnet: Option<Arc<Mutex<Option<Ipv4Net>>>>,
    /// The data path's queue counters.
    pub(crate) queues: Vec<Arc<QueueCounters>>,
    /// NAT keepalive interval (`wireguard.nat-keepalive`; `None`: off), for the status.
    pub(crate) nat_keepalive: Option<Duration>,
}

impl Report {
    /// The status now: the fixed part, then every source the daemon has.
    pub(crate) fn current(&self) -> Status {
        let routes = self.backend.routes();
        let table = routes.load();
        let mut s = self.base.clone();
        let now = Instant::now();
        s.peers = table
            .peers()
            .iter()
            .map(|p| peer_status(p, now, self.nat_keepalive))
            .collect();
        s.unattributed = routes.unattributed.snapshot();
        let (refused, refusals) = self.backend.refused();
        s.refused = refused
            .into_iter()
            .map(|r| RefusedStatus {
                name: r.name,
                source: r.source.as_str().into(),
                subnet: r.subnet.to_string(),
                reason: r.why.to_string(),
            })
            .collect();
        s.refusals = refusals;
        s.queues = self
            .queues
            .iter()
            .map(|q| QueueStatus {
                source_port: q.source_port,
                rx_datagrams: q.rx_datagrams.load(Ordering::Relaxed),
                tx_datagrams: q.tx_datagrams.load(Ordering::Relaxed),
                answered: q.answered.load(Ordering::Relaxed),
            })
            .collect();
        s.kernel = self.backend.paths().map(|p| p.kernel_status());
        s.egress = self.backend.paths().map(|p| p.egress_status());
        if let Some(g) = &self.gossip {
            let shared = g.lock().unwrap_or_else(|p| p.into_inner());
            let (members, counters) = gossip_report(&shared);
            s.members = Some(members);
            s.gossip = Some(counters);
            s.public =
                crate::status::reach::PublicStatus::of(&shared.gossip.local_record().learned);
            s.relaying = shared.relay.status();
            s.secrets = Some(gossip_secrets(&shared));
        } else if let Some(c) = self.backend.crypto() {
            let ring = c.keyring();
            s.secrets = Some(
                ring.secrets()
                    .map(|(id, _)| SecretStatus {
                        id: id.to_string(),
                        sealing: id == ring.primary_id(),
                        opened: None,
                    })
                    .collect(),
            );
        }
        if let Some(net) = &self.subnet {
            s.subnet = match *net.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(n) => n.to_string(),
                None => "(waiting for a gossip lease)".into(),
            };
        }
        if let Some(c) = self.backend.crypto() {
            s.cookie_replies_sent = c.cookie_replies.load(Ordering::Relaxed);
            s.refusals_over_source_limit = c.rejected.limited();
        }
        s
    }
}

impl Report {
    /// The whole mesh as this node sees it: its status, and the members' path summaries.
    pub(crate) fn mesh(&self) -> crate::status::Mesh {
        let s = self.current();
        let summaries = match &self.gossip {
            Some(g) => {
                super::membership::summary::held(&g.lock().unwrap_or_else(|p| p.into_inner()))
            }
            None => Vec::new(),
        };
        crate::status::Mesh::build(&s, &summaries, std::time::SystemTime::now())
    }
}

/// One peer as the status shows it, read off its link.
/// `keepalive`: this node's NAT keepalive interval (`None`: off).
pub(crate) fn peer_status(p: &PeerEntry, now: Instant, keepalive: Option<Duration>) -> PeerStatus {
    let cell = p.path();
    PeerStatus {
        name: p.name.clone(),
        endpoint: p.endpoint().to_string(),
        subnet: p.subnet.to_string(),
        vtep_mac: p.mac.to_string(),
        candidates: p
            .candidates()
            .iter()
            .map(|c| format!("{} ({})", c.addr, c.source.text()))
            .collect(),
        mtu: p.mtu(),
        mtu_source: cell
            .as_ref()
            .and_then(|c| c.mtu.as_ref())
            .map_or(crate::paths::mtud::MtuSource::Configured, |m| m.source())
            .as_str()
            .to_string(),
        mtu_confirmed_secs: cell
            .as_ref()
            .and_then(|c| c.mtu.as_ref())
            .and_then(|m| m.confirmed())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs()),
        mtu_searching: cell
            .as_ref()
            .and_then(|c| c.mtu.as_ref())
            .is_some_and(|m| m.searching()),
        mtu_idle: cell
            .as_ref()
            .and_then(|c| c.mtu.as_ref())
            .filter(|m| m.idle(now))
            .map(|m| {
                if m.untouched() {
                    "no traffic yet"
                } else {
                    "no traffic lately"
                }
                .to_string()
            }),
        stats: p.stats.snapshot(),
        wireguard: p.wg.as_deref().map(wireguard_status),
        path: cell.as_ref().map(|c| c.status(now)),
        rtt_us: cell
            .as_ref()
            .and_then(|c| c.rtt)
            .map(|d| d.as_micros() as u64),
        reach: p.wg.is_some().then(|| super::reach::reach(p, keepalive)),
    }
}

/// One peer's WireGuard session, from `meshd_crypto::Session::stats`.
fn wireguard_status(wg: &WgPeer) -> WireguardStatus {
    let st = wg.lock().stats();
    let pair = wg.pair();
    let (forced_handshakes, unknown_index_ignored) = wg.forced_counts();
    WireguardStatus {
        forced_handshakes,
        unknown_index_ignored,
        psk_secret: pair.secret.to_string(),
        psk_agreed: pair.agreed,
        psk_switches: st.psk_switches,
        psk_pending: st.psk_pending,
        retiring: st.retiring,
        public_key: wg.key.to_base64(),
        last_handshake_secs: st.last_handshake.map(|d| d.as_secs_f64()),
        handshakes: st.handshakes,
        rekeys: st.rekeys,
        decrypt_failures: st.decrypt_failures,
        handshake_failures: st.handshake_failures,
        replays: st.replays,
        cookie_replies_sent: st.cookie_replies_sent,
        handshake_rtt_ms: st.handshake_rtt_ms,
        responder_rtt_us: st.responder_rtt.map(|d| d.as_micros() as u64),
    }
}

/// Members with state and seconds in it, and the counters, for `meshd status`.
fn gossip_report(g: &Shared) -> (Vec<MemberStatus>, GossipCounters) {
    let now = Instant::now();
    let members = g
        .gossip
        .members()
        .map(|m| MemberStatus {
            name: m.record.name.clone(),
            state: state_name(m.state).into(),
            since_secs: now.saturating_duration_since(m.since).as_secs(),
            address: m.record.gossip_addr.to_string(),
            subnet: m.record.subnet.map(|c| c.subnet.to_string()),
            held: m.held,
            heard_ms_ago: m
                .heard
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            signing_key: m.record.signer.as_ref().map(meshd_gossip::short_key),
        })
        .collect();
    let c = g.gossip.counters();
    let counters = GossipCounters {
        datagrams_in: c.datagrams_in,
        datagrams_out: c.datagrams_out,
        open_failures: g.open_failures,
        decode_failures: c.decode_failures,
        send_failures: g.send_failures,
        refused: RefusedRecords {
            impostor: c.refused_impostor,
            unsigned: c.refused_unsigned,
            bad_signature: c.refused_bad_signature,
            bad_name: c.refused_bad_name,
            generation: c.refused_generation,
            full: c.refused_full,
        },
        refused_records: c.refused_records(),
        state_requests_refused: c.state_requests_refused,
        transmits_dropped: c.transmits_dropped,
        summary_chunks_in: c.summary_chunks_in,
        summary_chunks_refused: c.summary_chunks_refused + c.summaries_full,
        summary_pulls_refused: c.summary_pulls_refused,
    };
    (members, counters)
}

/// The cluster secrets: which seals, and how many datagrams each opened.
fn gossip_secrets(g: &Shared) -> Vec<SecretStatus> {
    let sealing = g.sealer.sealing_id();
    g.sealer
        .opened()
        .map(|(id, opened)| SecretStatus {
            id: id.to_string(),
            sealing: id == sealing,
            opened: Some(opened),
        })
        .collect()
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}
