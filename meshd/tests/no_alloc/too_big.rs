use super::{allocations_in, clear_routes, packet};
use meshd::datapath::runs::Runs;
use meshd::datapath::vxlan::Vxlan;
use meshd::datapath::worker::encode_batch;
use meshd::stats::DropTally;

/// Packets larger than their peer's path MTU: those with DF set dropped and answered with
/// "fragmentation needed" (written into each batch's room), those without sent; neither
/// allocates.
#[test]
fn packets_over_a_peers_path_mtu_are_answered_without_allocating() {
    let routes = clear_routes();
    routes.load().set_mtus(1230);
    let vxlan = Vxlan { vni: 1 };
    let mut enc = Runs::new(256, 1500, 64);
    let mut drops = DropTally::default();
    // Flows of TSO-sized segments (DF set, as TCP's), every fourth one without DF.
    let outgoing: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            let mut p = packet([10, 244, 1, 2], [10, 244, 2 + (i / 16 % 48) as u8, 7], 1380);
            p[9] = 6;
            p[6] = if i % 4 == 0 { 0 } else { 0x40 };
            p
        })
        .collect();
    let mut round = |enc: &mut Runs| {
        let table = routes.load();
        enc.clear();
        encode_batch(
            &vxlan,
            &table,
            outgoing.iter().map(|p| &p[..]),
            enc,
            &mut drops,
            0,
        );
        let answered = enc.too_big().answers().count();
        enc.too_big().clear();
        let sent: usize = enc.runs().iter().map(|r| r.datagrams).sum();
        (sent, answered)
    };
    assert_eq!(round(&mut enc), (64, 16));
    let mut totals = (0, 0);
    let allocs = allocations_in(|| {
        for _ in 0..100 {
            let (s, a) = round(&mut enc);
            totals = (totals.0 + s, totals.1 + a);
        }
    });
    assert_eq!(totals, (100 * 64, 100 * 16));
    assert_eq!(allocs, 0, "the too-big path allocated");
}
