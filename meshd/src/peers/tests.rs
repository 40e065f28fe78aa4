#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::claims::Why;
use super::refused::Source;
use super::*;
use meshd_gossip::{ClaimFault, Pool, Settled};

fn peer(name: &str, n: u8, subnet: &str) -> Peer {
    Peer::clear(
        name,
        SocketAddr::from(([198, 18, 0, n], 8472)),
        subnet.parse().unwrap(),
    )
}

fn names(set: &mut PeerSet) -> Vec<String> {
    set.resolve().into_iter().map(|p| p.name.clone()).collect()
}

/// The refusal of `name`, if the last resolve refused it.
fn why(set: &PeerSet, name: &str) -> Option<Why> {
    set.refused()
        .0
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.why)
}

fn explicit(stamp: u64) -> Claim {
    Claim {
        explicit: true,
        stamp,
    }
}

fn picked(stamp: u64) -> Claim {
    Claim {
        explicit: false,
        stamp,
    }
}

/// The guard of a node of 10.244.0.0/16 whose underlay is 198.18.0.0/24.
fn cluster() -> Guard {
    Guard {
        pool: Pool::new("10.244.0.0/16".parse().unwrap(), 24).ok(),
        local: vec!["198.18.0.0/24".parse().unwrap()],
        by_address: false,
    }
}

#[test]
fn statics_win_and_overlapping_members_wait() {
    let mut set = PeerSet::new(vec![peer("s", 9, "10.244.9.0/24")]);
    set.set_guard(cluster());
    assert!(set.upsert_member(peer("a", 1, "10.244.1.0/24")));
    assert!(
        !set.upsert_member(peer("a", 1, "10.244.1.0/24")),
        "no change"
    );
    assert!(
        set.upsert_member(peer("s", 2, "10.244.2.0/24")),
        "same name as a static"
    );
    assert!(
        set.upsert_member(peer("b", 3, "10.244.9.0/25")),
        "inside the static's"
    );
    assert!(set.upsert_member(peer("c", 4, "10.244.4.0/24")));
    assert!(set.set_own_subnet(Some("10.244.4.0/24".parse().unwrap())));
    assert_eq!(names(&mut set), ["s", "a"]);
    assert_eq!(why(&set, "s"), Some(Why::Name));
    // Narrower than a node subnet: not a claim gossip counts (else it would win).
    assert!(matches!(
        why(&set, "b"),
        Some(Why::Fault(ClaimFault::Prefix { .. }))
    ));
    assert_eq!(
        why(&set, "c"),
        Some(Why::Own {
            own: "10.244.4.0/24".parse().unwrap()
        })
    );
    assert!(set.remove_member("c"));
    assert!(!set.remove_member("c"));
    assert!(!set.set_own_subnet(Some("10.244.4.0/24".parse().unwrap())));
    assert!(
        set.upsert_claimed(peer("a", 1, "10.244.1.0/24"), explicit(0)),
        "how it is held is part of the member"
    );
}

/// Overlaps are found whichever side starts first, whatever the prefix lengths, and the
/// narrower subnet is kept: a static /17 waits for the /24s inside it, an explicit /23 for
/// the /24 inside it; a /16 for everyone.
#[test]
fn the_narrower_subnet_is_kept_whatever_the_order() {
    let mut set = PeerSet::new(vec![peer("big", 9, "10.244.128.0/17")]);
    set.upsert_member(peer("a", 1, "10.244.2.0/24"));
    set.upsert_claimed(peer("b", 2, "10.244.2.0/23"), explicit(0));
    set.upsert_member(peer("c", 3, "10.244.3.0/24"));
    set.upsert_member(peer("d", 4, "10.244.200.0/24"));
    set.upsert_claimed(peer("e", 5, "10.244.0.0/16"), explicit(0));
    set.upsert_member(peer("f", 6, "10.244.4.0/24"));
    assert_eq!(names(&mut set), ["a", "c", "d", "f"]);
    let lost = |to: &str, theirs: &str| Why::Lost {
        to: to.into(),
        theirs: theirs.parse().unwrap(),
        settled: Settled::Narrower,
    };
    assert_eq!(why(&set, "big"), Some(lost("d", "10.244.200.0/24")));
    let b = why(&set, "b").unwrap();
    assert!(
        b == lost("a", "10.244.2.0/24") || b == lost("c", "10.244.3.0/24"),
        "{b:?}"
    );
    assert!(matches!(why(&set, "e"), Some(Why::Lost { .. })));
    // Once the /24s inside go, the wide ones are routed.
    set.remove_member("d");
    assert_eq!(names(&mut set), ["big", "a", "c", "f"]);
    set.remove_member("a");
    set.remove_member("c");
    assert_eq!(names(&mut set), ["big", "b", "f"]);
}

/// At equal size: a static peer, then an explicit claim, then the older, then the lower name;
/// the same order gossip settles by, named in the refusal.
#[test]
fn equal_subnets_are_settled_as_gossip_settles_them() {
    let mut set = PeerSet::new(Vec::new());
    set.upsert_claimed(peer("a", 1, "10.244.5.0/24"), picked(7));
    set.upsert_claimed(peer("b", 2, "10.244.5.0/24"), picked(3));
    assert_eq!(names(&mut set), ["b"]);
    assert!(matches!(
        why(&set, "a"),
        Some(Why::Lost {
            settled: Settled::Older,
            ..
        })
    ));
    set.upsert_claimed(peer("z", 3, "10.244.5.0/24"), explicit(99));
    assert_eq!(names(&mut set), ["z"]);
    assert!(matches!(
        why(&set, "b"),
        Some(Why::Lost {
            settled: Settled::Explicit,
            ..
        })
    ));
    set.statics.push(peer("s", 9, "10.244.5.0/24"));
    assert_eq!(names(&mut set), ["s"]);
    assert!(matches!(
        why(&set, "z"),
        Some(Why::Lost {
            settled: Settled::Reserved,
            ..
        })
    ));
    let mut tie = PeerSet::new(Vec::new());
    tie.upsert_claimed(peer("y", 1, "10.244.5.0/24"), picked(3));
    tie.upsert_claimed(peer("x", 2, "10.244.5.0/24"), picked(3));
    assert_eq!(names(&mut tie), ["x"]);
    assert!(matches!(
        why(&tie, "y"),
        Some(Why::Lost {
            settled: Settled::Name,
            ..
        })
    ));
}

/// The repro, at the peer set: a member claiming the underlay, and one claiming a
/// subnet outside the cluster, are refused and named; the good members are routed.
#[test]
fn claims_outside_the_cluster_or_on_the_underlay_are_refused() {
    let mut set = PeerSet::new(Vec::new());
    set.set_guard(cluster());
    set.set_own_subnet(Some("10.244.1.0/24".parse().unwrap()));
    set.upsert_claimed(peer("h3", 3, "198.18.0.0/24"), explicit(0));
    set.upsert_member(peer("h2", 2, "10.244.2.0/24"));
    set.upsert_claimed(peer("odd", 4, "10.244.7.0/25"), explicit(0));
    set.upsert_claimed(peer("ahead", 5, "10.244.8.0/24"), picked(u64::MAX));
    assert_eq!(names(&mut set), ["h2"]);
    assert!(matches!(
        why(&set, "h3"),
        Some(Why::Fault(ClaimFault::OutsideCluster { .. }))
    ));
    assert!(matches!(
        why(&set, "odd"),
        Some(Why::Fault(ClaimFault::Prefix { .. }))
    ));
    assert!(matches!(
        why(&set, "ahead"),
        Some(Why::Fault(ClaimFault::StampAhead { .. }))
    ));
    let (refused, total) = set.refused();
    assert_eq!(total, 3);
    assert!(refused.iter().all(|r| r.source == Source::Member));
    // A refused claim blocks nothing: a good member on the /24 the /25 sat in is routed.
    set.upsert_member(peer("h4", 6, "10.244.7.0/24"));
    assert_eq!(names(&mut set), ["h2", "h4"]);
    // A static peer on the underlay is refused too.
    set.statics.push(peer("s", 9, "10.244.0.0/16"));
    set.statics.push(peer("t", 8, "10.244.200.0/24"));
    assert_eq!(names(&mut set), ["t", "h2", "h4"]);
    assert!(matches!(
        why(&set, "s"),
        Some(Why::Fault(ClaimFault::TooLarge { .. }))
    ));
}

/// Cleartext knows a sender by its underlay address alone: of two peers at one address the
/// one with the lower subnet is routed (as the kernel path's source check keeps), whatever
/// the order they came in, and the other is refused naming it. Encrypted, both are routed.
#[test]
fn cleartext_peers_sharing_an_address_keep_the_lower_subnet() {
    for by_address in [true, false] {
        for order in [["a", "b"], ["b", "a"]] {
            let mut set = PeerSet::new(Vec::new());
            set.set_guard(Guard {
                by_address,
                ..cluster()
            });
            for name in order {
                let subnet = if name == "a" {
                    "10.244.3.0/24"
                } else {
                    "10.244.2.0/24"
                };
                set.upsert_member(peer(name, 7, subnet));
            }
            set.upsert_member(peer("c", 8, "10.244.4.0/24"));
            if by_address {
                assert_eq!(names(&mut set), ["b", "c"], "{order:?}");
                assert!(
                    matches!(why(&set, "a"), Some(Why::SharedAddress { ref with, .. }) if with == "b"),
                    "{order:?}"
                );
            } else {
                assert_eq!(names(&mut set), ["a", "b", "c"], "{order:?}");
            }
        }
    }
}
