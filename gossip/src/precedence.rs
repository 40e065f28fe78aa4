//! The one order every node settles overlapping holds by (claims and static peers'
//! subnets): the narrower range first, then the kind, then the older stamp, then the lower
//! name. Gossip's conflict settling ([`crate::alloc`]) and the daemon's peer set use it, so a
//! node routes what gossip keeps.

use std::cmp::Reverse;

use crate::record::{Subnet, SubnetClaim};

/// The kind of a hold on addresses, strongest first at equal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HoldKind {
    /// A static peer's subnet, routed by the node whose config lists the peer.
    Reserved,
    /// A subnet an operator configured (`subnet = ...`).
    Explicit,
    /// A subnet gossip picked.
    Picked,
}

/// Where a hold stands against one it overlaps: the lower wins, and every node computes the
/// same order from what the records say. Compared field by field: the narrower range, then
/// the kind, then the older stamp, then the lower name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence<'a> {
    narrower: Reverse<u8>,
    kind: HoldKind,
    stamp: u64,
    name: &'a str,
}

/// Why one hold beats another it overlaps, for logs and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Settled {
    /// Its range is narrower: a wider hold never displaces the ones inside it.
    Narrower,
    /// Equal ranges: a static peer's subnet beats a claim.
    Reserved,
    /// Equal ranges: an explicit claim beats a picked one.
    Explicit,
    /// Equal ranges and kinds: the older (lower) stamp wins.
    Older,
    /// All else equal: the lower node name wins.
    Name,
}

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Settled::Narrower => "the narrower subnet wins",
            Settled::Reserved => "a static peer's subnet wins over an equal claim",
            Settled::Explicit => "a configured subnet wins over a picked one",
            Settled::Older => "the older claim wins",
            Settled::Name => "the lower node name wins",
        })
    }
}

impl<'a> Precedence<'a> {
    /// `name`'s claim.
    pub fn claim(claim: &SubnetClaim, name: &'a str) -> Self {
        let kind = if claim.explicit {
            HoldKind::Explicit
        } else {
            HoldKind::Picked
        };
        Precedence {
            narrower: Reverse(claim.subnet.prefix()),
            kind,
            stamp: claim.stamp,
            name,
        }
    }

    /// A static peer's `subnet`, reserved by node `name`.
    pub fn reserved(subnet: &Subnet, name: &'a str) -> Self {
        Precedence {
            narrower: Reverse(subnet.prefix()),
            kind: HoldKind::Reserved,
            stamp: 0,
            name,
        }
    }

    /// Whether this hold wins against `other` (which it overlaps).
    pub fn beats(&self, other: &Precedence<'_>) -> bool {
        self < other
    }

    /// Why the winner of the two wins.
    pub fn settled(&self, other: &Precedence<'_>) -> Settled {
        let (win, lose) = if self.beats(other) {
            (self, other)
        } else {
            (other, self)
        };
        if win.narrower != lose.narrower {
            Settled::Narrower
        } else if win.kind != lose.kind {
            match win.kind {
                HoldKind::Reserved => Settled::Reserved,
                _ => Settled::Explicit,
            }
        } else if win.stamp != lose.stamp {
            Settled::Older
        } else {
            Settled::Name
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    use crate::subnet::test_claim as claim;

    /// The narrower range first, then reservation, explicit, picked; then the stamp; then
    /// the name. Equal subnets keep the order claims always had.
    #[test]
    fn precedence_is_narrower_then_kind_then_age_then_name() {
        let slash24 = claim("10.244.2.0/24", false, 9);
        let wide = claim("10.244.2.0/23", true, 0);
        let (a, b) = (
            Precedence::claim(&slash24, "b"),
            Precedence::claim(&wide, "a"),
        );
        assert!(a.beats(&b) && !b.beats(&a));
        assert_eq!(a.settled(&b), Settled::Narrower);
        assert_eq!(b.settled(&a), Settled::Narrower);
        let r17 = Precedence::reserved(&"10.244.0.0/17".parse().unwrap(), "s");
        assert!(
            a.beats(&r17),
            "a static /17 never displaces a /24 inside it"
        );
        let r24 = Precedence::reserved(&slash24.subnet, "z");
        assert!(r24.beats(&a));
        assert_eq!(r24.settled(&a), Settled::Reserved);
        let pinned = claim("10.244.2.0/24", true, 99);
        assert!(Precedence::claim(&pinned, "z").beats(&a));
        assert_eq!(
            Precedence::claim(&pinned, "z").settled(&a),
            Settled::Explicit
        );
        let older = claim("10.244.2.0/24", false, 1);
        assert_eq!(Precedence::claim(&older, "z").settled(&a), Settled::Older);
        assert!(Precedence::claim(&slash24, "a").beats(&a));
        assert_eq!(Precedence::claim(&slash24, "a").settled(&a), Settled::Name);
        assert!(slash24.beats("b", &wide, "a"), "SubnetClaim::beats agrees");
    }
}
