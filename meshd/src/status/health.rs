//! How a pair is doing, in one word and a reason: what this node gossips about each peer (its
//! path summary), what the picture colours a half-edge by, and what `meshd ping` names when
//! nothing comes back. One definition, read off a peer's status.

use meshd_gossip::{Health, PathCode, Reason};

use super::PeerStatus;

/// A peer's health as this node sees it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub health: Health,
    pub reason: Reason,
    /// The reason in this node's own words (its path's sentence when it has one).
    pub text: Option<String>,
}

/// The path a peer's packets take, as the wire code (a peer the path manager has not admitted
/// yet is on the userspace path, the floor every node has).
pub fn path_code(p: &PeerStatus) -> PathCode {
    match p.path.as_ref().map(|x| x.path.as_str()) {
        Some("host-gw") => PathCode::HostGw,
        Some("kernel-vxlan") => PathCode::KernelVxlan,
        Some("kernel-wireguard") => PathCode::KernelWireguard,
        Some("userspace") | None => PathCode::Userspace,
        Some(_) => PathCode::Unknown,
    }
}

/// The round trip to a peer: the last probe on its path, else its WireGuard handshake's: as
/// the responder (µs, what a relay has: the NAT'd sides initiate), else as the initiator (ms).
pub fn rtt(p: &PeerStatus) -> Option<std::time::Duration> {
    use std::time::Duration;
    let probe = p.rtt_us.map(Duration::from_micros);
    let w = p.wireguard.as_ref();
    let answered = w
        .and_then(|w| w.responder_rtt_us)
        .map(Duration::from_micros);
    let initiated = w.and_then(|w| w.handshake_rtt_ms);
    probe
        .or(answered)
        .or_else(|| initiated.map(|ms| Duration::from_millis(u64::from(ms))))
}

/// Rank of a path name, best first, as `paths::PathKind` orders them.
fn rank(path: &str) -> u8 {
    match path {
        "host-gw" => 0,
        "kernel-vxlan" => 1,
        "kernel-wireguard" => 2,
        _ => 3,
    }
}

/// How peer `p` is doing; `suspect` when gossip holds it suspect.
pub fn assess(p: &PeerStatus, suspect: bool) -> Assessment {
    let said = |health, reason: Reason, text: Option<&String>| Assessment {
        health,
        reason,
        text: Some(text.cloned().unwrap_or_else(|| reason.as_str().to_owned())),
    };
    let path = p.path.as_ref();
    let why = path.and_then(|x| x.reason.as_ref());
    if let Some(w) = &p.wireguard {
        if !w.psk_agreed {
            return said(Health::Down, Reason::NoSecret, None);
        }
        if w.last_handshake_secs.is_none() {
            // Handshakes happen when there is traffic: none yet says nothing, failures do.
            let health = match w.handshake_failures {
                0 => Health::Unknown,
                _ => Health::Down,
            };
            return said(health, Reason::Handshake, None);
        }
    }
    if let Some(x) = path {
        let here = rank(&x.path);
        if x.probes.iter().any(|t| t.failing && rank(&t.path) == here) {
            return said(Health::Down, Reason::NoFallback, why);
        }
        if let Some(e) = &x.route_error {
            return said(Health::Degraded, Reason::RouteRefused, Some(e));
        }
        if x.probes.iter().any(|t| t.failing && rank(&t.path) < here) {
            return said(Health::Degraded, Reason::ProbesLost, why);
        }
    }
    if suspect {
        return said(Health::Degraded, Reason::Suspect, None);
    }
    let reason = match why.map(String::as_str) {
        None => Reason::None,
        Some(w) if w.starts_with("paths not probed") => Reason::Unprobed,
        Some(w) if w.starts_with("probing") || w.contains("passing probes again") => {
            Reason::Probing
        }
        Some(_) => Reason::NotOffered,
    };
    Assessment {
        health: Health::Ok,
        reason,
        text: why.cloned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::{PathStatus, ProbeStatus, WireguardStatus};

    pub(crate) fn peer(path: &str) -> PeerStatus {
        PeerStatus {
            name: "b".into(),
            endpoint: "198.18.0.2:8472".into(),
            subnet: "10.244.2.0/24".into(),
            vtep_mac: "02:00:00:00:00:02".into(),
            candidates: Vec::new(),
            mtu: 1450,
            mtu_source: "probed".into(),
            mtu_confirmed_secs: Some(2),
            mtu_searching: false,
            mtu_idle: None,
            stats: Default::default(),
            wireguard: None,
            path: Some(PathStatus {
                path: path.into(),
                reason: None,
                since_secs: 3,
                moves: 0,
                probes: Vec::new(),
                route_error: None,
                receives: None,
            }),
            rtt_us: None,
            reach: None,
        }
    }

    fn probe(path: &str, failing: bool) -> ProbeStatus {
        ProbeStatus {
            path: path.into(),
            sent: 10,
            lost: u64::from(failing) * 3,
            failing,
        }
    }

    #[test]
    fn a_working_best_path_is_ok_and_a_fallback_is_degraded_with_its_sentence() {
        assert_eq!(assess(&peer("kernel-vxlan"), false).health, Health::Ok);
        let mut p = peer("userspace");
        let x = p.path.as_mut().unwrap();
        x.reason =
            Some("probes at 1450 B lost on kernel-vxlan since 12:03:04, retry in 10 s".into());
        x.probes = vec![probe("kernel-vxlan", true)];
        let a = assess(&p, false);
        assert_eq!((a.health, a.reason), (Health::Degraded, Reason::ProbesLost));
        assert!(a.text.unwrap().contains("since 12:03:04"));
        // The path in use failing, with nothing below it.
        let mut p = peer("kernel-vxlan");
        p.path.as_mut().unwrap().probes = vec![probe("kernel-vxlan", true)];
        assert_eq!(assess(&p, false).reason, Reason::NoFallback);
        assert_eq!(assess(&p, false).health, Health::Down);
    }

    #[test]
    fn the_round_trip_is_the_probes_else_the_responders_else_the_initiators() {
        let mut p = peer("userspace");
        assert_eq!(rtt(&p), None);
        p.wireguard = Some(WireguardStatus {
            handshake_rtt_ms: Some(3),
            ..Default::default()
        });
        assert_eq!(rtt(&p), Some(std::time::Duration::from_millis(3)));
        // Measured as the responder, to the microsecond: before the initiator's milliseconds.
        p.wireguard.as_mut().unwrap().responder_rtt_us = Some(1_840);
        assert_eq!(rtt(&p), Some(std::time::Duration::from_micros(1_840)));
        p.rtt_us = Some(250);
        assert_eq!(rtt(&p), Some(std::time::Duration::from_micros(250)));
    }

    #[test]
    fn sessions_secrets_routes_and_suspicion_are_named() {
        let mut p = peer("userspace");
        p.wireguard = Some(WireguardStatus {
            psk_agreed: true,
            ..Default::default()
        });
        let a = assess(&p, false);
        assert_eq!((a.health, a.reason), (Health::Unknown, Reason::Handshake));
        assert_eq!(a.text.as_deref(), Some("handshake not completed"));
        p.wireguard.as_mut().unwrap().handshake_failures = 2;
        assert_eq!(assess(&p, false).health, Health::Down);
        p.wireguard.as_mut().unwrap().psk_agreed = false;
        assert_eq!(assess(&p, false).reason, Reason::NoSecret);
        let mut p = peer("kernel-vxlan");
        p.path.as_mut().unwrap().route_error = Some("File exists".into());
        assert_eq!(assess(&p, false).reason, Reason::RouteRefused);
        assert_eq!(assess(&peer("kernel-vxlan"), true).reason, Reason::Suspect);
        let mut p = peer("userspace");
        p.path.as_mut().unwrap().reason =
            Some("kernel vxlan unavailable (Operation not supported)".into());
        let a = assess(&p, false);
        assert_eq!((a.health, a.reason), (Health::Ok, Reason::NotOffered));
    }
}
