//! The kernel fast path: netlink state that carries pod packets without meshd in the way.
//! A kernel backend is not a loop: it is a device plus per-peer objects (FDB and neighbour
//! entries, routes, WireGuard peers) reconciled from the peer set by [`crate::paths`], which
//! also decides, per peer and on probe evidence, which path its packets take.
//!
//! What the kernel VXLAN device receives is held to the userspace path's rule (a peer speaks
//! only for its subnet) by meshd's own nftables table ([`nft`], [`source_check`], kept by
//! [`table`]), which also counts the pod traffic kernel paths carry per peer ([`traffic`]),
//! masquerades pod traffic leaving the cluster ([`egress`]) and clamps the MSS of TCP SYNs
//! into the overlay ([`mss`]), on every data path.
//!
//! Everything is found out by trying: creating the device is the detection, and a refusal is
//! kept with the kernel's own words ([`Refusal`]) for `meshd status`.

pub(crate) mod egress;
pub(crate) mod ethtool;
#[cfg(test)]
pub(crate) mod fresh_netns;
pub(crate) mod mss;
pub(crate) mod nft;
pub(crate) mod notrack;
pub(crate) mod probe;
pub(crate) mod routes;
pub(crate) mod source_check;
pub(crate) mod table;
pub(crate) mod traffic;
pub(crate) mod vxlan;
pub(crate) mod wireguard;

/// Why the kernel would not do something: its errno, when there is one, and its text. The same
/// type the data path's tiers report refusals with.
pub(crate) use crate::tiers::OsError as Refusal;

/// Set `rp_filter` of `dev` to loose (2). With paths chosen per peer and per direction, a
/// peer's packets may arrive on one device (the TUN device, the VXLAN device, the underlay)
/// while the route back to it leaves by another; strict reverse-path filtering would drop them.
/// The kernel uses the larger of `all` and the device's value, so this makes either loose.
/// Best effort: in a container `/proc/sys` is often read-only, and the runtime's value stands.
pub(crate) fn loose_rp_filter(dev: &str) {
    let path = format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "2" || v.trim() == "0") {
        return;
    }
    if let Err(e) = std::fs::write(&path, "2") {
        tracing::warn!(%dev, error = %e, "could not set rp_filter to loose (2): asymmetric per-peer paths may be dropped by reverse-path filtering");
    }
}

/// Attach classic BPF program `prog` to socket `fd` as `option`: `SO_ATTACH_FILTER` (what the
/// socket queues) or `SO_ATTACH_REUSEPORT_CBPF` (which member of its reuseport group receives).
pub(crate) fn attach_cbpf(
    fd: &impl std::os::fd::AsRawFd,
    option: libc::c_int,
    prog: &mut [libc::sock_filter],
) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: a valid descriptor and a sock_fprog pointing at `prog`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refusals_read_like_the_kernel() {
        let r = Refusal::from_errno(95);
        assert_eq!(r.errno, Some(95));
        assert_eq!(r.to_string(), "Operation not supported");
        assert_eq!(
            Refusal::from_errno(98).to_string(),
            "Address already in use"
        );
    }
}
