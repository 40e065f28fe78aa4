//! Any text as meshd's config file or as a `--peer` value: parsing and validation never panic,
//! a rejected file names a key, and what validates has the properties `run` relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::config::{parse_peer_flag, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(c) => match c.validate() {
            Ok(()) => {
                // What run computes from a valid config must be sane.
                assert!(c.overlay_mtu() >= 576, "{}", c.overlay_mtu());
                assert!(c.data_port() != 0);
                assert!(c.queue_count() >= 1);
            }
            Err(e) => assert!(!e.key.is_empty(), "{e}"),
        },
        Err(e) => assert!(!e.key.is_empty(), "{e}"),
    }
    if let Ok(p) = parse_peer_flag(text) {
        assert!(text.contains("name=") && text.contains("address=") && text.contains("subnet="));
        let _ = p.key();
    }
});
