//! What a CNI result must hold: the pod's end of it, and the spec's rules per version.

use serde_json::Value;

/// The address (without prefix) and MAC of interface `ifname` in sandbox `sandbox` of a result.
pub fn pod_end(r: &Value, ifname: &str, sandbox: &str) -> (String, String) {
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    let idx = ifaces
        .iter()
        .position(|i| i["name"] == ifname && i["sandbox"] == sandbox)
        .unwrap_or_else(|| panic!("no {ifname} in {sandbox}: {r}"));
    let ip = r["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .find(|ip| ip["interface"] == idx)
        .unwrap_or_else(|| panic!("no address on {ifname}: {r}"))["address"]
        .as_str()
        .unwrap();
    let ip = ip.split('/').next().unwrap().to_owned();
    (
        ip,
        ifaces[idx]["mac"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Checks a result against the spec's rules for `version`; returns the pod's address.
pub fn validate_result(r: &Value, version: &str, ifname: &str, sandbox: &str) -> String {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    for i in ifaces {
        assert!(i["name"].is_string(), "{r}");
        let mac = i["mac"].as_str().expect("mac");
        assert_eq!(mac.len(), 17, "{mac}");
        assert_eq!(
            i.get("mtu").is_some(),
            version == "1.1.0" && i.get("sandbox").is_some(),
            "{r}"
        );
    }
    let pod = ifaces
        .iter()
        .position(|i| i["name"] == ifname && i["sandbox"] == sandbox);
    let pod = pod.unwrap_or_else(|| panic!("no {ifname} in {sandbox}: {r}"));
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r}");
    let ip = &ips[0];
    assert_eq!(ip["interface"].as_u64(), Some(pod as u64), "{r}");
    assert_eq!(
        ip.get("version").and_then(Value::as_str),
        if version.starts_with("0.") {
            Some("4")
        } else {
            None
        },
        "{r}"
    );
    assert_eq!(ip["gateway"], "10.244.1.1", "{r}");
    let addr = ip["address"].as_str().unwrap();
    assert!(addr.ends_with("/24"), "{addr}");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    addr.split('/').next().unwrap().to_owned()
}
