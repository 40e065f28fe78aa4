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
//! peers' ([`NodeRecord::reserved`]); 3. the owner's signature over every other byte of the
//! record ([`crate::signature`]); 4. the signing keys the owner asks the cluster to forget
//! ([`NodeRecord::forgets`], `meshd forget`); 5. the endpoints other members observe this node
//! at, behind a NAT ([`NodeRecord::learned`]); 6. the hole punches this node asks of its peers
//! ([`NodeRecord::punch`]). Decoding ([`decode_record`]) only parses; what
//! is believed is decided by the inbox (`inbox.rs`), which checks the signature
//! ([`Decoded::verify`]) against the key the name is bound to.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::name::is_valid_name;
pub use crate::punch::{PunchRequest, MAX_PUNCH};
use crate::record_ext::{append_extension, take_extension};
use crate::signature::{Proof, SigningKey, EXT_LEN, PUBLIC_KEY_LEN};

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
    /// Extension 3: the ed25519 key whose signature over this record was checked; `None` for
    /// a record from a node older than signatures (see `inbox.rs` for when one is believed).
    #[serde(skip)]
    pub signer: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Extension 4: signing keys this node asks the cluster to forget (`meshd forget`), each
    /// bound to some name elsewhere; at most [`MAX_FORGETS`]. Signed records only.
    #[serde(skip)]
    pub forgets: Vec<Forget>,
    /// Extension 5: where other members see this node's data port from outside (the source
    /// address and port of its WireGuard traffic as they authenticate it, their signed path
    /// summaries say so), when that is none of [`NodeRecord::endpoints`]: a node behind NAT
    /// learns its public endpoints and advertises them here, at most [`MAX_LEARNED`], most
    /// reported first. Signed records only; empty from an older node.
    #[serde(skip)]
    pub learned: Vec<SocketAddr>,
    /// Extension 6: hole punches this node asks of peers it cannot reach directly, at most
    /// [`MAX_PUNCH`]: "send to my endpoints at this moment, as I send to yours". A request
    /// names a peer and a time, never an address: the peer sends only to this node's own
    /// candidates. Signed records only; empty from an older node.
    #[serde(skip)]
    pub punch: Vec<PunchRequest>,
}

/// One `meshd forget`: release the name bound to `key`, unless its owner shows that key is
/// alive by publishing a record newer than `upto` (see `inbox.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Forget {
    /// The signing key to forget.
    pub key: [u8; PUBLIC_KEY_LEN],
    /// The newest generation the issuer had seen under that key when it was forgotten.
    pub upto: u64,
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
    /// Seconds since the Unix epoch at start (the wall clock): it grows across restarts, so a
    /// restarted node's identity and record win over what the cluster remembers of its last
    /// life; and with the time since start it bounds the generations this node believes
    /// (`inbox.rs`: a record from "the future" is refused).
    pub boot_epoch: u32,
    /// The key this node signs its record with. `None` signs nothing, as meshd did before
    /// signatures (the simulator plays such an old node with it); the daemon always has one.
    pub signing_key: Option<SigningKey>,
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
/// Nodes before signatures refuse longer records, so this cannot grow.
pub const MAX_RECORD_LEN: usize = 512;
/// Most underlay endpoints accepted per node: 6, so that a signed record with every field at
/// its bound (IPv6 endpoints take 20 bytes each, the signature 97) fits [`MAX_RECORD_LEN`].
/// meshd publishes one.
pub const MAX_ENDPOINTS: usize = 6;
/// Most keys one record asks to forget (`meshd forget`). A record at every other bound has no
/// room for one; the command then says so.
pub const MAX_FORGETS: usize = 2;
/// Most learned (observed) endpoints one record carries: two IPv6 ones take 40 bytes, which a
/// record at every other bound still has room for.
pub const MAX_LEARNED: usize = 2;
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
    /// The record decodes but breaks a bound (endpoints, subnet form).
    #[error("record out of bounds")]
    Invalid,
    /// The record's name is not a valid node name ([`crate::is_valid_name`]).
    #[error("record name is not a valid node name")]
    BadName,
    /// The signature is not the claimed key's over the record.
    #[error("record signature does not verify")]
    BadSignature,
}

/// A record as parsed from a blob, its signature not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The record, with [`NodeRecord::signer`] empty until [`Decoded::verify`].
    pub record: NodeRecord,
    /// Trailing bytes (extensions from a newer version) were skipped.
    pub skipped: bool,
    proof: Option<Proof>,
}

impl Decoded {
    /// The key the record claims to be signed by, unchecked; `None` for an unsigned record.
    pub fn claimed_key(&self) -> Option<[u8; PUBLIC_KEY_LEN]> {
        self.proof.map(|p| p.key)
    }

    /// Checks the signature over `blob` (the one decoded) and returns the record with its
    /// signer set; an unsigned record comes back as it is.
    pub fn verify(mut self, blob: &[u8]) -> Result<NodeRecord, RecordError> {
        if let Some(proof) = self.proof {
            if !proof.holds(blob) {
                return Err(RecordError::BadSignature);
            }
            self.record.signer = Some(proof.key);
        }
        Ok(self.record)
    }
}

/// Encodes a record into a fresh blob: the base fields, then each extension as a blob; signed
/// by `key` (extensions 3 and 4) unless it is `None` (as meshd did before signatures).
pub fn encode_record(
    record: &NodeRecord,
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, RecordError> {
    encode_with_trailer(record, key, &[])
}

/// [`encode_record`], with `trailer` appended after the last extension and signed with the
/// rest: what a node one version ahead sends (tests of rolling upgrades).
pub fn encode_with_trailer(
    record: &NodeRecord,
    key: Option<&SigningKey>,
    trailer: &[u8],
) -> Result<Vec<u8>, RecordError> {
    let mut blob = postcard::to_allocvec(record).map_err(|_| RecordError::Malformed)?;
    blob = append_extension(blob, &record.secret_ids)?;
    blob = append_extension(blob, &record.reserved)?;
    if let Some(key) = key {
        let mut suffix = append_extension(Vec::new(), &record.forgets)?;
        if !record.learned.is_empty() || !record.punch.is_empty() || !trailer.is_empty() {
            suffix = append_extension(suffix, &record.learned)?;
        }
        if !record.punch.is_empty() || !trailer.is_empty() {
            suffix = append_extension(suffix, &record.punch)?;
        }
        suffix.extend_from_slice(trailer);
        let ext = key.seal(&blob, &suffix);
        blob = postcard::to_extend(ext.as_slice(), blob).map_err(|_| RecordError::Malformed)?;
        blob.extend_from_slice(&suffix);
    } else {
        blob.extend_from_slice(trailer);
    }
    if blob.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLong);
    }
    Ok(blob)
}

/// Parses a record blob: the base fields and every extension this version knows; those
/// missing (an older sender) stay empty. The signature is parsed, not checked: see
/// [`Decoded::verify`].
pub fn decode_record(blob: &[u8]) -> Result<Decoded, RecordError> {
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
    let mut proof = None;
    if !rest.is_empty() {
        let start = blob.len() - rest.len();
        let (content, after): (&[u8], _) =
            postcard::take_from_bytes(rest).map_err(|_| RecordError::Malformed)?;
        rest = after;
        let end = blob.len() - rest.len();
        proof = match content.len() {
            EXT_LEN => Proof::parse(content, (start, end)),
            _ => None,
        };
        if proof.is_none() {
            return Err(RecordError::Malformed);
        }
        if let Some(forgets) = take_extension(&mut rest)? {
            record.forgets = forgets;
        }
        // Bytes that do not read as extension 5 are left for the signature to judge (a
        // relay's appendix fails it) rather than refused as malformed here.
        let mut ext5 = rest;
        if let Ok(Some(learned)) = take_extension(&mut ext5) {
            record.learned = learned;
            rest = ext5;
            let mut ext6 = rest;
            if let Ok(Some(punch)) = take_extension(&mut ext6) {
                record.punch = punch;
                rest = ext6;
            }
        }
    }
    let bounded = record.endpoints.len() <= MAX_ENDPOINTS
        && record.secret_ids.len() <= MAX_SECRET_IDS
        && record.reserved.len() <= MAX_RESERVED
        && record.forgets.len() <= MAX_FORGETS
        && record.learned.len() <= MAX_LEARNED
        && record.punch.len() <= MAX_PUNCH
        && record.punch.iter().all(|p| is_valid_name(&p.peer))
        && record.reserved.iter().all(Subnet::is_valid)
        && record.subnet.is_none_or(|c| c.subnet.is_valid());
    if !bounded {
        return Err(RecordError::Invalid);
    }
    if !is_valid_name(&record.name) {
        return Err(RecordError::BadName);
    }
    Ok(Decoded {
        record,
        skipped: !rest.is_empty(),
        proof,
    })
}

/// [`decode_record`] then [`Decoded::verify`]: what a record says, if its signature holds.
pub fn decode_verified(blob: &[u8]) -> Result<(NodeRecord, bool), RecordError> {
    let decoded = decode_record(blob)?;
    let skipped = decoded.skipped;
    Ok((decoded.verify(blob)?, skipped))
}

#[cfg(test)]
#[path = "record_tests.rs"]
pub(crate) mod tests;
