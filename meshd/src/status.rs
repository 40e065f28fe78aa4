//! The status API: a Unix socket under the run directory that answers every connection with one
//! JSON document and closes. `meshd status` is its client; the CNI plugin reads the
//! companion file `network.json` instead, so it never needs the daemon to answer.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::datapath::wg::WgPeer;
use crate::datapath::TierReport;
use crate::routes::Routes;
use crate::stats::PeerStatsSnapshot;

pub use crate::runfiles::SOCKET_NAME;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub pid: u32,
    pub address: String,
    pub subnet: String,
    pub vtep_mac: String,
    pub encryption: String,
    /// This node's WireGuard public key, in encrypted mode.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Cookie replies the shared handshake rate limiter sent (before a peer was identified).
    #[serde(default)]
    pub cookie_replies_sent: u64,
    pub mtu: u16,
    pub tiers: TierReport,
    pub peers: Vec<PeerStatus>,
    /// Drops that belong to no peer: datagrams from unknown sources, packets with no route.
    pub unattributed: PeerStatsSnapshot,
    /// Gossip members other than this node, when gossip runs.
    #[serde(default)]
    pub members: Option<Vec<MemberStatus>>,
    /// Gossip traffic and error counters, when gossip runs.
    #[serde(default)]
    pub gossip: Option<GossipCounters>,
    /// The cluster secrets held, primary first, when any is used.
    #[serde(default)]
    pub secrets: Option<Vec<SecretStatus>>,
}

/// One cluster secret of the node's keyring, by its public id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretStatus {
    pub id: String,
    /// Seals what this node sends (the primary).
    pub sealing: bool,
    /// Gossip datagrams it opened since it was loaded (`None` without gossip). A retired
    /// secret whose count stops growing is no longer used by any node.
    pub opened: Option<u64>,
}

/// One gossip member as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    /// alive, suspect, down or left.
    pub state: String,
    /// Seconds since this node saw it enter that state.
    pub since_secs: u64,
    /// Its gossip address.
    pub address: String,
    /// The subnet it claims, once it holds one.
    pub subnet: Option<String>,
}

/// Gossip datagrams in and out, and what was dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GossipCounters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams that did not open (wrong cluster secret, tampered, replayed, too old): never parsed.
    pub open_failures: u64,
    /// Opened datagrams the gossip codec refused.
    pub decode_failures: u64,
    pub send_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub endpoint: String,
    pub subnet: String,
    pub vtep_mac: String,
    #[serde(flatten)]
    pub stats: PeerStatsSnapshot,
    /// The WireGuard session, in encrypted mode.
    #[serde(default)]
    pub wireguard: Option<WireguardStatus>,
}

/// One peer's WireGuard session, from `meshd_crypto::Session::stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WireguardStatus {
    pub public_key: String,
    /// Seconds since the current session's handshake; `None` without a session.
    pub last_handshake_secs: Option<f64>,
    pub handshakes: u64,
    pub rekeys: u64,
    pub decrypt_failures: u64,
    pub handshake_failures: u64,
    pub replays: u64,
    /// Cookie replies this session sent (the shared limiter's are counted on the node).
    pub cookie_replies_sent: u64,
    pub handshake_rtt_ms: Option<u32>,
    /// Id of the cluster secret the pair's preshared key comes from.
    #[serde(default)]
    pub psk_secret: String,
    /// False when the peer holds none of our secrets: handshakes fail until that is fixed.
    #[serde(default)]
    pub psk_agreed: bool,
    /// Preshared key changes (cluster secret rotations) this session went through.
    #[serde(default)]
    pub psk_switches: u64,
    /// Traffic still rides the session under the previous preshared key: the handshake under
    /// the new one has not completed (the peer has not switched yet).
    #[serde(default)]
    pub psk_pending: bool,
    /// A session under the previous preshared key is still kept (for packets in flight).
    #[serde(default)]
    pub retiring: bool,
}

impl WireguardStatus {
    fn of(wg: &WgPeer) -> Self {
        let st = wg.lock().stats();
        let pair = wg.pair();
        WireguardStatus {
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
        }
    }
}

/// The fixed part of the status; peers and counters are read fresh on every request.
pub struct StatusSource {
    pub base: Status,
    pub routes: Arc<Routes>,
    /// Gossip state, when gossip runs.
    pub gossip: Option<Arc<std::sync::Mutex<crate::gossip::Shared>>>,
    /// The node's current subnet, when gossip assigns it.
    pub subnet: Option<Arc<std::sync::Mutex<Option<ipnet::Ipv4Net>>>>,
}

impl StatusSource {
    pub fn current(&self) -> Status {
        let table = self.routes.load();
        let mut s = self.base.clone();
        s.peers = table
            .peers()
            .iter()
            .map(|p| PeerStatus {
                name: p.name.clone(),
                endpoint: p.endpoint.to_string(),
                subnet: p.subnet.to_string(),
                vtep_mac: p.mac.to_string(),
                stats: p.stats.snapshot(),
                wireguard: p.wg.as_deref().map(WireguardStatus::of),
            })
            .collect();
        s.unattributed = self.routes.unattributed.snapshot();
        if let Some(g) = &self.gossip {
            let shared = g.lock().unwrap_or_else(|p| p.into_inner());
            let (members, counters) = shared.report();
            s.members = Some(members);
            s.gossip = Some(counters);
            s.secrets = Some(shared.secrets());
        } else if let Some(c) = self.routes.crypto() {
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
        if let Some(c) = self.routes.crypto() {
            s.cookie_replies_sent = c.cookie_replies.load(std::sync::atomic::Ordering::Relaxed);
        }
        s
    }
}

/// Serve status requests until the task is dropped.
pub async fn serve(path: PathBuf, source: Arc<StatusSource>) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the status socket {}", path.display()))?;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = serde_json::to_vec_pretty(&source.current()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Ask the daemon whose run directory is `run_dir` for its status.
pub fn query(run_dir: &Path) -> Result<Status> {
    let path = run_dir.join(SOCKET_NAME);
    let mut stream = UnixStream::connect(&path)
        .with_context(|| format!("connecting to {} (is meshd running?)", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .context("reading the status")?;
    serde_json::from_str(&body).context("decoding the status")
}

/// Human-readable rendering for `meshd status`.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node        {} (pid {}, meshd {})",
        s.node, s.pid, s.version
    );
    let _ = writeln!(
        o,
        "address     {}   subnet {}   vtep {}",
        s.address, s.subnet, s.vtep_mac
    );
    let _ = writeln!(o, "encryption  {}   mtu {}", s.encryption, s.mtu);
    if let Some(k) = &s.public_key {
        let _ = writeln!(
            o,
            "public key  {k}   cookie replies sent {}",
            s.cookie_replies_sent
        );
    }
    if let Some(secrets) = &s.secrets {
        let list: Vec<String> = secrets
            .iter()
            .map(|k| {
                let role = if k.sealing { "sealing" } else { "accepted" };
                match k.opened {
                    Some(n) => format!("{} ({role}, opened {n})", k.id),
                    None => format!("{} ({role})", k.id),
                }
            })
            .collect();
        let _ = writeln!(o, "secrets     {}", list.join(", "));
    }
    let _ = writeln!(o, "tiers       queues {}", s.tiers.queues);
    let _ = writeln!(o, "  multi-queue TUN   {}", s.tiers.multi_queue);
    let _ = writeln!(o, "  TUN offload       {}", s.tiers.tun_offload);
    let _ = writeln!(o, "  UDP GSO           {}", s.tiers.udp_gso);
    let _ = writeln!(o, "  UDP GRO           {}", s.tiers.udp_gro);
    let _ = writeln!(
        o,
        "{:<16} {:<22} {:<16} {:>10} {:>14} {:>10} {:>14}  drops",
        "peer", "endpoint", "subnet", "tx pkts", "tx bytes", "rx pkts", "rx bytes"
    );
    for p in &s.peers {
        let _ = writeln!(
            o,
            "{:<16} {:<22} {:<16} {:>10} {:>14} {:>10} {:>14}  {}",
            p.name,
            p.endpoint,
            p.subnet,
            p.stats.tx_packets,
            p.stats.tx_bytes,
            p.stats.rx_packets,
            p.stats.rx_bytes,
            drops(&p.stats)
        );
        if let Some(w) = &p.wireguard {
            let age = match w.last_handshake_secs {
                Some(secs) => format!("{secs:.0} s ago"),
                None => "never".into(),
            };
            let _ = writeln!(
                o,
                "  wireguard {}  psk from {}{}{}  handshake {age}  handshakes {}  rekeys {}  decrypt failures {}  handshake failures {}  replays {}  cookie replies sent {}",
                w.public_key,
                w.psk_secret,
                if w.psk_agreed { "" } else { " (NO SECRET IN COMMON)" },
                if w.psk_pending {
                    " (switching: traffic on the previous key)"
                } else {
                    ""
                },
                w.handshakes,
                w.rekeys,
                w.decrypt_failures,
                w.handshake_failures,
                w.replays,
                w.cookie_replies_sent
            );
        }
    }
    let _ = writeln!(o, "unattributed drops: {}", drops(&s.unattributed));
    if let Some(g) = &s.gossip {
        let _ = writeln!(
            o,
            "gossip      datagrams in {}  out {}  open failures {}  decode failures {}  send failures {}",
            g.datagrams_in, g.datagrams_out, g.open_failures, g.decode_failures, g.send_failures
        );
    }
    if let Some(members) = &s.members {
        let _ = writeln!(
            o,
            "{:<16} {:<8} {:>8}  {:<22} subnet",
            "member", "state", "since s", "gossip address"
        );
        for m in members {
            let _ = writeln!(
                o,
                "{:<16} {:<8} {:>8}  {:<22} {}",
                m.name,
                m.state,
                m.since_secs,
                m.address,
                m.subnet.as_deref().unwrap_or("-")
            );
        }
    }
    o
}

fn drops(s: &PeerStatsSnapshot) -> String {
    if s.drops.is_empty() {
        return "-".into();
    }
    s.drops
        .iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
