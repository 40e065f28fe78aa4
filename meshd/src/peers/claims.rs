//! What every subnet this node would route must be: inside the cluster and of a size gossip
//! counts (the `meshd-gossip` pool's rule, [`Pool::check`], so both layers refuse the same
//! claims), clear of this node's own networks, and clear of the underlay endpoints it
//! reaches peers at. A subnet that breaks one of these is refused, never routed: installing
//! it would send this node's underlay traffic into the overlay.
//!
//! The checks are on what one peer says of itself. A member's word counts for its own claim
//! and endpoints only: its endpoints never make another member's claim refused (what it
//! could not otherwise do to that member, it cannot do by lying about itself).

use ipnet::Ipv4Net;
use meshd_gossip::{ClaimFault, Pool, Settled, Subnet, SubnetClaim};
use std::net::{IpAddr, Ipv4Addr};

use super::Peer;

/// How a member holds its subnet, as its gossip record says: what the settling order needs
/// besides the subnet itself (which is the peer's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim {
    /// Configured by its operator rather than picked by gossip.
    pub explicit: bool,
    /// Its Lamport stamp: lower is older.
    pub stamp: u64,
}

/// What this node checks subnets against: the cluster and its own networks. Read once at
/// start ([`crate::daemon::subnet::guard`]); the default refuses nothing (tests, benches).
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    /// The cluster CIDR cut into node subnets.
    pub(crate) pool: Option<Pool>,
    /// The networks of the addresses on this node's interfaces, bar the pod bridge's (this
    /// node's own subnet, which the settling order covers), and its underlay address.
    pub(crate) local: Vec<Ipv4Net>,
    /// Senders are told apart by underlay address alone (cleartext VXLAN: a kernel device
    /// picks its source port per flow), so two peers cannot share one.
    pub(crate) by_address: bool,
}

/// Why a peer's subnet is not routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Why {
    /// Gossip's rule: outside the cluster, the wrong size, an implausible stamp.
    Fault(ClaimFault),
    /// It shares addresses with a network on this node's interfaces.
    Local { network: Ipv4Net },
    /// It contains an underlay endpoint: the peer's own, or a static peer's.
    Endpoint { addr: Ipv4Addr, of: String },
    /// It overlaps this node's own subnet.
    Own { own: Ipv4Net },
    /// It overlaps a subnet routed to `to`, whose hold wins.
    Lost {
        to: String,
        theirs: Ipv4Net,
        settled: Settled,
    },
    /// A static peer of the same name is routed instead.
    Name,
    /// Cleartext: `with`, whose subnet is lower, sends from the same underlay address, and a
    /// datagram's sender is known by its address alone.
    SharedAddress { addr: IpAddr, with: String },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Fault(e) => write!(f, "{e}"),
            Why::Local { network } => write!(
                f,
                "it overlaps {network}, a network on this node's interfaces (the underlay?)"
            ),
            Why::Endpoint { addr, of } => {
                write!(f, "it contains {addr}, the underlay address of `{of}`")
            }
            Why::Own { own } => write!(f, "it overlaps this node's subnet {own}"),
            Why::Lost {
                to,
                theirs,
                settled,
            } => write!(
                f,
                "it overlaps {theirs} of `{to}`, which is kept: {settled}"
            ),
            Why::Name => f.write_str("a static peer of the same name is routed instead"),
            Why::SharedAddress { addr, with } => write!(
                f,
                "it shares the underlay address {addr} with `{with}`, which is kept (cleartext \
                 tells senders apart by address)"
            ),
        }
    }
}

impl Guard {
    /// Checks a static peer's subnet (a reservation: any size inside the cluster) against the
    /// cluster, this node's networks, its own endpoints and the other static peers'.
    pub(crate) fn check_static(&self, p: &Peer, statics: &[Peer]) -> Result<(), Why> {
        if let (Some(pool), Some(s)) = (&self.pool, to_subnet(p.subnet)) {
            pool.check_reserved(&s).map_err(Why::Fault)?;
        }
        self.check_common(p, statics)
    }

    /// Checks a member's claim: gossip's rule, then as a static peer's.
    pub(crate) fn check_member(&self, p: &Peer, claim: Claim, statics: &[Peer]) -> Result<(), Why> {
        if let (Some(pool), Some(subnet)) = (&self.pool, to_subnet(p.subnet)) {
            let claim = SubnetClaim {
                subnet,
                stamp: claim.stamp,
                explicit: claim.explicit,
            };
            pool.check(&claim).map_err(Why::Fault)?;
        }
        self.check_common(p, statics)
    }

    fn check_common(&self, p: &Peer, statics: &[Peer]) -> Result<(), Why> {
        if let Some(network) = self.local.iter().find(|n| overlaps(n, &p.subnet)) {
            return Err(Why::Local { network: *network });
        }
        let own = std::iter::once(p);
        for q in own.chain(statics) {
            for e in &q.endpoints {
                if let IpAddr::V4(addr) = e.addr.ip() {
                    if p.subnet.contains(&addr) {
                        return Err(Why::Endpoint {
                            addr,
                            of: q.name.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether two networks share an address.
pub(crate) fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

/// `s` as an [`Ipv4Net`]; `None` for what no network is (a prefix over 32, which a
/// hand-edited or corrupt lease file can hold: serde does not check it).
pub(crate) fn to_net(s: Subnet) -> Option<Ipv4Net> {
    Ipv4Net::new(s.addr(), s.prefix()).ok()
}

/// `n` as gossip's [`Subnet`] (its network address: host bits cleared).
pub(crate) fn to_subnet(n: Ipv4Net) -> Option<Subnet> {
    Subnet::new(n.network(), n.prefix_len())
}

/// The first and last address of `n`, as integers (for [`meshd_gossip::Ranges`]).
pub(crate) fn bounds(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::net::SocketAddr;

    fn peer(name: &str, endpoint: &str, subnet: &str) -> Peer {
        Peer::clear(
            name,
            SocketAddr::new(endpoint.parse().unwrap(), 8472),
            subnet.parse().unwrap(),
        )
    }

    fn guard() -> Guard {
        Guard {
            pool: Pool::new("10.244.0.0/16".parse().unwrap(), 24).ok(),
            local: vec![
                "198.18.0.0/24".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            by_address: false,
        }
    }

    /// The by-hand repro: a member claims the lab's underlay.
    #[test]
    fn a_claim_on_the_underlay_is_refused_for_every_reason_it_breaks() {
        let g = guard();
        let bad = peer("h3", "198.18.0.3", "198.18.0.0/24");
        let explicit = Claim {
            explicit: true,
            stamp: 0,
        };
        let why = g.check_member(&bad, explicit, &[]).unwrap_err();
        assert!(
            matches!(why, Why::Fault(ClaimFault::OutsideCluster { .. })),
            "{why}"
        );
        assert!(why.to_string().contains("cluster-cidr"), "{why}");
        // Without the cluster check (a cluster CIDR that covers the underlay), the local
        // network and then the endpoint still refuse it.
        let loose = Guard {
            pool: Pool::new("198.18.0.0/16".parse().unwrap(), 24).ok(),
            ..g.clone()
        };
        let why = loose.check_member(&bad, explicit, &[]).unwrap_err();
        assert_eq!(
            why,
            Why::Local {
                network: "198.18.0.0/24".parse().unwrap()
            }
        );
        let far = Guard {
            local: Vec::new(),
            ..loose
        };
        let why = far.check_member(&bad, explicit, &[]).unwrap_err();
        assert_eq!(
            why,
            Why::Endpoint {
                addr: "198.18.0.3".parse().unwrap(),
                of: "h3".into()
            }
        );
        // A static peer's endpoint counts; another member's does not (its own word only).
        let inside = peer("m", "198.18.1.9", "198.18.7.0/24");
        let s = peer("s", "198.18.7.7", "198.18.9.0/24");
        assert!(far.check_member(&inside, Claim::default(), &[]).is_ok());
        let why = far
            .check_member(&inside, Claim::default(), &[s])
            .unwrap_err();
        assert!(matches!(why, Why::Endpoint { of, .. } if of == "s"));
    }

    #[test]
    fn sizes_follow_gossips_rule_and_statics_may_be_any_size_inside() {
        let g = guard();
        let picked = Claim::default();
        let ok = peer("a", "198.18.0.2", "10.244.3.0/24");
        assert!(g.check_member(&ok, picked, &[]).is_ok());
        let wide = peer("b", "198.18.0.2", "10.244.2.0/23");
        assert!(matches!(
            g.check_member(&wide, picked, &[]),
            Err(Why::Fault(ClaimFault::Prefix { .. }))
        ));
        let explicit = Claim {
            explicit: true,
            stamp: 0,
        };
        assert!(g.check_member(&wide, explicit, &[]).is_ok());
        let far_ahead = Claim {
            explicit: false,
            stamp: u64::MAX,
        };
        assert!(matches!(
            g.check_member(&ok, far_ahead, &[]),
            Err(Why::Fault(ClaimFault::StampAhead { .. }))
        ));
        let big_static = peer("s", "198.18.0.9", "10.244.128.0/17");
        assert!(g.check_static(&big_static, &[]).is_ok());
        let whole = peer("w", "198.18.0.9", "10.244.0.0/16");
        assert!(g.check_static(&whole, &[]).is_err());
        assert!(Guard::default().check_member(&wide, picked, &[]).is_ok());
    }
}
