#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The messages against the kernel's layout (`include/uapi/linux/wireguard.h`), written out
//! here with an encoder of our own, and through `netlink-packet-wireguard`'s parser back into
//! the configuration they came from.

use super::*;
use meshd_crypto::PrivateKey;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use std::net::{Ipv4Addr, SocketAddr};

/// Any id: the kernel assigns the family's at run time.
const FAMILY_ID: u16 = 0x1b;

fn key(n: u32) -> PublicKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[31] = 0x5a;
    PublicKey::from_bytes(b)
}

fn peer(n: u32, ips: u32) -> PeerConfig {
    PeerConfig {
        public_key: key(n),
        preshared_key: Zeroizing::new([n as u8 ^ 0xa5; 32]),
        endpoint: SocketAddr::from(([198, 18, (n >> 8) as u8, n as u8], 51820)),
        allowed_ips: (0..ips)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (n << 16) + (i << 8)), 24).unwrap())
            .collect(),
        persistent_keepalive: NonZeroU16::new((n % 3) as u16 * 25),
    }
}

fn device(peers: Vec<PeerConfig>) -> DeviceConfig {
    DeviceConfig {
        ifname: "meshwg0".into(),
        private_key: PrivateKey::from_bytes([7; 32]),
        listen_port: 51820,
        fwmark: NonZeroU32::new(0x51),
        peers,
    }
}

/// The whole netlink message, as the socket sends it.
fn wire(msg: &WireguardMessage) -> Vec<u8> {
    let header = GenlHeader {
        cmd: msg.command(),
        version: msg.version(),
    };
    let mut nl = NetlinkMessage::from(GenlMessage::new(header, msg.clone(), FAMILY_ID));
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// The crate's parser on those bytes.
fn unwire(bytes: &[u8]) -> WireguardMessage {
    let nl = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(bytes).unwrap();
    assert_eq!(nl.header.message_type, FAMILY_ID);
    match nl.payload {
        NetlinkPayload::InnerMessage(g) => g.payload,
        other => panic!("not a generic netlink message: {other:?}"),
    }
}

fn round_trip(msgs: &[WireguardMessage]) -> DeviceConfig {
    let back: Vec<_> = msgs.iter().map(|m| unwire(&wire(m))).collect();
    assert_eq!(back, msgs, "the crate parses what it emitted");
    parse_device(&back).unwrap()
}

/// One netlink attribute as `include/net/netlink.h` lays it out: length (header included),
/// type, value, padding to 4 bytes. Nested attributes set bit 15.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

const NESTED: u16 = 0x8000;

#[test]
fn the_bytes_are_the_kernel_layout() {
    let p = PeerConfig {
        persistent_keepalive: NonZeroU16::new(25),
        ..peer(1, 1)
    };
    let cfg = device(vec![p.clone()]);
    let msgs = set_device(&cfg);
    assert_eq!(msgs.len(), 1);
    // sockaddr_in: family (host order), port (network order), address, 8 bytes of zero.
    let mut sockaddr = vec![2, 0, 0xca, 0x6c, 198, 18, 0, 1];
    sockaddr.extend_from_slice(&[0; 8]);
    let allowed = [
        nla(1, &2u16.to_ne_bytes()), // WGALLOWEDIP_A_FAMILY = AF_INET
        nla(2, &[10, 1, 0, 0]),      // WGALLOWEDIP_A_IPADDR
        nla(3, &[24]),               // WGALLOWEDIP_A_CIDR_MASK
    ]
    .concat();
    let peer_attrs = [
        nla(1, p.public_key.as_bytes()),         // WGPEER_A_PUBLIC_KEY
        nla(2, &[1 ^ 0xa5; 32]),                 // WGPEER_A_PRESHARED_KEY
        nla(4, &sockaddr),                       // WGPEER_A_ENDPOINT
        nla(5, &25u16.to_ne_bytes()),            // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL
        nla(3, &2u32.to_ne_bytes()),             // WGPEER_A_FLAGS = REPLACE_ALLOWEDIPS
        nla(9 | NESTED, &nla(NESTED, &allowed)), // WGPEER_A_ALLOWEDIPS
    ]
    .concat();
    let mut payload = vec![1, 1, 0, 0]; // genlmsghdr: WG_CMD_SET_DEVICE, version 1
    for attr in [
        nla(2, b"meshwg0\0"),                       // WGDEVICE_A_IFNAME
        nla(3, &[7; 32]),                           // WGDEVICE_A_PRIVATE_KEY
        nla(6, &51820u16.to_ne_bytes()),            // WGDEVICE_A_LISTEN_PORT
        nla(7, &0x51u32.to_ne_bytes()),             // WGDEVICE_A_FWMARK
        nla(5, &1u32.to_ne_bytes()),                // WGDEVICE_A_FLAGS = REPLACE_PEERS
        nla(8 | NESTED, &nla(NESTED, &peer_attrs)), // WGDEVICE_A_PEERS
    ] {
        payload.extend(attr);
    }
    let bytes = wire(&msgs[0]);
    assert_eq!(&bytes[16..], &payload[..]);
    assert_eq!(bytes.len(), 16 + payload.len());
    assert_eq!(round_trip(&msgs), cfg);
}

#[test]
fn the_first_message_replaces_the_peers_and_carries_the_device() {
    let cfg = device(vec![peer(1, 1), peer(2, 2)]);
    let msgs = set_device(&cfg);
    let expected = WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName("meshwg0".into()),
            WireguardAttribute::PrivateKey([7; 32]),
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Fwmark(0x51),
            WireguardAttribute::Flags(WireguardDeviceFlags::ReplacePeers),
            WireguardAttribute::Peers(
                cfg.peers
                    .iter()
                    .map(|p| {
                        let mut attrs = peer_head(p);
                        attrs.push(WireguardPeerAttribute::AllowedIps(
                            p.allowed_ips.iter().map(allowed_ip).collect(),
                        ));
                        WireguardPeer(attrs)
                    })
                    .collect(),
            ),
        ],
    };
    assert_eq!(msgs, [expected]);
    // No peers at all still replaces them (with none), and no fwmark clears it.
    let empty = DeviceConfig {
        fwmark: None,
        ..device(Vec::new())
    };
    let msgs = set_device(&empty);
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].attributes.contains(&WireguardAttribute::Flags(
        WireguardDeviceFlags::ReplacePeers
    )));
    assert!(msgs[0].attributes.contains(&WireguardAttribute::Fwmark(0)));
    assert!(!msgs[0]
        .attributes
        .iter()
        .any(|a| matches!(a, WireguardAttribute::Peers(_))));
    assert_eq!(round_trip(&msgs), empty);
}

/// Every message fits, every one but the last is nearly full, and only the first carries the
/// device's keys and `REPLACE_PEERS`.
fn check_batches(msgs: &[WireguardMessage], replaces: bool) {
    for (i, m) in msgs.iter().enumerate() {
        let len = wire(m).len();
        assert!(len <= MAX_MESSAGE, "message {i} is {len} bytes");
        if i + 1 < msgs.len() {
            assert!(
                len > MAX_MESSAGE - 256,
                "message {i} closed early at {len} bytes"
            );
        }
        assert_eq!(
            m.attributes[0],
            WireguardAttribute::IfName("meshwg0".into())
        );
        let device_attrs = m.attributes.iter().any(|a| {
            matches!(
                a,
                WireguardAttribute::Flags(_)
                    | WireguardAttribute::PrivateKey(_)
                    | WireguardAttribute::ListenPort(_)
            )
        });
        assert_eq!(device_attrs, replaces && i == 0, "message {i}");
    }
}

#[test]
fn many_peers_are_split_across_messages_and_none_is_lost() {
    let cfg = device((0..400).map(|n| peer(n, 1)).collect());
    let msgs = set_device(&cfg);
    assert!(msgs.len() >= 4, "{} messages", msgs.len());
    check_batches(&msgs, true);
    assert_eq!(round_trip(&msgs), cfg);
}

#[test]
fn a_peer_with_many_allowed_ips_goes_on_in_the_next_message() {
    let cfg = device(vec![peer(1, 3), peer(2, 600), peer(3, 2)]);
    let msgs = set_device(&cfg);
    check_batches(&msgs, true);
    assert!(msgs.len() >= 5, "{} messages", msgs.len());
    // The big peer's later parts are its key and allowed IPs only: no flags (REPLACE_ALLOWEDIPS
    // again would drop the earlier ones), no endpoint or key material.
    let parts: Vec<&WireguardPeer> = msgs
        .iter()
        .flat_map(|m| m.attributes.iter())
        .filter_map(|a| match a {
            WireguardAttribute::Peers(p) => Some(p.iter()),
            _ => None,
        })
        .flatten()
        .filter(|p| p.contains(&WireguardPeerAttribute::PublicKey(*key(2).as_bytes())))
        .collect();
    assert!(parts.len() >= 4);
    assert!(parts[0].contains(&WireguardPeerAttribute::Flags(
        WireguardPeerFlags::ReplaceAllowedIps
    )));
    for part in &parts[1..] {
        assert_eq!(part.len(), 2, "{part:?}");
        assert!(matches!(part[1], WireguardPeerAttribute::AllowedIps(_)));
    }
    assert_eq!(round_trip(&msgs), cfg);
}

#[test]
fn mixed_sizes_round_trip_whatever_the_split() {
    // Peers of 0 to 300 allowed IPs, an IPv6 endpoint among them.
    let mut peers: Vec<PeerConfig> = (0..60).map(|n| peer(n, (n * 37) % 301)).collect();
    peers[5].endpoint = "[2001:db8::5]:51820".parse().unwrap();
    let cfg = device(peers);
    let msgs = set_device(&cfg);
    check_batches(&msgs, true);
    assert_eq!(round_trip(&msgs), cfg);
    let updates = update_peers("meshwg0", &cfg.peers);
    check_batches(&updates, false);
    assert_eq!(round_trip_peers(&updates), cfg.peers);
}

/// The peers a set of messages without device attributes describes.
fn round_trip_peers(msgs: &[WireguardMessage]) -> Vec<PeerConfig> {
    let mut with_device = msgs.to_vec();
    with_device[0].attributes.extend([
        WireguardAttribute::PrivateKey([7; 32]),
        WireguardAttribute::ListenPort(1),
    ]);
    round_trip(&with_device).peers
}

#[test]
fn updates_replace_allowed_ips_but_not_the_peer_set() {
    let msgs = update_peers("meshwg0", &[peer(9, 1)]);
    assert_eq!(msgs.len(), 1);
    let attrs = &msgs[0].attributes;
    assert_eq!(attrs.len(), 2, "{attrs:?}");
    let WireguardAttribute::Peers(peers) = &attrs[1] else {
        panic!("{attrs:?}")
    };
    assert!(peers[0].contains(&WireguardPeerAttribute::Flags(
        WireguardPeerFlags::ReplaceAllowedIps
    )));
}

#[test]
fn removal_names_each_peer_with_remove_me() {
    let msgs = remove_peers("meshwg0", &[key(1), key(2)]);
    let expected = WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName("meshwg0".into()),
            WireguardAttribute::Peers(
                [1, 2]
                    .map(|n| {
                        WireguardPeer(vec![
                            WireguardPeerAttribute::PublicKey(*key(n).as_bytes()),
                            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                        ])
                    })
                    .to_vec(),
            ),
        ],
    };
    assert_eq!(msgs, [expected]);
    // WGPEER_A_FLAGS = WGPEER_F_REMOVE_ME, right after the key, in the bytes.
    let bytes = wire(&msgs[0]);
    let flag = nla(3, &1u32.to_ne_bytes());
    assert!(bytes.windows(flag.len()).any(|w| w == flag));
    // Many removals are split too, and every key is in one of them, once.
    let keys: Vec<PublicKey> = (0..500).map(key).collect();
    let msgs = remove_peers("meshwg0", &keys);
    check_batches(&msgs, false);
    let removed: Vec<PublicKey> = msgs
        .iter()
        .map(|m| unwire(&wire(m)))
        .flat_map(|m| m.attributes)
        .filter_map(|a| match a {
            WireguardAttribute::Peers(p) => Some(p),
            _ => None,
        })
        .flatten()
        .map(|p| match p.0[..] {
            [WireguardPeerAttribute::PublicKey(k), WireguardPeerAttribute::Flags(f)] => {
                assert_eq!(f, WireguardPeerFlags::RemoveMe);
                PublicKey::from_bytes(k)
            }
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(removed, keys);
}

/// What the kernel adds to a dump (`wg show`'s fields) is ignored, and a peer the kernel
/// split across two messages comes back whole.
#[test]
fn a_kernel_dump_parses_into_the_config() {
    let cfg = device(vec![peer(1, 2), peer(2, 3)]);
    let p = |n: usize, ips: std::ops::Range<usize>, head: bool| {
        let c = &cfg.peers[n];
        let mut attrs = vec![WireguardPeerAttribute::PublicKey(*c.public_key.as_bytes())];
        if head {
            attrs.extend([
                WireguardPeerAttribute::PresharedKey(*c.preshared_key),
                WireguardPeerAttribute::LastHandshake(Default::default()),
                WireguardPeerAttribute::PersistentKeepalive(
                    c.persistent_keepalive.map_or(0, NonZeroU16::get),
                ),
                WireguardPeerAttribute::TxBytes(5),
                WireguardPeerAttribute::RxBytes(9),
                WireguardPeerAttribute::ProtocolVersion(1),
                WireguardPeerAttribute::Endpoint(c.endpoint),
            ]);
        }
        attrs.push(WireguardPeerAttribute::AllowedIps(
            c.allowed_ips[ips].iter().map(allowed_ip).collect(),
        ));
        WireguardPeer(attrs)
    };
    let device_attrs = vec![
        WireguardAttribute::IfIndex(7),
        WireguardAttribute::IfName("meshwg0".into()),
        WireguardAttribute::PrivateKey([7; 32]),
        WireguardAttribute::PublicKey([8; 32]),
        WireguardAttribute::ListenPort(51820),
        WireguardAttribute::Fwmark(0x51),
    ];
    let mut first = device_attrs.clone();
    first.push(WireguardAttribute::Peers(vec![
        p(0, 0..2, true),
        p(1, 0..1, true),
    ]));
    let mut second = device_attrs;
    second.push(WireguardAttribute::Peers(vec![p(1, 1..3, false)]));
    let replies = [first, second].map(|attributes| WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes,
    });
    assert_eq!(round_trip(&replies), cfg);
}

#[test]
fn what_meshd_cannot_hold_is_a_precise_error() {
    let mut msgs = set_device(&device(vec![peer(1, 1)]));
    let without_key: Vec<_> = msgs[0]
        .attributes
        .iter()
        .filter(|a| !matches!(a, WireguardAttribute::PrivateKey(_)))
        .cloned()
        .collect();
    let reply = |attributes| {
        [WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes,
        }]
    };
    assert_eq!(
        parse_device(&reply(without_key)).unwrap_err(),
        ParseError::NoPrivateKey
    );
    let WireguardAttribute::Peers(peers) = &mut msgs[0].attributes[5] else {
        panic!()
    };
    peers[0].0.push(WireguardPeerAttribute::AllowedIps(vec![
        WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv6),
            WireguardAllowedIpAttr::IpAddr("fd00::".parse().unwrap()),
            WireguardAllowedIpAttr::Cidr(64),
        ]),
    ]));
    assert_eq!(
        parse_device(&msgs).unwrap_err(),
        ParseError::BadAllowedIp(key(1))
    );
    let WireguardAttribute::Peers(peers) = &mut msgs[0].attributes[5] else {
        panic!()
    };
    peers[0]
        .0
        .retain(|a| !matches!(a, WireguardPeerAttribute::Endpoint(_)));
    peers[0].0.truncate(4);
    assert_eq!(
        parse_device(&msgs).unwrap_err(),
        ParseError::NoEndpoint(key(1))
    );
}
