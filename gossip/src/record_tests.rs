#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::name::MAX_NAME_LEN;

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
        signer: None,
        forgets: Vec::new(),
        learned: Vec::new(),
        punch: Vec::new(),
    }
}

fn key() -> SigningKey {
    SigningKey::from_seed(&[3; 32])
}

/// What a signed record decodes to: the same, with its signer.
fn signed(rec: &NodeRecord) -> NodeRecord {
    NodeRecord {
        signer: Some(key().public()),
        ..rec.clone()
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
fn signed_record_round_trips_and_verifies() {
    let mut rec = sample("n1");
    rec.forgets = vec![Forget {
        key: [9; 32],
        upto: 77,
    }];
    let blob = encode_record(&rec, Some(&key())).unwrap();
    let decoded = decode_record(&blob).unwrap();
    assert_eq!(decoded.claimed_key(), Some(key().public()));
    assert_eq!(decoded.record.signer, None, "not before it is checked");
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), false));
}

/// A node one version ahead appends an extension; it is signed with the rest, skipped here.
#[test]
fn a_newer_nodes_extension_is_covered_and_skipped() {
    let rec = sample("n1");
    let blob = encode_with_trailer(&rec, Some(&key()), &[3, 1, 2, 3]).unwrap();
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), true));
    // A relay appending bytes breaks the signature: no one can add to another's record.
    let mut grown = encode_record(&rec, Some(&key())).unwrap();
    grown.extend_from_slice(&[1, 2, 3]);
    assert_eq!(decode_verified(&grown), Err(RecordError::BadSignature));
}

#[test]
fn every_byte_of_a_signed_record_is_covered() {
    let rec = sample("n1");
    let blob = encode_record(&rec, Some(&key())).unwrap();
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        // Whatever a flipped bit does to the parse, it never yields a believed record that
        // differs from what was signed.
        if let Ok((r, _)) = decode_verified(&bad) {
            assert_eq!(r, signed(&rec), "byte {i}");
        }
    }
    // `leaving` in particular: no member can make everyone withdraw another.
    let mut leaving = rec.clone();
    leaving.leaving = true;
    let forged = encode_record(&leaving, None).unwrap();
    let sig_ext = &blob[encode_record(&rec, None).unwrap().len()..];
    let spliced = [forged.as_slice(), sig_ext].concat();
    assert_eq!(decode_verified(&spliced), Err(RecordError::BadSignature));
}

/// A record from a node that predates the extensions: only the base fields.
#[test]
fn base_only_record_decodes_with_empty_extensions() {
    let rec = sample("n1");
    let base = postcard::to_allocvec(&rec).unwrap();
    let (old, skipped) = decode_verified(&base).unwrap();
    assert!(!skipped);
    assert!(old.secret_ids.is_empty() && old.reserved.is_empty());
    assert_eq!(old.signer, None);
    assert_eq!(
        NodeRecord {
            secret_ids: rec.secret_ids.clone(),
            reserved: rec.reserved.clone(),
            ..old
        },
        rec
    );
}

/// What this version sends, read as the previous version did (base and extensions 1 and 2, then
/// "skip the rest"): everything it knew reads the same, and the signature is left over.
#[test]
fn signatures_are_an_extension_older_nodes_skip() {
    let rec = sample("n1");
    let blob = encode_record(&rec, Some(&key())).unwrap();
    let (base, rest): (NodeRecord, _) = postcard::take_from_bytes(&blob).unwrap();
    let (ext1, rest): (&[u8], _) = postcard::take_from_bytes(rest).unwrap();
    let (ext2, rest): (&[u8], _) = postcard::take_from_bytes(rest).unwrap();
    let ids: Vec<[u8; 4]> = postcard::from_bytes(ext1).unwrap();
    let reserved: Vec<Subnet> = postcard::from_bytes(ext2).unwrap();
    assert_eq!(
        (base.name.as_str(), base.generation, ids, reserved),
        ("n1", 3, rec.secret_ids.clone(), rec.reserved.clone())
    );
    assert!(!rest.is_empty(), "extensions 3 and 4 are left to skip");
    // And the previous version's records (two extensions) read here, unsigned.
    let previous = encode_record(&rec, None).unwrap();
    assert_eq!(decode_verified(&previous).unwrap(), (rec, false));
}

/// Every field at its bound still fits in one signed record, one the previous version reads.
#[test]
fn a_signed_record_at_every_bound_fits() {
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
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert!(blob.len() <= MAX_RECORD_LEN, "{} bytes", blob.len());
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), false));
    rec.reserved.push("10.244.0.0/30".parse().unwrap());
    let blob = encode_record(&rec, None).unwrap();
    assert_eq!(decode_verified(&blob), Err(RecordError::Invalid));
}

#[test]
fn record_bounds_are_enforced() {
    let mut rec = sample("n1");
    rec.name = "x".repeat(MAX_NAME_LEN + 1);
    let blob = postcard::to_allocvec(&rec).unwrap();
    assert_eq!(decode_verified(&blob), Err(RecordError::BadName));
    rec.name = "evil\u{1b}[2J".into();
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_record(&blob), Err(RecordError::BadName));
    assert_eq!(decode_verified(&[0xff; 3]), Err(RecordError::Malformed));
    let mut rec = sample("n1");
    rec.secret_ids = vec![[0; 4]; MAX_SECRET_IDS + 1];
    let blob = encode_record(&rec, None).unwrap();
    assert_eq!(decode_verified(&blob), Err(RecordError::Invalid));
    let mut rec = sample("n1");
    rec.forgets = vec![
        Forget {
            key: [1; 32],
            upto: 1
        };
        MAX_FORGETS + 1
    ];
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_verified(&blob), Err(RecordError::Invalid));
    // A truncated extension is malformed, not silently empty.
    for key in [None, Some(&key())] {
        let blob = encode_record(&sample("n1"), key).unwrap();
        assert_eq!(
            decode_verified(&blob[..blob.len() - 1]),
            Err(RecordError::Malformed)
        );
    }
    // A signed record cut after a whole extension no longer matches its signature.
    let blob = encode_record(&sample("n1"), Some(&key())).unwrap();
    assert_eq!(
        decode_verified(&blob[..blob.len() - 2]),
        Err(RecordError::BadSignature)
    );
    // Extension 3 of another length is no signature.
    let base = encode_record(&sample("n1"), None).unwrap();
    let odd = postcard::to_extend([0u8; 95].as_slice(), base).unwrap();
    assert_eq!(decode_verified(&odd), Err(RecordError::Malformed));
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

/// Extension 5: the endpoints others observe a node at, signed with the rest, read back; a
/// record without it (an older node's) reads as none.
#[test]
fn learned_endpoints_round_trip_signed() {
    let mut rec = sample("n1");
    rec.learned = vec![
        "198.51.100.7:40001".parse().unwrap(),
        "[2001:db8::7]:51820".parse().unwrap(),
    ];
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), false));
    let mut tampered = blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(decode_verified(&tampered).map_or(true, |(r, _)| r == signed(&rec)));
    rec.learned.push("198.51.100.8:1".parse().unwrap());
    let too_many = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_record(&too_many), Err(RecordError::Invalid));
}

/// Extension 6: the hole punches a node asks, signed with the rest, read back; bounded; an
/// older reader (extension 5 only) skips it and the signature still holds.
#[test]
fn punch_requests_round_trip_signed_and_bounded() {
    let mut rec = sample("n1");
    rec.punch = vec![crate::PunchRequest {
        peer: "b1".into(),
        at_ms: 1_700_000_000_123,
    }];
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), false));
    // Learned endpoints and punches together.
    rec.learned = vec!["198.51.100.7:40001".parse().unwrap()];
    let blob = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_verified(&blob).unwrap(), (signed(&rec), false));
    rec.punch.push(crate::PunchRequest {
        peer: "b2".into(),
        at_ms: 1,
    });
    rec.punch.push(crate::PunchRequest {
        peer: "b3".into(),
        at_ms: 2,
    });
    let too_many = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_record(&too_many), Err(RecordError::Invalid));
    rec.punch = vec![crate::PunchRequest {
        peer: "-bad".into(),
        at_ms: 2,
    }];
    let bad = encode_record(&rec, Some(&key())).unwrap();
    assert_eq!(decode_record(&bad), Err(RecordError::Invalid));
}
