//! meshd: a userspace overlay mesh for container clusters.
//!
//! This library holds everything the `meshd` binary does, so tests and the lab can drive it:
//! configuration, the wire format, the route table, the data-path workers, host setup over
//! netlink, and the status API. It deliberately holds no protocol state machine
//! that reads the clock or owns sockets outside the data path: gossip and crypto are crates of
//! their own.

pub mod config;
pub mod daemon;
pub mod datapath;
pub mod gossip;
pub mod host;
pub mod routes;
pub mod runfiles;
pub mod secrets;
pub mod stats;
pub mod status;
pub mod wire;
