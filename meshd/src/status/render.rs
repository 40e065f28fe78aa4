//! `meshd status` as text: the node, its tiers, one line per peer (and its WireGuard session),
//! the drops nobody owns, and the gossip members.

use super::Status;
use crate::stats::PeerStatsSnapshot;

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
        "address     {}{}   subnet {}   vtep {}",
        s.address,
        s.address_source
            .as_deref()
            .map(|how| format!(" ({how})"))
            .unwrap_or_default(),
        s.subnet,
        s.vtep_mac
    );
    if let Some(p) = &s.public {
        let _ = writeln!(
            o,
            "public      {} (as members observe this node behind its NAT; mapping {})",
            p.endpoints.join(", "),
            p.mapping
        );
    }
    let _ = writeln!(o, "encryption  {}   mtu {}", s.encryption, s.mtu);
    for r in &s.relaying {
        o.push_str(&r.render());
    }
    if let Some(k) = &s.public_key {
        let _ = writeln!(
            o,
            "public key  {k}   cookie replies sent {}   refusals over a source's limit {}",
            s.cookie_replies_sent, s.refusals_over_source_limit
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
    let _ = writeln!(o, "  UDP flows/peer    {}", s.tiers.udp_flows);
    for (i, q) in s.queues.iter().enumerate() {
        let _ = writeln!(
            o,
            "  queue {i}           from UDP {}, datagrams rx {} tx {} ({} answers sent by RX)",
            q.source_port, q.rx_datagrams, q.tx_datagrams, q.answered
        );
    }
    if let Some(k) = &s.kernel {
        let _ = writeln!(o, "datapath    {}   path moves {}", k.datapath, k.moves);
        let _ = writeln!(o, "  kernel vxlan      {}", k.vxlan);
        let _ = writeln!(o, "  kernel wireguard  {}", k.wireguard);
        let _ = writeln!(o, "  host-gw           {}", k.host_gw);
        if !k.adopted.is_empty() {
            let _ = writeln!(o, "  adopted           {}", k.adopted.join(", "));
        }
    }
    if let Some(e) = &s.egress {
        e.render(&mut o);
    }
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
        let confirmed = p
            .mtu_confirmed_secs
            .map(|s| format!(", confirmed {s} s ago"))
            .unwrap_or_default();
        let searching = if p.mtu_searching { ", searching" } else { "" };
        let idle = p
            .mtu_idle
            .as_ref()
            .map(|why| format!("; not probed: {why}"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "  mtu {} ({}{confirmed}{searching}{idle})",
            p.mtu, p.mtu_source
        );
        if let Some(path) = &p.path {
            let probes: Vec<String> = path
                .probes
                .iter()
                .map(|x| format!("{} {}/{} lost", x.path, x.lost, x.sent))
                .collect();
            let rtt = p
                .rtt_us
                .map(|us| format!(", rtt {:.2} ms", us as f64 / 1000.0))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  path {path}  (for {} s, {} moves{rtt}{}{})",
                path.since_secs,
                path.moves,
                if probes.is_empty() { "" } else { "; probes " },
                probes.join(", ")
            );
            if let Some(r) = &path.receives {
                let _ = writeln!(o, "  receiver: {r}");
            }
        }
        if let Some(r) = &p.reach {
            o.push_str(&r.render());
        }
        if let Some(w) = &p.wireguard {
            let age = match w.last_handshake_secs {
                Some(secs) => format!("{secs:.0} s ago"),
                None => "never".into(),
            };
            let mut rtts = Vec::new();
            if let Some(ms) = w.handshake_rtt_ms {
                rtts.push(format!("{ms} ms as initiator"));
            }
            if let Some(us) = w.responder_rtt_us {
                rtts.push(format!("{:.2} ms as responder", us as f64 / 1000.0));
            }
            let age = match rtts.is_empty() {
                true => age,
                false => format!("{age} (rtt {})", rtts.join(", ")),
            };
            let _ = writeln!(
                o,
                "  wireguard {}  psk from {}{}{}  handshake {age}  handshakes {}  rekeys {}  decrypt failures {}  handshake failures {}  replays {}  cookie replies sent {}  forced handshakes {}  unknown-index data ignored {}",
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
                w.cookie_replies_sent,
                w.forced_handshakes,
                w.unknown_index_ignored
            );
        }
    }
    let _ = writeln!(o, "unattributed drops: {}", drops(&s.unattributed));
    if !s.refused.is_empty() || s.refusals > 0 {
        let _ = writeln!(
            o,
            "refused     {} now, {} refusals since start",
            s.refused.len(),
            s.refusals
        );
        for r in &s.refused {
            let _ = writeln!(o, "  {} {} ({}): {}", r.source, r.name, r.subnet, r.reason);
        }
    }
    if let Some(g) = &s.gossip {
        let _ = writeln!(
            o,
            "gossip      datagrams in {}  out {}  open failures {}  decode failures {}  send failures {}",
            g.datagrams_in, g.datagrams_out, g.open_failures, g.decode_failures, g.send_failures
        );
        let r = &g.refused;
        let _ = writeln!(
            o,
            "  refused records {}  (impostor {}  unsigned {}  bad signature {}  bad name {}  generation ahead {}  table full {})  state requests refused {}",
            g.refused_records,
            r.impostor,
            r.unsigned,
            r.bad_signature,
            r.bad_name,
            r.generation,
            r.full,
            g.state_requests_refused
        );
        let _ = writeln!(
            o,
            "  path summaries: chunks taken {}  refused {}  pulls of ours refused {}",
            g.summary_chunks_in, g.summary_chunks_refused, g.summary_pulls_refused
        );
    }
    if let Some(members) = &s.members {
        let _ = writeln!(
            o,
            "{:<16} {:<8} {:>8}  {:<22} {:<18} {:<16}",
            "member", "state", "since s", "gossip address", "subnet", "signing key"
        );
        for m in members {
            let held = match (m.held, m.heard_ms_ago) {
                (true, Some(ms)) => format!("  held up by its traffic ({ms} ms ago)"),
                (true, None) => "  held up by its traffic".into(),
                (false, _) => String::new(),
            };
            let _ = writeln!(
                o,
                "{:<16} {:<8} {:>8}  {:<22} {:<18} {:<16}{held}",
                m.name,
                m.state,
                m.since_secs,
                m.address,
                m.subnet.as_deref().unwrap_or("-"),
                m.signing_key.as_deref().unwrap_or("(unsigned)")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::WireguardStatus;

    #[test]
    fn a_sessions_handshake_round_trips_are_shown_as_initiator_and_as_responder() {
        let mut p = crate::status::health::tests::peer("userspace");
        p.wireguard = Some(WireguardStatus {
            last_handshake_secs: Some(3.0),
            handshake_rtt_ms: Some(1),
            responder_rtt_us: Some(420),
            ..Default::default()
        });
        let text = render(&crate::status::mesh::tests::status(vec![p], &[]));
        let line = "handshake 3 s ago (rtt 1 ms as initiator, 0.42 ms as responder)";
        assert!(text.contains(line), "{text}");
    }
}
