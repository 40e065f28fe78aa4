//! A summary on the wire: cut into chunks that each fit a datagram, each signed by its reporter.
//!
//! ```text
//!  Kind::Summary payload:  SignedChunk { body: bytes, signature: bytes (64) }
//!  body:                   Body { reporter, version, index, total, omitted, entries: [bytes] }
//!  each entry:             Entry { peer, path, route, health, reason, rtt_us, mtu } ‖ Seen { data, gossip }
//!                          ‖ Relays { [(other, port)] }   (a relay's per-pair ports)
//!  signed:                 "meshd path summary v1\0" ‖ body
//!  Kind::SummaryPull:      Pull { version }   (send yours if newer than this)
//! ```
//!
//! All postcard. Each entry is a blob of its own so that a newer node may append fields to it
//! (read here as far as this version knows, the rest skipped); `SignedChunk`, `Body` and `Pull`
//! may only grow by fields appended at their end (`wire.rs`). The signature covers the body's
//! bytes as sent: a relay can neither change nor add an entry. Every chunk is signed on its
//! own, so a receiver checks each as it comes, and a chunk of one version never completes
//! another (the version is in the signed body).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Health, PathCode, PathReport, Reason, RelayOffer, Route, MAX_CHUNKS, MAX_RELAY_OFFERS,
};
use crate::name::is_valid_name;
use crate::signature::{self, SigningKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Domain separation: a summary signature is never a record's, nor the reverse.
const DOMAIN: &[u8] = b"meshd path summary v1\0";
/// Bytes of a chunk besides its entries, at most: the signature and its prefix (65), the body's
/// length prefix (3), a 64-byte name and its prefix (65), version (10), index and total (3 each),
/// omitted (5), the entry count (3).
pub(crate) const CHUNK_OVERHEAD: usize = 160;

#[derive(Debug, Serialize, Deserialize)]
struct SignedChunk<'a> {
    #[serde(borrow)]
    body: &'a [u8],
    #[serde(borrow)]
    signature: &'a [u8],
}

#[derive(Debug, Serialize, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    reporter: &'a str,
    version: u64,
    index: u16,
    total: u16,
    omitted: u32,
    #[serde(borrow)]
    entries: Vec<&'a [u8]>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    peer: &'a str,
    path: u8,
    route: u8,
    health: u8,
    reason: u8,
    /// Microseconds; 0 when not measured.
    rtt_us: u32,
    mtu: u16,
}

/// An entry's second part (appended by meshd with NAT traversal; an older reader skips it):
/// where the reporter sees the peer's traffic come from.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Seen {
    data: Option<SocketAddr>,
    gossip: Option<SocketAddr>,
}

/// An entry's third part (appended by meshd with relaying): the relay ports the reporter keeps
/// for the peer and each other member named.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Relays<'a> {
    #[serde(borrow)]
    ports: Vec<(&'a str, u16)>,
}

/// A pull: the version the asker holds (0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pull {
    pub(crate) version: u64,
}

/// A summary cut into signed chunks, ready to send.
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoded {
    pub(crate) chunks: Vec<Vec<u8>>,
    /// Entries left out for want of room (beyond [`MAX_CHUNKS`]).
    pub(crate) omitted: u32,
}

/// Cuts `reports` (in the order given) into chunks of at most `room` bytes, signed by `key`;
/// what does not fit in [`MAX_CHUNKS`] is counted in `omitted`, on top of `omitted_before`.
pub(crate) fn encode(
    reporter: &str,
    version: u64,
    reports: &[PathReport],
    omitted_before: u32,
    key: &SigningKey,
    room: usize,
) -> Encoded {
    let room = room.saturating_sub(CHUNK_OVERHEAD);
    let mut groups: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut used = 0;
    let mut left_out = 0u32;
    for r in reports {
        let mut blob = crate::wire::encode_payload(&entry(r));
        if r.observed.is_some() || r.observed_gossip.is_some() || !r.relays.is_empty() {
            blob.extend(crate::wire::encode_payload(&Seen {
                data: r.observed,
                gossip: r.observed_gossip,
            }));
        }
        if !r.relays.is_empty() {
            let ports = r.relays.iter().take(MAX_RELAY_OFFERS);
            blob.extend(crate::wire::encode_payload(&Relays {
                ports: ports.map(|o| (o.other.as_str(), o.port)).collect(),
            }));
        }
        // A blob under 16 KiB has a length prefix of at most 2 bytes.
        let cost = blob.len() + 2;
        if used + cost > room && used > 0 {
            if groups.len() >= usize::from(MAX_CHUNKS) {
                left_out += 1;
                continue;
            }
            groups.push(Vec::new());
            used = 0;
        }
        used += cost;
        if let Some(last) = groups.last_mut() {
            last.push(blob);
        }
    }
    let omitted = omitted_before.saturating_add(left_out);
    let total = groups.len() as u16;
    let chunks = groups
        .iter()
        .enumerate()
        .map(|(index, entries)| {
            let body = crate::wire::encode_payload(&Body {
                reporter,
                version,
                index: index as u16,
                total,
                omitted,
                entries: entries.iter().map(Vec::as_slice).collect(),
            });
            let signature = key.sign(DOMAIN, &body);
            crate::wire::encode_payload(&SignedChunk {
                body: &body,
                signature: &signature,
            })
        })
        .collect();
    Encoded { chunks, omitted }
}

fn entry(r: &PathReport) -> Entry<'_> {
    Entry {
        peer: &r.peer,
        path: r.path.code(),
        route: r.route.code(),
        health: r.health.code(),
        reason: r.reason.code(),
        rtt_us: r
            .rtt
            .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1))
            .unwrap_or(0),
        mtu: r.mtu,
    }
}

/// Why a chunk was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// It does not decode, or breaks a bound (chunk count, index, name).
    Malformed,
}

/// A chunk as parsed, its signature not checked yet.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    body_bytes: &'a [u8],
    signature: &'a [u8],
    body: Body<'a>,
    /// Trailing fields of a newer sender were skipped.
    pub(crate) skipped: bool,
}

impl<'a> Parsed<'a> {
    pub(crate) fn reporter(&self) -> &'a str {
        self.body.reporter
    }
    pub(crate) fn version(&self) -> u64 {
        self.body.version
    }
    pub(crate) fn index(&self) -> u16 {
        self.body.index
    }
    pub(crate) fn total(&self) -> u16 {
        self.body.total
    }
    pub(crate) fn omitted(&self) -> u32 {
        self.body.omitted
    }

    /// Whether `key` signed this chunk's body.
    pub(crate) fn verify(&self, key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        self.signature.len() == SIGNATURE_LEN
            && signature::verify(key, DOMAIN, self.body_bytes, self.signature)
    }

    /// The entries, and how many were refused (not an entry, not a node name).
    pub(crate) fn reports(&self) -> (Vec<PathReport>, u64) {
        let mut bad = 0;
        let mut out = Vec::with_capacity(self.body.entries.len());
        for blob in &self.body.entries {
            match postcard::take_from_bytes::<Entry<'_>>(blob) {
                Ok((e, after)) if is_valid_name(e.peer) => {
                    // A reader that cannot parse the second part takes the first alone.
                    let (seen, after) =
                        postcard::take_from_bytes::<Seen>(after).unwrap_or((Seen::default(), &[]));
                    let relays = postcard::take_from_bytes::<Relays<'_>>(after)
                        .map(|(r, _)| r.ports)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(other, port)| is_valid_name(other) && *port != 0)
                        .take(MAX_RELAY_OFFERS)
                        .map(|(other, port)| RelayOffer {
                            other: other.to_owned(),
                            port,
                        })
                        .collect();
                    out.push(PathReport {
                        peer: e.peer.to_owned(),
                        path: PathCode::from_code(e.path),
                        route: Route::from_code(e.route),
                        health: Health::from_code(e.health),
                        reason: Reason::from_code(e.reason),
                        rtt: (e.rtt_us > 0).then(|| Duration::from_micros(u64::from(e.rtt_us))),
                        mtu: e.mtu,
                        observed: seen.data,
                        observed_gossip: seen.gossip,
                        relays,
                    })
                }
                _ => bad += 1,
            }
        }
        (out, bad)
    }
}

/// Parses a [`Kind::Summary`](crate::wire::Kind::Summary) payload and checks its bounds.
pub(crate) fn decode(payload: &[u8]) -> Result<Parsed<'_>, Bad> {
    let (signed, extra) =
        crate::wire::decode_payload::<SignedChunk<'_>>(payload).map_err(|_| Bad::Malformed)?;
    let (body, body_extra) =
        crate::wire::decode_payload::<Body<'_>>(signed.body).map_err(|_| Bad::Malformed)?;
    let bounded = body.total >= 1
        && body.total <= MAX_CHUNKS
        && body.index < body.total
        && is_valid_name(body.reporter);
    if !bounded {
        return Err(Bad::Malformed);
    }
    Ok(Parsed {
        body_bytes: signed.body,
        signature: signed.signature,
        body,
        skipped: extra || body_extra,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    pub(crate) fn report(peer: &str, rtt_us: u64) -> PathReport {
        PathReport {
            peer: peer.into(),
            path: PathCode::KernelVxlan,
            route: Route::Direct,
            health: Health::Ok,
            reason: Reason::None,
            rtt: Some(Duration::from_micros(rtt_us)),
            mtu: 1450,
            observed: None,
            observed_gossip: None,
            relays: Vec::new(),
        }
    }

    #[test]
    fn observed_endpoints_round_trip_and_an_entry_without_them_reads_as_before() {
        let key = SigningKey::from_seed(&[1; 32]);
        let mut seen = report("b", 400);
        seen.observed = Some("198.51.100.7:40001".parse().unwrap());
        seen.observed_gossip = Some("198.51.100.7:7946".parse().unwrap());
        let enc = encode("a", 1, &[seen.clone(), report("c", 5)], 0, &key, 1191);
        let (back, bad) = decode(&enc.chunks[0]).unwrap().reports();
        assert_eq!((back, bad), (vec![seen, report("c", 5)], 0));
    }

    #[test]
    fn chunks_fit_their_room_and_round_trip_signed() {
        let key = SigningKey::from_seed(&[1; 32]);
        let reports: Vec<PathReport> = (0..300)
            .map(|i| report(&format!("node-{i:04}"), 300 + i))
            .collect();
        let enc = encode("node-x", 7, &reports, 0, &key, 1191);
        assert!(enc.chunks.len() > 1);
        assert_eq!(enc.omitted, 0);
        let mut back = Vec::new();
        for (i, c) in enc.chunks.iter().enumerate() {
            assert!(c.len() <= 1191, "chunk {i} is {} bytes", c.len());
            let p = decode(c).unwrap();
            assert_eq!(
                (p.reporter(), p.version(), p.index()),
                ("node-x", 7, i as u16)
            );
            assert_eq!(usize::from(p.total()), enc.chunks.len());
            assert!(p.verify(&key.public()));
            assert!(!p.verify(&SigningKey::from_seed(&[2; 32]).public()));
            let (r, bad) = p.reports();
            assert_eq!(bad, 0);
            back.extend(r);
        }
        assert_eq!(back, reports);
    }

    #[test]
    fn a_changed_byte_breaks_the_signature_or_the_parse() {
        let key = SigningKey::from_seed(&[1; 32]);
        let enc = encode("a", 1, &[report("b", 400)], 0, &key, 1191);
        let chunk = &enc.chunks[0];
        for i in 0..chunk.len() {
            let mut bad = chunk.clone();
            bad[i] ^= 0x10;
            if let Ok(p) = decode(&bad) {
                assert!(!p.verify(&key.public()) || p.reports().0 == [report("b", 400)]);
            }
        }
    }

    #[test]
    fn what_does_not_fit_in_the_chunk_bound_is_counted() {
        let key = SigningKey::from_seed(&[1; 32]);
        let long = "n".repeat(60);
        let reports: Vec<PathReport> = (0..2000)
            .map(|i| report(&format!("{long}{i:04}"), 1))
            .collect();
        let enc = encode("a", 1, &reports, 5, &key, 1191);
        assert_eq!(enc.chunks.len(), usize::from(MAX_CHUNKS));
        let kept: usize = enc
            .chunks
            .iter()
            .map(|c| decode(c).unwrap().reports().0.len())
            .sum();
        assert_eq!(kept + enc.omitted as usize, 2000 + 5);
        assert!(enc
            .chunks
            .iter()
            .all(|c| decode(c).unwrap().omitted() == enc.omitted));
    }

    #[test]
    fn bounds_are_checked_and_unknown_codes_read_as_unknown() {
        let key = SigningKey::from_seed(&[1; 32]);
        let body = |index, total, name| {
            let e = crate::wire::encode_payload(&Entry {
                peer: "b",
                path: 99,
                route: 1,
                health: 77,
                reason: 200,
                rtt_us: 0,
                mtu: 1400,
            });
            let body = crate::wire::encode_payload(&Body {
                reporter: name,
                version: 1,
                index,
                total,
                omitted: 0,
                entries: vec![&e],
            });
            let sig = key.sign(DOMAIN, &body);
            crate::wire::encode_payload(&SignedChunk {
                body: &body,
                signature: &sig,
            })
        };
        assert!(decode(&body(0, 0, "a")).is_err());
        assert!(decode(&body(2, 2, "a")).is_err());
        assert!(decode(&body(0, MAX_CHUNKS + 1, "a")).is_err());
        assert!(decode(&body(0, 1, "a\u{1b}")).is_err());
        let chunk = body(0, 1, "a");
        let p = decode(&chunk).unwrap();
        let (r, _) = p.reports();
        assert_eq!(
            (r[0].path, r[0].health, r[0].reason, r[0].rtt),
            (PathCode::Unknown, Health::Unknown, Reason::Unknown, None)
        );
    }
}
