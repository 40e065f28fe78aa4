//! The NAT lab (`meshd lab up --nat`): clusters across NATs on one machine, with real kernel
//! NAT (nftables in router namespaces).
//!
//! ```text
//!                        <prefix>-sw: the "internet", 198.18.0.0/24
//!     ┌──────────┬──────────┬──────────────────┬───────────────────┬──────────────────┐
//!   pub1 .1    pub2 .2   <prefix>-ra .101      <prefix>-rb .102     <prefix>-rc .103 (+ .30)
//!                        masquerade: ports     masquerade            1:1 NAT: .30 ↔ 192.168.3.1
//!                        kept per source       random-fully (ports   (dnat + snat)
//!                                              kept with --nat-b-keeps-ports)
//!                        192.168.1.0/24        192.168.2.0/24        192.168.3.0/24
//!                        ├── a1 .1             └── b1 .1             └── c1 .1
//!                        └── a2 .2
//! ```
//!
//! Hosts are `<prefix>-h1` … `-h6` in that order (pub1, pub2, a1, a2, b1, c1); every one is
//! configured with nothing but the seed (pub1's gossip address), so each works out its own
//! address from its routes and learns its public endpoint from what the others observe.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

use super::{Host, Topology, UNDERLAY_PREFIX};
use crate::netns::{ip, run};

/// The hosts of the NAT lab, in order.
pub const NAT_ROLES: [&str; 6] = ["pub1", "pub2", "a1", "a2", "b1", "c1"];
/// The 1:1 NAT's public address for c1.
pub const ONE_TO_ONE_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);

/// One NAT router: its name suffix, public address, private network's third octet, and rules.
struct Router {
    tag: &'static str,
    public: Ipv4Addr,
    site: u8,
}

const ROUTERS: [Router; 3] = [
    Router {
        tag: "ra",
        public: Ipv4Addr::new(198, 18, 0, 101),
        site: 1,
    },
    Router {
        tag: "rb",
        public: Ipv4Addr::new(198, 18, 0, 102),
        site: 2,
    },
    Router {
        tag: "rc",
        public: Ipv4Addr::new(198, 18, 0, 103),
        site: 3,
    },
];

/// Where host `index` (1-based) of the NAT lab sits: its underlay address, and its site
/// (the router's private network), if behind one.
pub(super) fn place(index: usize) -> (Ipv4Addr, Option<u8>) {
    match index {
        1 | 2 => (Ipv4Addr::new(198, 18, 0, index as u8), None),
        3 | 4 => (Ipv4Addr::new(192, 168, 1, index as u8 - 2), Some(1)),
        5 => (Ipv4Addr::new(192, 168, 2, 1), Some(2)),
        _ => (Ipv4Addr::new(192, 168, 3, 1), Some(3)),
    }
}

/// The NAT lab's role name of a host (`pub1`, `a1`, …).
pub fn role(h: &Host) -> &'static str {
    NAT_ROLES.get(h.index - 1).copied().unwrap_or("?")
}

impl Topology {
    /// The routers and their private switches.
    pub(super) fn nat_routers(&self) -> Result<()> {
        if self.hosts.len() != NAT_ROLES.len() {
            bail!("the NAT lab has {} hosts", NAT_ROLES.len());
        }
        let mtu = self.spec.underlay_mtu.to_string();
        for r in &ROUTERS {
            let (rt, sw) = (self.router_ns(r.tag), self.site_switch(r.site));
            ip(&["netns", "add", &sw])?;
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            ip(&["netns", "add", &rt])?;
            ip(&["-n", &rt, "link", "set", "lo", "up"])?;
            for (inside, switch, port, addr) in [
                (
                    "u0",
                    self.switch(),
                    r.tag.to_string(),
                    format!("{}/{UNDERLAY_PREFIX}", r.public),
                ),
                (
                    "u1",
                    sw.clone(),
                    "rt".into(),
                    format!("192.168.{}.254/24", r.site),
                ),
            ] {
                ip(&[
                    "-n", &switch, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer",
                    "name", inside, "mtu", &mtu, "netns", &rt,
                ])?;
                ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
                ip(&["-n", &rt, "addr", "add", &addr, "dev", inside])?;
                ip(&["-n", &rt, "link", "set", inside, "up"])?;
            }
            sysctl(&rt, "net.ipv4.ip_forward=1")?;
            let rules = match r.site {
                1 => format!("table ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"u0\" masquerade\n }}\n}}\n{WAN_INPUT_DROP}"),
                2 => nat_b_rules(!self.spec.paths.nat_b_keeps_ports),
                _ => {
                    let (public, private) = (ONE_TO_ONE_PUBLIC, place(6).0);
                    ip(&["-n", &rt, "addr", "add", &format!("{public}/32"), "dev", "u0"])?;
                    format!(
                        "table ip nat {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname \"u0\" ip daddr {public} dnat to {private}\n }}\n chain post {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"u0\" ip saddr {private} snat to {public}\n }}\n}}\n"
                    )
                }
            };
            self.nft_file(&rt, &rules)?;
        }
        Ok(())
    }

    /// Attaches NAT-lab host `h` to its switch, with its address and default route.
    pub(super) fn nat_host_link(&self, h: &Host) -> Result<()> {
        let (addr, site) = place(h.index);
        let sw = site.map_or_else(|| self.switch(), |s| self.site_switch(s));
        let mtu = self.spec.underlay_mtu.to_string();
        let port = format!("h{}", h.index);
        ip(&[
            "-n", &sw, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "u0",
            "mtu", &mtu, "netns", &h.ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        let prefix = if site.is_some() { 24 } else { UNDERLAY_PREFIX };
        ip(&[
            "-n",
            &h.ns,
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            "u0",
        ])?;
        ip(&["-n", &h.ns, "link", "set", "u0", "up"])?;
        match site {
            Some(s) => ip(&[
                "-n",
                &h.ns,
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{s}.254"),
            ]),
            // The "internet" is one segment: a default route on it, so meshd finds its address.
            None => ip(&["-n", &h.ns, "route", "add", "default", "dev", "u0"]),
        }
    }

    /// The namespace of NAT router `tag` (`ra`, `rb`, `rc`).
    pub fn router_ns(&self, tag: &str) -> String {
        format!("{}-{tag}", self.spec.prefix)
    }

    fn site_switch(&self, site: u8) -> String {
        format!("{}-sw{}", self.spec.prefix, (b'a' + site - 1) as char)
    }

    /// Loads nftables `rules` in namespace `ns`.
    pub fn nft_file(&self, ns: &str, rules: &str) -> Result<()> {
        let path = Topology::state_dir(&self.spec.prefix).join(format!("{ns}.nft"));
        std::fs::create_dir_all(Topology::state_dir(&self.spec.prefix))?;
        std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
        let file = path.display().to_string();
        run("ip", &["netns", "exec", ns, "nft", "-f", &file])
    }

    /// The NAT routers' namespaces, with a name each (`router-a` …).
    pub fn nat_routers_ns(&self) -> Vec<(String, String)> {
        ROUTERS
            .iter()
            .map(|r| {
                let name = format!("router-{}", (b'a' + r.site - 1) as char);
                (name, self.router_ns(r.tag))
            })
            .collect()
    }

    /// Router-a's public address now.
    pub fn router_a_public(&self) -> Ipv4Addr {
        ROUTERS[0].public
    }
}

/// Router-b's rules: masquerade that maps each destination anew (`fully-random`), or that
/// keeps ports (a1↔b1 can then be hole punched). Loaded over the router's whole ruleset.
pub fn nat_b_rules(fully_random: bool) -> String {
    let how = if fully_random { " fully-random" } else { "" };
    format!("flush ruleset\ntable ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"u0\" masquerade{how}\n }}\n}}\n{WAN_INPUT_DROP}")
}

/// What a home or office router does with a datagram from outside that no mapping takes: it
/// drops it, before conntrack keeps an entry for it. Without this, the router itself would
/// take every stray datagram in (and answer "port unreachable"), and its entry would hold the
/// port-keeping mapping a hole punch needs, so the router's own host would be mapped to a
/// random port towards that peer instead.
const WAN_INPUT_DROP: &str = "table ip filter {\n chain input {\n  type filter hook input priority filter; policy accept;\n  iifname \"u0\" ct state new drop\n }\n}\n";

/// `sysctl -w` in namespace `ns`.
pub fn sysctl(ns: &str, setting: &str) -> Result<()> {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting])
}
