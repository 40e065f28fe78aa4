//! What the timer thread logs names the peer: boringtun's own messages (a handshake retry, an
//! expiry) do not, so an operator could not tell which peer is unreachable.

use super::{packet, pair};
use crate::datapath::wireguard::{timers, SCRATCH_LEN};
use crate::stats::Stamp;
use meshd_crypto::Action;
use std::time::Duration;

/// WireGuard's REKEY_TIMEOUT (5 s), after which an unanswered initiation is sent again, with
/// room for boringtun's 250 ms timer resolution.
const PAST_REKEY_TIMEOUT: Duration = Duration::from_millis(5_600);

#[test]
fn handshake_retries_name_the_peer() {
    let (retry, logs) = crate::testlog::capture(tracing::Level::WARN, || {
        // The sessions (and their spans) are made under the capturing subscriber.
        let (a, _b) = pair();
        // A's initiation is never answered: B does not receive it.
        let init = a.send(&[packet([10, 244, 1, 2], [10, 244, 2, 3], 100)]);
        assert_eq!(init.len(), 1);
        std::thread::sleep(PAST_REKEY_TIMEOUT);
        let table = a.routes().load();
        let wg = table.peer(0).wg.clone().unwrap();
        timers(
            table.peer(0),
            &wg,
            Stamp::now(),
            &mut vec![0u8; SCRATCH_LEN],
        )
    });
    assert!(
        matches!(retry, Action::WriteToNetwork(148)),
        "no retried initiation"
    );
    let retries: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("REKEY_TIMEOUT"))
        .collect();
    assert!(!retries.is_empty(), "boringtun logged no retry: {logs}");
    assert!(retries.iter().all(|l| l.contains("peer=n2")), "{logs}");
}
