//! The ADD result, and `prevResult` read back from a chain, in every version we speak.
//!
//! One internal shape; [`CniResult::to_json`] writes it in the configured version:
//! 0.3.x/0.4.0 give each IP a `"version"`, 1.0.0 drops it, 1.1.0 adds interface `mtu`.
//! Fields we do not model (e.g. 1.1's route `table`, an interface's `socketPath`) are kept
//! verbatim so a chained plugin's additions pass through us unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::version::Version;

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An IP configuration in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A route in a result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A whole result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
}

impl CniResult {
    /// Reads a `prevResult` (any supported version's shape).
    pub fn from_prev(prev: &Value) -> Result<CniResult> {
        let mut r: CniResult =
            serde_json::from_value(prev.clone()).map_err(|source| Error::Decode {
                what: "prevResult".into(),
                source,
            })?;
        for ip in &mut r.ips {
            ip.extra.remove("version");
        }
        for ip in &r.ips {
            if let Some(i) = ip.interface {
                if i >= r.interfaces.len() {
                    return Err(Error::InvalidConfig(format!(
                        "prevResult ip {} names interface {i}, but there are only {}",
                        ip.address,
                        r.interfaces.len()
                    )));
                }
            }
        }
        Ok(r)
    }

    /// Appends `other`, renumbering its interface indices after ours.
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_none() {
            self.dns = other.dns;
        }
    }

    /// The result as JSON in `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut r = self.clone();
        for iface in &mut r.interfaces {
            if !version.interface_mtu() {
                iface.mtu = None;
            }
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        let ips: Vec<Value> = r
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or(Value::Null);
                if let (true, Some(obj)) = (version.ips_carry_version(), v.as_object_mut()) {
                    let family = if ip.address.contains(':') { "6" } else { "4" };
                    obj.insert("version".into(), Value::from(family));
                }
                v
            })
            .collect();
        out.insert("interfaces".into(), to_value(&r.interfaces));
        out.insert("ips".into(), Value::Array(ips));
        if !r.routes.is_empty() {
            out.insert("routes".into(), to_value(&r.routes));
        }
        out.insert(
            "dns".into(),
            r.dns.clone().unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(out)
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    // Serialising our own plain structs cannot fail (no maps with non-string keys).
    serde_json::to_value(t).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "vmesh1".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".into(),
                gateway: Some("10.244.1.1".into()),
                interface: Some(1),
                ..Default::default()
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.244.1.1".into()),
                ..Default::default()
            }],
            dns: None,
        }
    }

    #[test]
    fn versions_shape_ips_and_mtu() {
        let r = sample();
        let old = r.to_json(Version::V0_3_1);
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
        let v1 = r.to_json(Version::V1_0_0);
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["routes"][0]["gw"], "10.244.1.1");
    }

    #[test]
    fn prev_result_round_trips_with_unknown_fields() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "socketPath": "/s"}],
            "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 0}],
            "routes": [{"dst": "10.0.0.0/8", "table": 100}],
            "dns": {"nameservers": ["10.0.0.1"]}
        });
        let r = CniResult::from_prev(&prev).unwrap();
        let back = r.to_json(Version::V0_4_0);
        assert_eq!(back["interfaces"][0]["socketPath"], "/s");
        assert_eq!(back["routes"][0]["table"], 100);
        assert_eq!(back["ips"][0]["version"], "4");
        assert_eq!(back["dns"]["nameservers"][0], "10.0.0.1");
    }

    #[test]
    fn append_renumbers_interfaces() {
        let mut a = CniResult::from_prev(&json!({"interfaces":[{"name":"x"}],"ips":[]})).unwrap();
        a.append(sample());
        assert_eq!(a.interfaces.len(), 3);
        assert_eq!(a.ips[0].interface, Some(2));
    }

    #[test]
    fn bad_prev_results_are_refused() {
        let e = CniResult::from_prev(&json!({"ips":[{"address":"1.2.3.4/32","interface":3}]}));
        assert_eq!(e.unwrap_err().code(), 7);
        assert_eq!(
            CniResult::from_prev(&json!({"ips": 5})).unwrap_err().code(),
            6
        );
    }
}
