use super::{allocations_in, clear_routes, packet};
use meshd::datapath::runs::Runs;
use meshd::datapath::vxlan::Vxlan;
use meshd::datapath::worker::encode_batch;
use meshd::datapath::{Encap, Received, Rx};
use meshd::stats::{DropTally, Stamp};
use meshd::wire::{vtep_mac, VxlanHeader};

#[test]
fn encode_and_decode_allocate_nothing_per_packet() {
    let routes = clear_routes();
    let vxlan = Vxlan { vni: 1 };
    let mut enc = Runs::new(256, 1500, 64);
    let mut out = vec![0u8; 1500];
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
    let from = "198.18.0.7:8472".parse().unwrap();

    // One warm-up pass: the first route-table load on a thread sets up arc-swap's per-thread
    // state, an allocation that happens once per worker, not per packet.
    let mut no_reply = |_: &[u8], _| {};
    let mut rx = Rx {
        scratch: (),
        drops: DropTally::default(),
        reply: &mut no_reply,
        now: Stamp::now(),
    };
    let mut receive = |table: &meshd::routes::RouteTable, out: &mut [u8]| {
        let r = vxlan.receive(&mut rx, table, from, &incoming, out);
        match r {
            Received::Deliver { len, .. } | Received::Inside { len, .. } => len,
            Received::Nothing => 0,
        }
    };
    // One TX batch and 256 receives; returns the bytes delivered.
    let mut round = |enc: &mut Runs, out: &mut [u8]| {
        let table = routes.load();
        enc.clear();
        let packets = outgoing.iter().map(|p| &p[..]);
        encode_batch(&vxlan, &table, packets, enc, &mut drops, 0);
        (0..256).map(|_| receive(&table, out)).sum::<usize>()
    };
    assert_eq!(round(&mut enc, &mut out), 256 * 1220);
    let mut delivered = 0usize;
    let allocs = allocations_in(|| {
        for _ in 0..100 {
            delivered += round(&mut enc, &mut out);
        }
    });

    assert_eq!(enc.runs().iter().map(|r| r.datagrams).sum::<usize>(), 256);
    assert_eq!(delivered, 100 * 256 * 1220);
    assert_eq!(allocs, 0, "the per-packet path allocated");
}
