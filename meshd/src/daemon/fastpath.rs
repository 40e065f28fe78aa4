//! The kernel fast path at start-up: find out, by trying, what the kernel will carry for this
//! node (a VXLAN device in cleartext mode, a WireGuard device in encrypted mode), adopt what a
//! previous meshd left, and describe it for `meshd status`. With `datapath = "kernel"` a kernel
//! that refuses is fatal here, with its reason; with `auto` the node falls back to userspace.
//! The kernel VXLAN device comes up only behind meshd's inner-source check
//! ([`crate::kernel::source_check`]): a node that cannot write it (no `nft`, no nf_tables) runs
//! every peer on the userspace path, which checks every datagram itself. Whatever the mode,
//! meshd's nftables table is written here first ([`Table`]: masquerade, and those checks), then
//! kept by the path manager.

use anyhow::{bail, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::config::{Config, Datapath, Encryption};
use crate::host::Host;
use crate::kernel::nft;
use crate::kernel::source_check::{self, SourceRule, VxlanSources};
use crate::kernel::table::Table;
use crate::kernel::vxlan::{self, Origin, VxlanDevice, VxlanSpec};
use crate::kernel::wireguard::{Error as WgError, KernelWireguard, Unavailable};
use crate::kernel::{routes, Refusal};
use crate::paths::manager::{Setup, SourceCheck};
use crate::paths::NotOffered;
use crate::stats::PeerStats;
use crate::status::KernelStatus;
use crate::wire::{vtep_mac, MacAddr};

/// Set up the kernel side; the result goes to the path manager, the status to the report.
/// `unattributed` counts the VXLAN the kernel refuses from addresses that are no peer's.
pub(crate) async fn prepare(
    cfg: &Config,
    address: IpAddr,
    unattributed: Arc<PeerStats>,
) -> Result<(Setup, KernelStatus)> {
    let host = Host::connect()?;
    let local = match address {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let underlay_index = vxlan::underlay_index(&host, local).await;
    let underlay_mac = match underlay_index {
        Some(i) => link_mac(&host, i).await,
        None => None,
    };
    let cleartext = cfg.encryption == Encryption::None;
    let mut adopted = Vec::new();
    let mut sources = None;
    let mut table = Table::new(cfg);
    let vxlan = if !cleartext {
        remove_stale_vxlan(&host, cfg).await;
        Err(NotOffered::Config("encryption = \"wireguard\"".into()))
    } else if cfg.datapath == Datapath::Userspace {
        remove_stale_vxlan(&host, cfg).await;
        Err(NotOffered::Config("datapath = \"userspace\"".into()))
    } else if local.is_unspecified() {
        Err(NotOffered::Refused(Refusal::new(
            "an IPv6 underlay address (kernel VXLAN is set up for IPv4 only)",
        )))
    } else {
        let spec = VxlanSpec {
            name: cfg.vxlan.device.clone(),
            vni: cfg.vxlan.vni,
            port: cfg.vxlan.port,
            local,
            mac: vtep_mac(&cfg.node_name),
            mtu: cfg.overlay_mtu(),
        };
        // The check first: the device receives from the moment it is up.
        let made = match check_sources(&mut table, cfg.vxlan.port) {
            Ok(rules) => {
                let made = vxlan::ensure(&host, &spec).await;
                if made.is_ok() {
                    sources = Some(SourceCheck::new(cfg.vxlan.port, rules, Some(unattributed)));
                }
                // Otherwise the checks go below: left in place they would drop what the
                // userspace path should receive.
                made
            }
            Err(why) => {
                remove_stale_vxlan(&host, cfg).await;
                Err(Refusal::new(format!(
                    "the inner sources it would receive cannot be checked: {why}"
                )))
            }
        };
        match made {
            Ok(dev) => {
                if dev.origin == Origin::Adopted {
                    adopted.push(format!("device {}", dev.name));
                }
                Ok(dev)
            }
            Err(r) if cfg.datapath == Datapath::Kernel => bail!(
                "datapath = \"kernel\": the kernel would not make the VXLAN device `{}`: {r}",
                spec.name
            ),
            Err(r) => {
                tracing::warn!(device = %spec.name, reason = %r, "kernel VXLAN unavailable: every peer uses the userspace path");
                Err(NotOffered::Refused(r))
            }
        }
    };
    if sources.is_none() {
        // No kernel VXLAN: the table without its checks (a previous meshd's go with them). A
        // failure is logged by the table and shown by the status.
        let _ = table.write(table.compose(None, None, []));
    }
    let wireguard = wireguard(cfg).await?;
    let wireguard_text = match &wireguard {
        Ok(dev) => format!(
            "in use: {} ({}; every peer)",
            dev.ifname(),
            if dev.adopted() { "adopted" } else { "created" }
        ),
        Err(n) => not_offered_text("kernel wireguard", n),
    };
    if wireguard.as_ref().is_ok_and(|d| d.adopted()) {
        adopted.push(format!("device {}", cfg.wireguard.device));
    }
    let status = KernelStatus {
        datapath: cfg.datapath.as_str().into(),
        vxlan: vxlan_text(&vxlan),
        wireguard: wireguard_text,
        host_gw: if cfg.host_gw { "on" } else { "off" }.into(),
        adopted,
        moves: 0,
    };
    let setup = Setup {
        host,
        mode: cfg.datapath,
        encryption: cfg.encryption,
        host_gw: cfg.host_gw,
        local,
        underlay_index,
        underlay_mac,
        tun: cfg.tun.clone(),
        pod_mtu: cfg.overlay_mtu(),
        mtu: cfg
            .mtu_searched()
            .then(|| (cfg.mtu_floor(), cfg.overlay_mtu())),
        vxlan,
        wireguard,
        crypto: None,
        wireguard_port: cfg.wireguard.port,
        sources,
        table,
    };
    Ok((setup, status))
}

/// Write meshd's nftables table with the inner-source checks of a previous meshd's table, if
/// it left one (its peers keep their traffic while this meshd learns of them again), else with
/// none (every VXLAN datagram refused until the peers are known, as the userspace path refuses
/// unknown sources). `Err` says why it cannot be done: no `nft`, no nf_tables.
fn check_sources(table: &mut Table, port: u16) -> Result<Vec<SourceRule>, nft::NftError> {
    let rules = match nft::list()? {
        Some(table) => source_check::adopted(&nft::counters(&table)),
        None => Vec::new(),
    };
    if !rules.is_empty() {
        tracing::info!(
            peers = rules.len(),
            "adopted the inner-source checks a previous meshd left"
        );
    }
    let checks = VxlanSources::new(port, rules.iter().copied());
    table.write(table.compose(Some(checks), None, []))?;
    Ok(rules)
}

/// What this node tells the cluster it can do: its wire format, and whether it receives VXLAN
/// in its kernel (peers on a veth underlay then need not checksum in software for it).
pub(crate) fn capabilities(cfg: &Config, setup: &Setup) -> meshd_gossip::Capabilities {
    use meshd_gossip::Capabilities as C;
    let mut bits = match cfg.encryption {
        Encryption::Wireguard => C::ENCRYPTION_WIREGUARD,
        Encryption::None => C::ENCRYPTION_NONE,
    };
    if setup.vxlan.is_ok() {
        bits |= C::KERNEL_VXLAN;
    }
    if setup.wireguard.is_ok() {
        bits |= C::KERNEL_WIREGUARD;
    }
    C(bits)
}

/// Kernel WireGuard, a whole-node choice: one device owns the WireGuard port and every
/// session, so either every peer goes through it or none does. Tried by making a throwaway
/// device; `kernel` mode fails here when the kernel will not.
async fn wireguard(cfg: &Config) -> Result<Result<KernelWireguard, NotOffered>> {
    if cfg.encryption != Encryption::Wireguard {
        return Ok(Err(NotOffered::Config("encryption = \"none\"".into())));
    }
    if cfg.datapath == Datapath::Userspace {
        if let Err(e) = crate::kernel::wireguard::remove_device(&cfg.wireguard.device).await {
            tracing::warn!(error = %e, "kernel WireGuard device");
        }
        return Ok(Err(NotOffered::Config("datapath = \"userspace\"".into())));
    }
    let opened = match crate::kernel::wireguard::detect().await {
        Ok(()) => KernelWireguard::open(&cfg.wireguard.device, cfg.overlay_mtu())
            .await
            .map_err(|e| match e {
                WgError::Unavailable(u) => refusal(&u),
                other => Refusal::new(other.to_string()),
            }),
        Err(u) => Err(refusal(&u)),
    };
    match opened {
        Ok(dev) => Ok(Ok(dev)),
        Err(why) if cfg.datapath == Datapath::Kernel => bail!(
            "datapath = \"kernel\": the kernel would not make the WireGuard device `{}`: {why}",
            cfg.wireguard.device
        ),
        Err(why) => {
            tracing::warn!(reason = %why, "kernel WireGuard unavailable: every peer uses the userspace path");
            Ok(Err(NotOffered::Refused(why)))
        }
    }
}

fn refusal(u: &Unavailable) -> Refusal {
    match u {
        Unavailable::LinkRefused { errno } => Refusal::from_errno(*errno),
        Unavailable::NoFamily => Refusal::new("generic netlink family wireguard not found"),
        Unavailable::Netlink { detail } => Refusal::new(format!("netlink: {detail}")),
    }
}

/// With the kernel path off, a VXLAN device an earlier meshd left would hold the UDP port the
/// userspace path binds: remove it (and meshd's routes, which lead into it or past it). Its
/// source checks, which would drop what the userspace path receives, leave the table when
/// [`prepare`] writes it without them.
async fn remove_stale_vxlan(host: &Host, cfg: &Config) {
    match host.remove_owned(&cfg.vxlan.device).await {
        Ok(true) => {
            tracing::info!(device = %cfg.vxlan.device, "removed the kernel VXLAN device an earlier meshd left (kernel path off)")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "kernel VXLAN device"),
    }
    for r in routes::list(host).await.unwrap_or_default() {
        let _ = routes::remove(host, r.subnet).await;
    }
}

fn vxlan_text(v: &Result<VxlanDevice, NotOffered>) -> String {
    match v {
        Ok(d) => vxlan::device_text(d, None, None),
        Err(n) => not_offered_text("kernel vxlan", n),
    }
}

pub(crate) fn not_offered_text(what: &str, n: &NotOffered) -> String {
    match n {
        NotOffered::Config(why) => format!("not used ({why})"),
        NotOffered::Refused(r) => format!("unavailable ({r})"),
        NotOffered::NotOnSegment => format!("{what}: not on this node's L2 segment"),
    }
}

async fn link_mac(host: &Host, index: u32) -> Option<MacAddr> {
    let link = host.link_by_index(index).await?;
    link.attributes.iter().find_map(|a| match a {
        netlink_packet_route::link::LinkAttribute::Address(m) => MacAddr::from_slice(m),
        _ => None,
    })
}

/// `meshd cleanup`'s part: the kernel devices and meshd's routes.
pub(crate) async fn cleanup(host: &Host, cfg: &Config) {
    for name in [&cfg.vxlan.device, &cfg.wireguard.device] {
        match host.remove_owned(name).await {
            Ok(true) => println!("removed link {name}"),
            Ok(false) => {}
            Err(e) => eprintln!("{e:#}"),
        }
    }
    for r in routes::list(host).await.unwrap_or_default() {
        if routes::remove(host, r.subnet).await.is_ok() {
            println!("removed route {}", r.subnet);
        }
    }
    match nft::remove() {
        Ok(true) => println!("removed nftables table {} {}", nft::FAMILY, nft::TABLE),
        Ok(false) | Err(nft::NftError::Missing) => {}
        Err(e) => eprintln!("{e}"),
    }
}
