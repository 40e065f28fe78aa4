//! Fuzz `GossipSealer::open` with arbitrary datagrams, both raw and with a valid-looking
//! header (right version and key id, fresh timestamp) so the fuzzer reaches the AEAD and the
//! replay window. Nothing may panic, and nothing forged may open.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use meshd_crypto::kdf::gossip_key_id;
use meshd_crypto::sealer::{self, FORMAT_VERSION, HEADER_LEN};
use meshd_crypto::{ClusterSecret, GossipSealer, Keyring, SealerConfig};

fuzz_target!(|data: &[u8]| {
    let secret = ClusterSecret::from_bytes([0x11; 32]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut rx = GossipSealer::with_sender_id(&Keyring::single(secret.clone()), SealerConfig::default(), 1);
    let mut out = [0u8; 2048];
    let _ = rx.open(data, &mut out, now);

    if data.len() >= HEADER_LEN {
        let mut d = data.to_vec();
        d[sealer::VERSION].fill(FORMAT_VERSION);
        d[sealer::RESERVED].fill(0);
        d[sealer::KEY_ID].copy_from_slice(&gossip_key_id(&secret));
        d[sealer::TIMESTAMP].copy_from_slice(&1_700_000_000_000u64.to_le_bytes());
        assert!(rx.open(&d, &mut out, now).is_err(), "forged datagram opened");
    }
});
