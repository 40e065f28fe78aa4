//! meshd-cni: the CNI plugin that wires pods to the meshd node bridge.
//!
//! It speaks the CNI protocol (spec 1.1: ADD, DEL, CHECK, VERSION, GC, STATUS; results in
//! 1.1.0, 1.0.0, 0.4.0, 0.3.1 and 0.3.0): a veth pair from the node bridge into the pod's
//! network namespace, an address from the node subnet held in its own file-locked IPAM store
//! (one pool for every network name on the node), and a default route via the bridge unless the
//! pod has one. It reads the subnet, bridge and MTU from meshd's runtime file
//! (`/run/meshd/network.json`), asks meshd's control socket whether meshd is alive, and talks to
//! nothing else but the kernel (rtnetlink) and its own state directory. It deliberately does not
//! create the bridge, route between nodes or masquerade: those are meshd's. Errors become the
//! spec's JSON in one place, [`error::Error::to_json`].

pub mod cmd;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod link;
pub mod liveness;
pub mod netns;
pub mod node;
pub mod result;
pub mod version;

pub use cmd::run;
