//! Why kernel WireGuard cannot be used here ([`Unavailable`], a fallback to userspace, worth a
//! line in `meshd status`) and what else can go wrong driving the device ([`Error`]).

use std::fmt;

use super::message::ParseError;

/// Why this node cannot have a kernel WireGuard device. Printed as
/// `kernel wireguard unavailable (Operation not supported)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unavailable {
    /// The kernel refused a link of kind `wireguard`: `errno` is its netlink error
    /// (`EOPNOTSUPP` without the module, `EPERM` without CAP_NET_ADMIN).
    #[error("kernel wireguard unavailable ({})", errno_message(*errno))]
    LinkRefused { errno: i32 },
    /// The link was made but generic netlink has no `wireguard` family to configure it with.
    #[error("kernel wireguard unavailable (generic netlink family wireguard not found)")]
    NoFamily,
    /// Netlink itself failed while trying (a socket, an unexpected answer): `detail` says how.
    #[error("kernel wireguard unavailable (netlink: {detail})")]
    Netlink { detail: String },
}

impl Unavailable {
    /// The netlink errno behind the reason, if there is one.
    #[cfg(test)]
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Unavailable::LinkRefused { errno } => Some(*errno),
            Unavailable::NoFamily => Some(libc::ENOENT),
            Unavailable::Netlink { .. } => None,
        }
    }
}

/// What can fail opening or configuring the device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// This kernel cannot hold the device: fall back to userspace.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The interface name is empty, longer than 15 bytes, or holds a `/`, a NUL or a space.
    #[error("`{0}` is not a valid interface name (1 to 15 bytes, no `/`, NUL or whitespace)")]
    BadName(String),
    /// A link of that name exists and is not a WireGuard device.
    #[error("link `{0}` exists and is not a WireGuard device; choose another name or remove it")]
    WrongKind(String),
    /// A WireGuard link of that name exists and meshd did not make it.
    #[error("link `{0}` was not created by meshd (no `meshd` alias); leaving it alone")]
    NotOurs(String),
    /// [`super::KernelWireguard::sync`] was given another device's configuration.
    #[error("configuration for `{given}` handed to device `{device}`")]
    OtherDevice { device: String, given: String },
    /// The kernel answered a request with an error.
    #[error("{what}: {}", errno_message(*errno))]
    Refused { what: String, errno: i32 },
    /// Talking to the kernel failed (a socket error, no answer in time).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Netlink failed without a kernel errno: an answer that does not decode, an unexpected
    /// message, a closed connection.
    #[error("{what}: {detail}")]
    Netlink { what: String, detail: String },
    /// A `WG_CMD_GET_DEVICE` answer that does not describe a device meshd configures.
    #[error("reading the device: {0}")]
    Parse(#[from] ParseError),
}

/// The C library's text for `errno`, without Rust's ` (os error N)` suffix: what `ip` prints.
pub(crate) fn errno_message(errno: i32) -> String {
    crate::kernel::Refusal::from_errno(errno).message
}

/// An rtnetlink failure as an errno when the kernel gave one, else as text.
pub(super) fn rtnetlink_errno(e: &rtnetlink::Error) -> Result<i32, String> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => Ok(m.raw_code().abs()),
        other => Err(other.to_string()),
    }
}

pub(super) fn rtnetlink_error(what: impl fmt::Display, e: rtnetlink::Error) -> Error {
    match rtnetlink_errno(&e) {
        Ok(errno) => Error::Refused {
            what: what.to_string(),
            errno,
        },
        Err(detail) => Error::Netlink {
            what: what.to_string(),
            detail,
        },
    }
}
