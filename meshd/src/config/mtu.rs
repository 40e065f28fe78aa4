//! The MTU keys: `underlay-mtu` (the ceiling: the TUN and pod MTU is it less the
//! encapsulation) and `path-mtu-discovery` (on by default: each peer's MTU is searched between
//! a floor and that ceiling, see `paths::mtud`). What the path manager needs of them is
//! computed here, once.

use super::Config;
use crate::paths::mtud;

impl Config {
    /// The smallest MTU discovery gives a peer's pod packets: an IPv6-minimum underlay packet
    /// (1280 bytes) less the encapsulation; never above the pod MTU.
    pub(crate) fn mtu_floor(&self) -> u16 {
        mtud::floor(self.encryption.overhead() as u16).min(self.overlay_mtu())
    }

    /// Whether peers' MTUs are searched: discovery on, and room between floor and ceiling.
    pub(crate) fn mtu_searched(&self) -> bool {
        self.path_mtu_discovery && self.mtu_floor() < self.overlay_mtu()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn discovery_is_on_by_default_between_the_floor_and_the_pod_mtu() {
        let c = Config::from_toml("encryption = \"none\"").unwrap();
        assert!(c.path_mtu_discovery);
        assert!(c.mtu_searched());
        assert_eq!((c.mtu_floor(), c.overlay_mtu()), (1230, 1450));
        let wg = Config::default();
        assert_eq!((wg.mtu_floor(), wg.overlay_mtu()), (1200, 1420));
    }

    #[test]
    fn off_or_without_room_nothing_is_searched() {
        let off = Config::from_toml("path-mtu-discovery = false").unwrap();
        assert!(!off.mtu_searched());
        let small = Config::from_toml("encryption = \"none\"\nunderlay-mtu = 1200").unwrap();
        assert_eq!(small.mtu_floor(), small.overlay_mtu());
        assert!(!small.mtu_searched());
        let e = Config::from_toml("path-mtu-discovery = \"yes\"").unwrap_err();
        assert_eq!(e.key, "path-mtu-discovery", "{e}");
    }
}
