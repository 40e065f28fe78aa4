#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::record::SubnetRequest;
use crate::sim::Sim;

pub(crate) fn lone(now: Instant) -> Gossip {
    Gossip::new(
        Config::default(),
        Sim::local_node(0, SubnetRequest::Auto),
        1,
        now,
    )
    .unwrap()
}

#[test]
fn garbage_and_unknown_kinds_are_counted_not_parsed() {
    let now = Instant::now();
    let mut g = lone(now);
    let from = "10.9.9.9:7946".parse().unwrap();
    g.handle_datagram(from, &[0xff, 0xff, 0xff], now);
    let mut future = Vec::new();
    wire::encode_envelope(Kind::Swim, b"x", &mut future);
    future[1] = 0x63; // kind 99
    g.handle_datagram(from, &future, now);
    let c = g.counters();
    assert_eq!(
        (c.datagrams_in, c.decode_failures, c.unknown_kinds),
        (2, 1, 1)
    );
}

#[test]
fn a_lone_first_node_claims_after_the_delay() {
    let t0 = Instant::now();
    let mut g = lone(t0);
    assert!(g.lease().is_none());
    let mut now = t0;
    while now < t0 + g.config.claim_delay + g.config.tick {
        now = g.poll_timeout().unwrap();
        g.handle_timeout(now);
    }
    let lease = g.lease().unwrap();
    assert!(g.pool().holds(&lease.subnet));
    let events: Vec<Event> = std::iter::from_fn(|| g.poll_event()).collect();
    assert!(events.contains(&Event::SubnetAssigned(lease)));
}

#[test]
fn explicit_and_persisted_subnets_are_held_at_once() {
    let now = Instant::now();
    let s: Subnet = "10.244.77.0/24".parse().unwrap();
    let mut local = Sim::local_node(0, SubnetRequest::Explicit(s));
    let g = Gossip::new(Config::default(), local.clone(), 1, now).unwrap();
    assert_eq!(g.local_record().subnet.unwrap().subnet, s);
    assert!(g.local_record().subnet.unwrap().explicit);
    local.subnet = SubnetRequest::Persisted(Lease {
        subnet: s,
        stamp: 12,
    });
    let g = Gossip::new(Config::default(), local, 1, now).unwrap();
    assert_eq!(
        g.lease(),
        Some(Lease {
            subnet: s,
            stamp: 12
        })
    );
}

#[test]
fn an_oversized_local_record_is_refused() {
    let mut local = Sim::local_node(0, SubnetRequest::Auto);
    local.endpoints = vec![local.gossip_addr; crate::record::MAX_ENDPOINTS + 1];
    let err = Gossip::new(Config::default(), local, 1, Instant::now()).err();
    assert!(matches!(err, Some(ConfigError::LocalNode(_))));
    // The cause is in the message, and so not also a source (a chain would repeat it).
    let err = err.unwrap();
    assert!(err.to_string().contains("refused: record"), "{err}");
    assert!(std::error::Error::source(&err).is_none());
}
