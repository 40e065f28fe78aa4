//! Where this node listens and how it keeps NAT mappings: `listen-address` (apart from the
//! advertised `address`) and `wireguard.nat-keepalive`.

use std::net::IpAddr;

use super::Config;

impl Config {
    /// The address UDP sockets bind to: `listen-address`, else every address of the family of
    /// `address` (the advertised one).
    pub(crate) fn bind_address(&self) -> IpAddr {
        match (self.listen_address, self.address) {
            (Some(a), _) => a,
            (None, Some(IpAddr::V6(_))) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            (None, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    /// How often a peer reached through a NAT gets a keepalive; `None`: never.
    pub(crate) fn nat_keepalive(&self) -> Option<std::time::Duration> {
        let secs = self.wireguard.nat_keepalive;
        (secs > 0).then(|| std::time::Duration::from_secs(u64::from(secs)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sockets_bind_everywhere_unless_told_and_keepalives_turn_off_at_zero() {
        let mut c = Config {
            address: Some("198.51.100.7".parse().unwrap()),
            ..Config::default()
        };
        assert_eq!(c.bind_address(), "0.0.0.0".parse::<IpAddr>().unwrap());
        c.address = Some("2001:db8::7".parse().unwrap());
        assert_eq!(c.bind_address(), "::".parse::<IpAddr>().unwrap());
        c.listen_address = Some("192.0.2.1".parse().unwrap());
        assert_eq!(c.bind_address(), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.nat_keepalive(), Some(std::time::Duration::from_secs(25)));
        c.wireguard.nat_keepalive = 0;
        assert_eq!(c.nat_keepalive(), None);
    }
}
