//! Any bytes from the underlay: the VXLAN view and the receive decoder never panic, and what
//! they accept is consistent (the inner packet lies inside the datagram, its source lies in the
//! sending peer's subnet).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::datapath::vxlan::decode;
use meshd::peers::Peer;
use meshd::routes::{Local, Routes};
use meshd::wire::VxlanFrame;
use std::net::IpAddr;
use std::sync::OnceLock;

fn routes() -> &'static Routes {
    static R: OnceLock<Routes> = OnceLock::new();
    R.get_or_init(|| {
        let r = Routes::new(Local { name: "a".into(), vni: 1, port: 8472 });
        r.install_clear(&[Peer::clear(
            "b",
            "198.18.0.2:8472".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
        )]);
        r
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = VxlanFrame::new_checked(data, 1) {
        assert!(f.packet().len() <= data.len());
        let _ = (f.vni(), f.src_mac(), f.dst_mac(), f.addrs());
    }
    let table = routes().load();
    let from: IpAddr = "198.18.0.2".parse().unwrap();
    if let Ok((peer, packet)) = decode(&table, from, 1, data) {
        let p = table.peer(peer);
        let src = meshd::wire::inner_addrs(packet).unwrap().src;
        assert!(matches!(src, IpAddr::V4(v4) if p.subnet.contains(&v4)));
    }
});
