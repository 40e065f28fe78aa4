//! meshd: a userspace overlay mesh for container clusters.
//!
//! This library holds everything the `meshd` binary does, so tests and the lab can drive it.
//! A pod packet's tour: [`datapath::worker`] reads it from the TUN device, [`routes`] finds its
//! peer, an [`datapath::Encap`] ([`datapath::vxlan`] or [`datapath::wireguard`]) puts it in a
//! datagram, [`datapath::runs`] groups datagrams for one GSO send; the way back is the same in
//! reverse. The control plane: [`config`], the [`daemon`] sequence, the peer set ([`peers`]) and
//! its one receiver ([`backend`]), host setup over netlink ([`host`]), the status API
//! ([`status`]), `/metrics` and the picture of the mesh ([`picture`]) on a small HTTP listener
//! ([`http`]), `meshd ping` ([`ping`]) and the files other programs read ([`runfiles`]). It deliberately holds no
//! protocol state machine that reads the clock or owns sockets outside the data path: gossip and
//! crypto are crates of their own, and the local lab is `meshd-lab`.

pub mod backend;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod host;
pub mod http;
pub(crate) mod kernel;
pub mod link;
pub(crate) mod metrics;
pub mod paths;
pub mod peers;
pub mod picture;
pub mod ping;
pub(crate) mod relay;
pub mod routes;
pub mod runfiles;
pub mod stats;
pub mod status;
#[cfg(test)]
pub(crate) mod testlog;
pub mod tiers;
pub mod wire;
