//! Checked views over the bytes meshd puts on and takes off the wire.
//!
//! Every parser here validates lengths once in `new_checked` and then reads named byte ranges;
//! nothing in this module allocates, so the data path can call it per packet.

pub mod checksum;
pub mod ip;
pub mod mac;
pub mod vxlan;

pub use ip::{inner_addrs, InnerAddrs};
pub use mac::{derived_mac, vtep_mac, MacAddr};
pub use vxlan::{FrameError, VxlanFrame, VxlanHeader, VXLAN_OVERHEAD};
