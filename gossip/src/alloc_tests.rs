#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::config::{Config, ConfigError};
use crate::record::MAX_RESERVED;
use crate::sim::Sim;

fn run_past_claim_delay(g: &mut Gossip, t0: Instant) {
    let mut now = t0;
    while now < t0 + g.config.claim_delay + g.config.tick {
        now = g.poll_timeout().unwrap();
        g.handle_timeout(now);
    }
}

#[test]
fn only_reservations_inside_the_cluster_are_published_and_their_number_is_bounded() {
    let now = Instant::now();
    let inside: Subnet = "10.244.9.0/25".parse().unwrap();
    let around: Subnet = "10.0.0.0/8".parse().unwrap();
    let whole = Subnet::DEFAULT_CLUSTER_CIDR;
    let mut local = Sim::local_node(0, SubnetRequest::Auto);
    local.reserved = vec![
        "10.99.0.0/24".parse().unwrap(),
        inside,
        around,
        whole,
        inside,
    ];
    let g = Gossip::new(Config::default(), local.clone(), 1, now).unwrap();
    assert_eq!(g.local_record().reserved, [inside]);
    local.reserved = (0..=MAX_RESERVED)
        .map(|i| Subnet::new([10, 244, i as u8, 0].into(), 24).unwrap())
        .collect();
    let err = Gossip::new(Config::default(), local, 1, now).err();
    assert_eq!(err, Some(ConfigError::TooManyReserved(MAX_RESERVED + 1)));
}

/// A static peer added on the subnet this node held: the lease is given up (and the
/// conflict reported) and a lone node picks around the reservation.
#[test]
fn a_persisted_lease_on_our_own_static_peer_is_given_up() {
    let t0 = Instant::now();
    let cfg = Config::default();
    let pool = cfg.pool().unwrap();
    // The slot node-0 picks first, so that a pick that ignored the reservation lands on it.
    let first = pool.pick("node-0", |_| false).unwrap();
    let mut local = Sim::local_node(
        0,
        SubnetRequest::Persisted(Lease {
            subnet: first,
            stamp: 3,
        }),
    );
    local.reserved = vec![first];
    let mut g = Gossip::new(cfg, local, 1, t0).unwrap();
    assert_eq!(g.lease(), None);
    run_past_claim_delay(&mut g, t0);
    let lease = g.lease().unwrap();
    assert!(!lease.subnet.overlaps(&first), "{}", lease.subnet);
    let events: Vec<Event> = std::iter::from_fn(|| g.poll_event()).collect();
    let conflict = SubnetConflict {
        subnet: first,
        theirs: first,
        other: "node-0".into(),
        won: false,
        settled: Settled::Reserved,
        kept: false,
        explicit: false,
        reserved: true,
    };
    assert!(
        events.contains(&Event::SubnetConflict(conflict)),
        "{events:?}"
    );
}

use crate::subnet::test_claim as claim;

/// A stamp of u64::MAX from the wire (what `apply_record` hands `observe_stamp` from every
/// record) moves no clock and makes no addition overflow; a clock pushed to the bound stays
/// there.
#[test]
fn stamps_from_the_wire_are_bounded() {
    let t0 = Instant::now();
    let mut g = Gossip::new(
        Config::default(),
        Sim::local_node(0, SubnetRequest::Auto),
        1,
        t0,
    )
    .unwrap();
    g.observe_stamp(u64::MAX);
    assert_eq!(g.lamport, 0);
    run_past_claim_delay(&mut g, t0);
    assert_eq!(g.lease().unwrap().stamp, 1);
    g.observe_stamp(MAX_STAMP);
    assert_eq!(g.lamport, MAX_STAMP);
    assert_eq!(g.next_stamp(), MAX_STAMP);
    assert_eq!(g.next_stamp(), MAX_STAMP);
    // Its claim is one no node counts.
    let ahead = claim("10.244.9.0/24", false, MAX_STAMP + 1);
    assert!(g.pool().check(&ahead).is_err());
    // A lease file from before the bound cannot push our own claim beyond it.
    let mut local = Sim::local_node(1, SubnetRequest::Auto);
    local.subnet = SubnetRequest::Persisted(Lease {
        subnet: "10.244.4.0/24".parse().unwrap(),
        stamp: u64::MAX,
    });
    let g = Gossip::new(Config::default(), local, 1, t0).unwrap();
    assert_eq!(g.lease().unwrap().stamp, MAX_STAMP);
}
