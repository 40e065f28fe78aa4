//! Node records: what a node tells the cluster about itself.
//!
//! A record travels as a postcard blob inside foca custom broadcasts and state dumps: the base
//! fields of the first version, then *extensions*, each a length-prefixed postcard blob of its
//! own, appended in the order they were introduced. An older decoder reads the base and the
//! extensions it knows and counts the rest as skipped; a newer decoder reading an older
//! record finds fewer extensions and leaves their fields empty (see [`decode_record`]).
//!
//! Extensions so far: 1. the ids of the cluster secrets the node holds
//! ([`NodeRecord::secret_ids`]); 2. the subnets the node routes outside gossip, its static
//! peers' ([`NodeRecord::reserved`]).

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// An IPv4 network: address with all host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// meshd's default cluster CIDR, 10.244.0.0/16.
    pub const DEFAULT_CLUSTER_CIDR: Subnet = Subnet {
        addr: Ipv4Addr::new(10, 244, 0, 0),
        prefix: 16,
    };

    /// Builds a network, refusing a prefix over 32 or an address with host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let subnet = Self { addr, prefix };
        (prefix <= 32 && u32::from(addr) & !subnet.mask() == 0).then_some(subnet)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains(&self, other: &Subnet) -> bool {
        other.prefix >= self.prefix && u32::from(other.addr) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two networks share an address (one contains the other).
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other) || other.contains(self)
    }

    fn is_valid(&self) -> bool {
        Self::new(self.addr, self.prefix).is_some()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = SubnetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or(SubnetParseError)?;
        let addr = addr.parse().map_err(|_| SubnetParseError)?;
        let prefix = prefix.parse().map_err(|_| SubnetParseError)?;
        Self::new(addr, prefix).ok_or(SubnetParseError)
    }
}

/// A string that is not `a.b.c.d/len` with host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an IPv4 network in a.b.c.d/len form with host bits clear")]
pub struct SubnetParseError;

/// What a node can do, as a bit set so that unknown bits from newer nodes survive a round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The node can run a kernel VXLAN device.
    pub const KERNEL_VXLAN: u32 = 1 << 0;
    /// The node can run a kernel WireGuard device.
    pub const KERNEL_WIREGUARD: u32 = 1 << 1;
    /// The node speaks the encrypted (WireGuard) wire format.
    pub const ENCRYPTION_WIREGUARD: u32 = 1 << 2;
    /// The node accepts the cleartext (VXLAN) wire format.
    pub const ENCRYPTION_NONE: u32 = 1 << 3;

    /// Whether every bit of `bits` is set.
    pub fn has(&self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

/// A node's claim on a subnet. Overlapping claims are settled by [`crate::Precedence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubnetClaim {
    /// The claimed network.
    pub subnet: Subnet,
    /// Lamport time of the claim: lower is older.
    pub stamp: u64,
    /// Configured by an operator rather than picked.
    pub explicit: bool,
}

impl SubnetClaim {
    /// Whether this claim wins over `other`, which it overlaps ([`crate::Precedence`]: the
    /// narrower subnet, then an explicit claim over a picked one, then the older (lower)
    /// stamp, then the lower node name). Every node computes the same winner.
    pub fn beats(&self, own_name: &str, other: &SubnetClaim, other_name: &str) -> bool {
        crate::Precedence::claim(self, own_name).beats(&crate::Precedence::claim(other, other_name))
    }
}

/// What the daemon persists so that a restarted node keeps its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The subnet held.
    pub subnet: Subnet,
    /// The claim's Lamport stamp (keeps the claim's age across restarts).
    pub stamp: u64,
}

/// Everything the cluster knows about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Cluster-unique node name (the key of the member table).
    pub name: String,
    /// Where the node's gossip endpoint listens.
    pub gossip_addr: SocketAddr,
    /// WireGuard public key.
    pub public_key: [u8; 32],
    /// Underlay endpoints for the data path, most preferred first.
    pub endpoints: Vec<SocketAddr>,
    /// The node's pod subnet claim, once it has one.
    pub subnet: Option<SubnetClaim>,
    /// VTEP MAC for the VXLAN wire format.
    pub vtep_mac: [u8; 6],
    /// What the node can do.
    pub capabilities: Capabilities,
    /// meshd software version, for `meshd status`.
    pub version: String,
    /// Grows with every change the node makes to its record; the highest generation wins.
    pub generation: u64,
    /// The node announced a graceful departure.
    pub leaving: bool,
    /// Extension 1: ids of the cluster secrets the node holds, primary first (empty when the
    /// node is older than this field). Peers derive the pair's WireGuard preshared key from a
    /// secret both hold.
    #[serde(skip)]
    pub secret_ids: Vec<[u8; 4]>,
    /// Extension 2: subnets inside the cluster CIDR that the node routes to static peers
    /// (`[[peers]]` entries: hosts outside gossip, a wireguard-go host say). No member may
    /// claim one: every node leaves them out of its picks (empty from an older node).
    #[serde(skip)]
    pub reserved: Vec<Subnet>,
}

/// The local node, as the daemon knows it at start-up.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Cluster-unique node name.
    pub name: String,
    /// Address the daemon's gossip socket is bound to, as peers reach it.
    pub gossip_addr: SocketAddr,
    /// WireGuard public key.
    pub public_key: [u8; 32],
    /// Underlay endpoints for the data path.
    pub endpoints: Vec<SocketAddr>,
    /// VTEP MAC.
    pub vtep_mac: [u8; 6],
    /// What this node can do.
    pub capabilities: Capabilities,
    /// meshd software version.
    pub version: String,
    /// Where this node's subnet comes from.
    pub subnet: SubnetRequest,
    /// Ids of the cluster secrets this node holds, primary first.
    pub secret_ids: Vec<[u8; 4]>,
    /// Subnets this node routes outside gossip (its static peers'). Those inside the cluster
    /// CIDR are published ([`NodeRecord::reserved`]) and never given to a member; at most
    /// [`MAX_RESERVED`] of them.
    pub reserved: Vec<Subnet>,
    /// Must grow across restarts (seconds since the Unix epoch at start will do): a restarted
    /// node's identity and record then win over what the cluster remembers of its last life.
    pub boot_epoch: u32,
}

/// Where the node's subnet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubnetRequest {
    /// Pick a free one once the cluster state is known.
    Auto,
    /// The lease persisted by a previous run; kept unless an older claim holds the subnet.
    Persisted(Lease),
    /// Configured by the operator: always kept; a conflict is reported, never resolved by us.
    Explicit(Subnet),
}

/// Largest record accepted from the network; bounds what one broadcast can make us store.
pub const MAX_RECORD_LEN: usize = 512;
/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Most underlay endpoints accepted per node.
pub const MAX_ENDPOINTS: usize = 8;
/// Most cluster secret ids accepted per node.
pub const MAX_SECRET_IDS: usize = 8;
/// Most reserved (static peer) subnets accepted per node: 16 take 81 bytes, which a record
/// with every other field at its bound still fits in [`MAX_RECORD_LEN`] with.
pub const MAX_RESERVED: usize = 16;

/// Why a record blob was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The blob is longer than [`MAX_RECORD_LEN`].
    #[error("record longer than {MAX_RECORD_LEN} bytes")]
    TooLong,
    /// The blob is not a postcard record.
    #[error("record does not decode")]
    Malformed,
    /// The record decodes but breaks a bound (name, endpoints, subnet form).
    #[error("record out of bounds")]
    Invalid,
}

/// Encodes a record into a fresh blob: the base fields, then each extension as a blob.
pub fn encode_record(record: &NodeRecord) -> Result<Vec<u8>, RecordError> {
    let mut blob = postcard::to_allocvec(record).map_err(|_| RecordError::Malformed)?;
    blob = append_extension(blob, &record.secret_ids)?;
    blob = append_extension(blob, &record.reserved)?;
    if blob.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLong);
    }
    Ok(blob)
}

/// Decodes a record blob. Returns the record and whether trailing bytes (extensions from a
/// newer version) were skipped. Extensions missing (an older sender) stay empty.
pub fn decode_record(blob: &[u8]) -> Result<(NodeRecord, bool), RecordError> {
    if blob.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLong);
    }
    let (mut record, mut rest): (NodeRecord, _) =
        postcard::take_from_bytes(blob).map_err(|_| RecordError::Malformed)?;
    if let Some(ids) = take_extension(&mut rest)? {
        record.secret_ids = ids;
    }
    if let Some(reserved) = take_extension(&mut rest)? {
        record.reserved = reserved;
    }
    let bounded = !record.name.is_empty()
        && record.name.len() <= MAX_NAME_LEN
        && record.endpoints.len() <= MAX_ENDPOINTS
        && record.secret_ids.len() <= MAX_SECRET_IDS
        && record.reserved.len() <= MAX_RESERVED
        && record.reserved.iter().all(Subnet::is_valid)
        && record.subnet.is_none_or(|c| c.subnet.is_valid());
    if !bounded {
        return Err(RecordError::Invalid);
    }
    Ok((record, !rest.is_empty()))
}

fn append_extension(blob: Vec<u8>, value: &impl Serialize) -> Result<Vec<u8>, RecordError> {
    let ext = postcard::to_allocvec(value).map_err(|_| RecordError::Malformed)?;
    postcard::to_extend(ext.as_slice(), blob).map_err(|_| RecordError::Malformed)
}

/// The next extension, if the sender wrote one; a truncated one is malformed, not absent.
fn take_extension<T: serde::de::DeserializeOwned>(
    rest: &mut &[u8],
) -> Result<Option<T>, RecordError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let (ext, after): (&[u8], _) =
        postcard::take_from_bytes(rest).map_err(|_| RecordError::Malformed)?;
    *rest = after;
    postcard::from_bytes(ext)
        .map(Some)
        .map_err(|_| RecordError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    pub(crate) fn sample(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.to_string(),
            gossip_addr: "192.0.2.1:7946".parse().unwrap(),
            public_key: [7; 32],
            endpoints: vec!["192.0.2.1:51820".parse().unwrap()],
            subnet: Some(SubnetClaim {
                subnet: "10.244.3.0/24".parse().unwrap(),
                stamp: 4,
                explicit: false,
            }),
            vtep_mac: [2, 0, 0, 0, 0, 1],
            capabilities: Capabilities(Capabilities::KERNEL_VXLAN),
            version: "0.1.0".to_string(),
            generation: 3,
            leaving: false,
            secret_ids: vec![[1, 2, 3, 4], [5, 6, 7, 8]],
            reserved: vec!["10.244.200.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn subnet_parse_and_contains() {
        let cidr: Subnet = "10.244.0.0/16".parse().unwrap();
        let sub: Subnet = "10.244.9.0/24".parse().unwrap();
        assert!(cidr.contains(&sub));
        assert!(!sub.contains(&cidr));
        assert!("10.244.9.1/24".parse::<Subnet>().is_err());
        assert!("10.244.9.0/33".parse::<Subnet>().is_err());
        assert_eq!(sub.to_string(), "10.244.9.0/24");
    }

    #[test]
    fn record_round_trip_tolerates_appended_fields() {
        let rec = sample("n1");
        let mut blob = encode_record(&rec).unwrap();
        assert_eq!(decode_record(&blob).unwrap(), (rec.clone(), false));
        blob.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_record(&blob).unwrap(), (rec, true));
    }

    /// A record from a node that predates the extensions: only the base fields.
    #[test]
    fn base_only_record_decodes_with_empty_extensions() {
        let rec = sample("n1");
        let base = postcard::to_allocvec(&rec).unwrap();
        let (old, skipped) = decode_record(&base).unwrap();
        assert!(!skipped);
        assert!(old.secret_ids.is_empty());
        assert!(old.reserved.is_empty());
        assert_eq!(
            NodeRecord {
                secret_ids: rec.secret_ids.clone(),
                reserved: rec.reserved.clone(),
                ..old
            },
            rec
        );
        // And what this version sends carries the ids.
        let (new, _) = decode_record(&encode_record(&rec).unwrap()).unwrap();
        assert_eq!(new.secret_ids, rec.secret_ids);
        assert_eq!(new.reserved, rec.reserved);
    }

    /// What this version sends, read as the previous version did (base and extension 1): the
    /// reservations are skipped, everything else reads; and that version's records read here
    /// with no reservations.
    #[test]
    fn reservations_are_an_extension_older_nodes_skip() {
        let rec = sample("n1");
        let blob = encode_record(&rec).unwrap();
        let (base, rest): (NodeRecord, _) = postcard::take_from_bytes(&blob).unwrap();
        let (ext1, rest): (&[u8], _) = postcard::take_from_bytes(rest).unwrap();
        let ids: Vec<[u8; 4]> = postcard::from_bytes(ext1).unwrap();
        assert_eq!((base.name.as_str(), ids), ("n1", rec.secret_ids.clone()));
        assert!(
            !rest.is_empty(),
            "extension 2 is left for an older decoder to skip"
        );
        let previous = append_extension(postcard::to_allocvec(&rec).unwrap(), &rec.secret_ids);
        let (read, skipped) = decode_record(&previous.unwrap()).unwrap();
        assert!(!skipped);
        assert!(read.reserved.is_empty());
        assert_eq!(read.secret_ids, rec.secret_ids);
    }

    /// Every field at its bound still fits in one record.
    #[test]
    fn a_record_at_every_bound_fits() {
        let mut rec = sample(&"n".repeat(MAX_NAME_LEN));
        rec.gossip_addr = "[2001:db8::1]:65535".parse().unwrap();
        rec.endpoints = vec!["[2001:db8::1]:65535".parse().unwrap(); MAX_ENDPOINTS];
        rec.subnet = rec.subnet.map(|c| SubnetClaim {
            stamp: u64::MAX,
            ..c
        });
        rec.capabilities = Capabilities(u32::MAX);
        rec.version = "0.1.0-rc.1+abcdef".into();
        rec.generation = u64::MAX;
        rec.secret_ids = vec![[0xff; 4]; MAX_SECRET_IDS];
        rec.reserved = vec!["10.244.255.252/30".parse().unwrap(); MAX_RESERVED];
        let blob = encode_record(&rec).unwrap();
        assert!(blob.len() <= MAX_RECORD_LEN, "{} bytes", blob.len());
        assert_eq!(decode_record(&blob).unwrap(), (rec.clone(), false));
        rec.reserved.push("10.244.0.0/30".parse().unwrap());
        let blob = encode_record(&rec).unwrap();
        assert_eq!(decode_record(&blob), Err(RecordError::Invalid));
    }

    #[test]
    fn record_bounds_are_enforced() {
        let mut rec = sample("n1");
        rec.name = "x".repeat(MAX_NAME_LEN + 1);
        let blob = postcard::to_allocvec(&rec).unwrap();
        assert_eq!(decode_record(&blob), Err(RecordError::Invalid));
        assert_eq!(decode_record(&[0xff; 3]), Err(RecordError::Malformed));
        let mut rec = sample("n1");
        rec.secret_ids = vec![[0; 4]; MAX_SECRET_IDS + 1];
        let blob = encode_record(&rec).unwrap();
        assert_eq!(decode_record(&blob), Err(RecordError::Invalid));
        // A truncated extension is malformed, not silently empty.
        let blob = encode_record(&sample("n1")).unwrap();
        assert_eq!(
            decode_record(&blob[..blob.len() - 2]),
            Err(RecordError::Malformed)
        );
    }

    #[test]
    fn claim_order_is_explicit_then_age_then_name() {
        let s: Subnet = "10.244.1.0/24".parse().unwrap();
        let old = SubnetClaim {
            subnet: s,
            stamp: 1,
            explicit: false,
        };
        let new = SubnetClaim {
            subnet: s,
            stamp: 9,
            explicit: false,
        };
        let pinned = SubnetClaim {
            subnet: s,
            stamp: 99,
            explicit: true,
        };
        assert!(old.beats("b", &new, "a"));
        assert!(!new.beats("a", &old, "b"));
        assert!(pinned.beats("z", &old, "a"));
        assert!(old.beats("a", &old, "b"));
        assert!(!old.beats("b", &old, "a"));
    }
}
