//! Any bytes as the head of a request to meshd's HTTP listener (`metrics-address`, reachable by
//! whoever can reach that address): the parser never panics; a head that has ended is either a
//! GET or HEAD of a path that starts with `/` and holds no query, which printed back as a request
//! line parses to the same request, or it is refused with an error status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd::http::{parse_head, Method, Status};

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = parse_head(data) else {
        return;
    };
    match parsed {
        Ok(r) => {
            assert!(r.path.starts_with('/'), "{r:?}");
            assert!(!r.path.contains(['?', ' ']), "{r:?}");
            let method = match r.method {
                Method::Get => "GET",
                Method::Head => "HEAD",
            };
            let query = match r.query.as_str() {
                "" => String::new(),
                q => format!("?{q}"),
            };
            let line = format!("{method} {}{query} HTTP/1.1\r\n\r\n", r.path);
            assert_eq!(parse_head(line.as_bytes()), Some(Ok(r)), "{line:?}");
        }
        Err(status) => assert_ne!(status, Status::Ok),
    }
});
