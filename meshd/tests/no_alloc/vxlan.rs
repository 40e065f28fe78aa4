use super::{allocations_in, packet};
use meshd::datapath::encode::{decode, Encoder};
use meshd::routes::{Local, Peer, Routes};
use meshd::stats::DropTally;
use meshd::wire::{vtep_mac, VxlanHeader};

#[test]
fn encode_and_decode_allocate_nothing_per_packet() {
    let routes = Routes::new(Local {
        name: "a".into(),
        vni: 1,
        port: 8472,
    });
    let peers: Vec<Peer> = (2..50u8)
        .map(|i| Peer {
            name: format!("n{i}"),
            address: format!("198.18.0.{i}").parse().unwrap(),
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
        })
        .collect();
    routes.update(&peers);
    let mut enc = Encoder::new(256 * 1500, 256, 64);
    let mut drops = DropTally::default();
    let outgoing: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            packet(
                [10, 244, 1, 2],
                [10, 244, 2 + (i % 48) as u8, 7],
                1000 + i % 400,
            )
        })
        .collect();
    let hdr = VxlanHeader::new(1, vtep_mac("n7"), vtep_mac("a"));
    let incoming = {
        let p = packet([10, 244, 7, 9], [10, 244, 1, 2], 1200);
        let mut f = vec![0u8; 22 + p.len()];
        hdr.encapsulate(&p, &mut f).unwrap();
        f
    };
    let from = "198.18.0.7".parse().unwrap();

    // One warm-up pass: the first route-table load on a thread sets up arc-swap's per-thread
    // state, an allocation that happens once per worker, not per packet.
    {
        let table = routes.load();
        for p in &outgoing {
            enc.push(&table, p, &mut drops);
        }
        decode(&table, from, 1, &incoming).unwrap();
    }
    let mut delivered = 0usize;
    let allocs = allocations_in(|| {
        for _ in 0..100 {
            let table = routes.load();
            enc.clear();
            for p in &outgoing {
                enc.push(&table, p, &mut drops);
            }
            for _ in 0..256 {
                let (_, inner) = decode(&table, from, 1, &incoming).unwrap();
                delivered += inner.len();
            }
        }
    });

    assert_eq!(enc.runs().iter().map(|r| r.frames).sum::<usize>(), 256);
    assert_eq!(delivered, 100 * 256 * 1220);
    assert_eq!(allocs, 0, "the per-packet path allocated");
}
