//! Fuzz the checked WireGuard datagram view: it must never panic, and whatever it accepts must
//! have consistent accessors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_crypto::wire::{local_index_of, MessageType, WgDatagram};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = WgDatagram::new_checked(data) {
        let receiver = d.receiver_index();
        let sender = d.sender_index();
        match d.message_type() {
            MessageType::Initiation => assert!(receiver.is_none() && sender.is_some()),
            MessageType::Response => assert!(receiver.is_some() && sender.is_some()),
            MessageType::CookieReply => assert!(receiver.is_some() && sender.is_none()),
            MessageType::Data => assert!(d.data_counter().is_some()),
        }
        if let Some(r) = receiver {
            let _ = local_index_of(r);
        }
    }
});
