//! The WireGuard link itself, over rtnetlink as [`crate::host`] does: made with meshd's alias
//! (or adopted when a previous run left it), deleted on cleanup, and [`detect`]: whether this
//! kernel can hold one at all, found by making a throwaway link rather than by reading a kernel
//! version.

use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkWireguard};

use super::error::{rtnetlink_errno, rtnetlink_error, Error, Unavailable};
use super::genl::Genl;
use crate::host::OWNER_ALIAS;

/// Whether this node can have a kernel WireGuard device: makes a link of kind `wireguard` under
/// a name of its own, checks that generic netlink can configure it, and deletes it again.
/// Needs a tokio runtime; leaves nothing behind, whatever the answer.
pub(crate) async fn detect() -> Result<(), Unavailable> {
    let handle = connect().map_err(|e| Unavailable::Netlink {
        detail: e.to_string(),
    })?;
    let name = probe_name();
    add(&handle, &name, None).await?;
    // From here on the link exists: every way out deletes it.
    let checked = match Genl::connect() {
        Ok(_) => Ok(()),
        Err(Error::Unavailable(u)) => Err(u),
        Err(e) => Err(Unavailable::Netlink {
            detail: e.to_string(),
        }),
    };
    let deleted = delete(&handle, &name).await;
    checked?;
    deleted.map_err(|e| Unavailable::Netlink {
        detail: format!("deleting the probe link `{name}`: {e}"),
    })
}

/// Deletes WireGuard link `ifname` if it exists and meshd made it; true when it was deleted.
/// A link of that name that is not ours, or not WireGuard, is an error and stays.
pub(crate) async fn remove_device(ifname: &str) -> Result<bool, Error> {
    let handle = connect()?;
    let Some(link) = find(&handle, ifname).await? else {
        return Ok(false);
    };
    check_ours(ifname, &link)?;
    handle
        .link()
        .del(link.header.index)
        .execute()
        .await
        .map_err(|e| rtnetlink_error(format_args!("deleting `{ifname}`"), e))?;
    Ok(true)
}

/// Link `ifname` up with `mtu` and meshd's alias: made, or adopted when a previous run left it.
/// Returns its index and whether it was adopted. Making it fails with [`Unavailable`] on a
/// kernel without WireGuard, and leaves nothing behind.
pub(super) async fn create_or_adopt(
    handle: &Handle,
    ifname: &str,
    mtu: u16,
) -> Result<(u32, bool), Error> {
    if let Some(link) = find(handle, ifname).await? {
        check_ours(ifname, &link)?;
        let index = link.header.index;
        set_up(handle, ifname, index, mtu, false).await?;
        return Ok((index, true));
    }
    add(handle, ifname, Some(mtu)).await?;
    let made = async {
        let index = find(handle, ifname)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("creating `{ifname}`"),
                detail: "the new link disappeared".into(),
            })?
            .header
            .index;
        set_up(handle, ifname, index, mtu, true).await?;
        Ok(index)
    };
    match made.await {
        Ok(index) => Ok((index, false)),
        Err(e) => {
            // Best effort: the error that matters is the one that stopped us.
            let _ = delete(handle, ifname).await;
            Err(e)
        }
    }
}

/// Deletes link `ifname` (one this module just made).
pub(super) async fn delete(handle: &Handle, ifname: &str) -> Result<(), Error> {
    let Some(link) = find(handle, ifname).await? else {
        return Ok(());
    };
    handle
        .link()
        .del(link.header.index)
        .execute()
        .await
        .map_err(|e| rtnetlink_error(format_args!("deleting `{ifname}`"), e))
}

/// A netlink connection in the current network namespace. Needs a tokio runtime.
pub(super) fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
        what: "opening a netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Makes a link of kind `wireguard`; the kernel's refusal is the reason it is unavailable.
async fn add(handle: &Handle, ifname: &str, mtu: Option<u16>) -> Result<(), Unavailable> {
    let mut msg = LinkWireguard::new(ifname);
    if let Some(mtu) = mtu {
        msg = msg.mtu(u32::from(mtu));
    }
    match handle.link().add(msg.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => Err(match rtnetlink_errno(&e) {
            Ok(errno) => Unavailable::LinkRefused { errno },
            Err(detail) => Unavailable::Netlink { detail },
        }),
    }
}

/// Brings the link up with `mtu`; a link we just made also gets our alias, which the kernel
/// ignores at creation.
async fn set_up(
    handle: &Handle,
    ifname: &str,
    index: u32,
    mtu: u16,
    alias: bool,
) -> Result<(), Error> {
    let mut msg = LinkUnspec::new_with_index(index).up().mtu(u32::from(mtu));
    if alias {
        msg = msg.alias(OWNER_ALIAS);
    }
    handle
        .link()
        .set(msg.build())
        .execute()
        .await
        .map_err(|e| rtnetlink_error(format_args!("bringing `{ifname}` up"), e))
}

/// The link called `ifname`, if there is one.
pub(super) async fn find(handle: &Handle, ifname: &str) -> Result<Option<LinkMessage>, Error> {
    let mut links = handle.link().get().match_name(ifname.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if rtnetlink_errno(&e) == Ok(libc::ENODEV) => Ok(None),
        Err(e) => Err(rtnetlink_error(
            format_args!("looking up link `{ifname}`"),
            e,
        )),
    }
}

fn check_ours(ifname: &str, link: &LinkMessage) -> Result<(), Error> {
    let wireguard = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Wireguard))),
        _ => false,
    });
    if !wireguard {
        return Err(Error::WrongKind(ifname.to_string()));
    }
    let ours = link
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::IfAlias(s) if s == OWNER_ALIAS));
    if !ours {
        return Err(Error::NotOurs(ifname.to_string()));
    }
    Ok(())
}

/// A link name no other prober uses at the same time: this process and a counter, 15 bytes.
fn probe_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = (std::process::id() << 8) ^ n;
    format!("mwgprobe{:07x}", id & 0x0fff_ffff)
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
