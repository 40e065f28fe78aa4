#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::peers::wireguard::static_pair_key;
use crate::peers::{Endpoint, EndpointSource, PeerKey};
use meshd_crypto::{ClusterSecret, Keyring, PrivateKey, SecretId};
use std::net::SocketAddr;

fn local() -> Local {
    Local {
        name: "me".into(),
        vni: 1,
        port: 51820,
    }
}

fn links_with(ring: Keyring, key: PrivateKey) -> Links {
    Links::new(
        local(),
        Some(Arc::new(NodeCrypto::new(key, ring, 100))),
        1420,
    )
}

fn links() -> Links {
    links_with(
        Keyring::single(ClusterSecret::generate()),
        PrivateKey::generate(),
    )
}

fn peer(n: u32, key: PublicKey) -> Peer {
    Peer {
        name: format!("p{n}"),
        endpoints: vec![Endpoint {
            addr: SocketAddr::from(([198, 18, (n >> 8) as u8, n as u8], 51820)),
            source: EndpointSource::Gossiped,
        }],
        subnet: format!("10.{}.{}.0/24", n >> 8, n & 0xff).parse().unwrap(),
        key: Some(PeerKey::fixed(key)),
        kernel_vxlan: false,
    }
}

fn index(l: &mut Links, p: &Peer, now: Instant) -> u32 {
    let pass = l.reconcile_at(&[p], 0, now, Stamp::now());
    pass.links[0].wg().unwrap().index
}

/// `meshd psk` prints the key this node's session with a static peer really uses.
#[test]
fn the_static_pair_key_is_the_one_sessions_use() {
    let ring = Keyring::new(vec![ClusterSecret::generate(), ClusterSecret::generate()]).unwrap();
    let key = PrivateKey::generate();
    let mut l = links_with(ring.clone(), key.clone());
    let theirs = PrivateKey::generate().public_key();
    let wg = l.reconcile(&[peer(9, theirs)], 0).links[0].wg().unwrap();
    let printed = static_pair_key(&ring, &key.public_key(), &theirs);
    assert_eq!(wg.pair().psk, printed.psk);
    // And the other end derives the same key from its side.
    assert_eq!(
        static_pair_key(&ring, &theirs, &key.public_key()).psk,
        printed.psk
    );
}

#[test]
fn a_removed_peer_gets_its_session_back_within_the_grace_period() {
    let mut l = links();
    let p = peer(1, PrivateKey::generate().public_key());
    let t0 = Instant::now();
    let first = index(&mut l, &p, t0);
    assert!(l.reconcile_at(&[], 0, t0, Stamp::now()).links.is_empty());
    let back = t0 + SESSION_GRACE - Duration::from_secs(1);
    assert_eq!(index(&mut l, &p, back), first, "the session was not kept");
    // Gone for longer than the grace period: a new session, under a new index.
    l.reconcile_at(&[], 0, back, Stamp::now());
    assert_ne!(index(&mut l, &p, back + SESSION_GRACE), first);
}

#[test]
fn retired_sessions_are_bounded_oldest_first() {
    let mut l = links();
    let t0 = Instant::now();
    let peers: Vec<Peer> = (0..SESSION_GRACE_MAX as u32 + 1)
        .map(|n| peer(n, PrivateKey::generate().public_key()))
        .collect();
    let first: Vec<u32> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let at = t0 + Duration::from_millis(i as u64);
            let i = index(&mut l, p, at);
            l.reconcile_at(&[], 0, at, Stamp::now());
            i
        })
        .collect();
    let later = t0 + Duration::from_secs(1);
    assert_eq!(index(&mut l, &peers[1], later), first[1]);
    assert_ne!(
        index(&mut l, &peers[0], later),
        first[0],
        "the oldest was kept"
    );
}

/// A changed record updates its link in place: the same object, counters and session, a new
/// endpoint in use; secret ids move the session to another pair key under the same index; a
/// new public key gives a new session. An unchanged pass changes nothing.
#[test]
fn a_changed_record_updates_its_link_in_place() {
    let (old, new) = (ClusterSecret::generate(), ClusterSecret::generate());
    let ring = Keyring::new(vec![old.clone(), new.clone()]).unwrap();
    let mut l = links_with(ring, PrivateKey::generate());
    let mut p = peer(3, PrivateKey::generate().public_key());
    p.key.as_mut().unwrap().secret_ids = Some(vec![SecretId::of(&old)]);
    let first = l.reconcile(std::slice::from_ref(&p), 0);
    assert!(first.changed);
    let link = first.links[0].clone();
    link.stats.tx(5, 500, 500);
    let (index, psk) = (link.wg().unwrap().index, link.wg().unwrap().pair().psk);
    assert!(
        !l.reconcile(std::slice::from_ref(&p), 0).changed,
        "nothing changed"
    );

    p.endpoints[0].addr = "198.18.9.9:4000".parse().unwrap();
    p.key.as_mut().unwrap().secret_ids = Some(vec![SecretId::of(&new)]);
    let pass = l.reconcile(std::slice::from_ref(&p), 0);
    assert!(pass.changed);
    assert!(
        Arc::ptr_eq(&pass.links[0], &link),
        "a new link for a changed record"
    );
    assert_eq!(link.endpoint(), p.endpoints[0].addr);
    assert_eq!(link.stats.snapshot().tx_packets, 5, "counters lost");
    let wg = link.wg().unwrap();
    assert_eq!(wg.index, index, "the session was replaced");
    assert_ne!(wg.pair().psk, psk, "the session kept the old pair key");

    p.key = Some(PeerKey::fixed(PrivateKey::generate().public_key()));
    let pass = l.reconcile(&[p], 0);
    assert!(Arc::ptr_eq(&pass.links[0], &link));
    assert_ne!(
        link.wg().unwrap().index,
        index,
        "a new key kept the old session"
    );
}

/// New cluster secrets (a new keyring epoch) re-key every session in place.
#[test]
fn a_new_keyring_epoch_rekeys_in_place() {
    let (old, new) = (ClusterSecret::generate(), ClusterSecret::generate());
    let mut l = links_with(Keyring::single(old), PrivateKey::generate());
    let p = peer(4, PrivateKey::generate().public_key());
    let link = l.reconcile(std::slice::from_ref(&p), 0).links[0].clone();
    let before = link.wg().unwrap().pair().psk;
    l.crypto().unwrap().set_keyring(Keyring::single(new));
    assert!(l.reconcile(&[p], 1).changed);
    assert_ne!(link.wg().unwrap().pair().psk, before);
}
