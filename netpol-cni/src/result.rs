//! The ADD result, encoded for the caller's cniVersion.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::config::version_tuple;

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The netns path for the container side; None for the host side.
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AddResult {
    /// Host-side veth first, then the pod's interface.
    pub interfaces: Vec<Interface>,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Index of the pod's interface in `interfaces`.
    pub pod_interface: usize,
}

impl AddResult {
    pub fn to_json(&self, cni_version: &str) -> Value {
        let v = version_tuple(cni_version);
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({ "name": i.name, "mac": i.mac });
                if let Some(s) = &i.sandbox {
                    o["sandbox"] = json!(s);
                }
                if v >= (1, 1, 0) {
                    o["mtu"] = json!(i.mtu);
                }
                o
            })
            .collect();
        // The pod has its address as a /32 and reaches everything through a link-local
        // gateway on its veth, so the host never needs an address in the pod range.
        let mut ip = json!({
            "address": format!("{}/32", self.ip),
            "gateway": self.gateway.to_string(),
            "interface": self.pod_interface,
        });
        if v < (1, 0, 0) {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": [ip],
            "routes": [{ "dst": "0.0.0.0/0", "gw": self.gateway.to_string() }],
            "dns": {},
        })
    }
}

/// The pod address a previous result (prevResult) reports, if any.
pub fn prev_ip(prev: &Value) -> Option<Ipv4Addr> {
    prev.get("ips")?
        .as_array()?
        .iter()
        .filter_map(|i| i.get("address")?.as_str()?.split('/').next()?.parse().ok())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "np0123".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    mtu: 1500,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    mtu: 1500,
                    sandbox: Some("/run/netns/x".into()),
                },
            ],
            ip: Ipv4Addr::new(10, 244, 7, 5),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            pod_interface: 1,
        }
    }

    #[test]
    fn results_follow_the_callers_version() {
        let old = sample().to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = sample().to_json("1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["cniVersion"], "1.0.0");
        let v11 = sample().to_json("1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1500);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(v11["interfaces"][0].get("sandbox").is_none());
        assert_eq!(prev_ip(&v11), Some(Ipv4Addr::new(10, 244, 7, 5)));
    }
}
