//! Fuzz the CNI plugin's parsers of untrusted input: the network configuration on stdin (with
//! its prevResult), and the names a runtime passes in the environment. They must never panic,
//! and whatever they accept must satisfy the invariants the verbs rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_cni::config;
use meshd_cni::env::{validate_ifname, validate_name};
use meshd_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    let _ = config::sniff_version(data);
    if let Ok(conf) = config::parse(data) {
        assert!(validate_name(&conf.name).is_ok());
        assert!(conf.data_dir.is_absolute() && conf.runtime_dir.is_absolute());
        if let Some(prev) = &conf.prev_result {
            if let Ok(r) = CniResult::from_prev(prev) {
                for ip in &r.ips {
                    assert!(ip.interface.is_none_or(|i| i < r.interfaces.len()));
                }
                let _ = r.to_json(conf.version);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if validate_ifname(s).is_ok() {
            assert!(!s.is_empty() && s.len() <= 15 && !s.contains('/'));
        }
        let _ = validate_name(s);
    }
});
