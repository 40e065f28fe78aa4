//! The kernel fast path: netlink state that lets the kernel carry a peer's packets itself.

pub mod wireguard;
