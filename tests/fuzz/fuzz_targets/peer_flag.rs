//! Any text as a `--peer` value: the parser never panics, an error says something, a parsed
//! peer prints back to a flag that parses to the same peer, and a config holding it validates
//! or is refused with a key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::config::{parse_peer_flag, Config};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let peer = match parse_peer_flag(text) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let Ok(Value::Object(fields)) = serde_json::to_value(&peer) else {
        panic!("a parsed peer does not serialise to a table");
    };
    let flag: Vec<String> = ["name", "address", "subnet", "public-key"]
        .iter()
        .filter_map(|k| Some(format!("{k}={}", fields.get(*k)?.as_str()?)))
        .collect();
    let again = parse_peer_flag(&flag.join(","));
    assert_eq!(again.as_ref(), Ok(&peer), "{flag:?}");
    let config = json!({"node-name": "fuzz", "address": "198.18.0.1", "peers": [fields]});
    if let Ok(c) = serde_json::from_value::<Config>(config) {
        if let Err(e) = c.validate() {
            assert!(!e.key.is_empty(), "{e}");
        }
    }
});
