//! End-to-end tests: real namespaces, veth pairs, TUN devices, kernel VXLAN devices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_input;
mod claims;
mod cluster;
mod compose;
mod config;
mod contract;
mod deploy;
mod encrypted;
mod faults;
mod flows;
mod gossip;
mod host_faults;
mod interop;
mod kernel_paths;
mod kernel_receivers;
mod kernel_trust;
mod lifecycle;
mod listener;
mod messages;
mod metrics;
mod observe;
mod ordering;
mod peer_links;
mod picture;
mod ping;
mod reload;
mod rotation;
mod support;
mod trust;
mod unit_limits;
mod wg_interop;
mod wg_security;
mod wg_spoof;
mod wg_steering;
