//! Per-interface sysctls that keep a pod from configuring the node, set on ADD before either
//! veth end comes up and verified on CHECK.
//!
//! - IPv6 is not enforced by netpol, so it is off on both ends (the datapath drops it both
//!   ways too); on the host side router advertisements, autoconfiguration and redirects are
//!   refused as well, so even an interface where IPv6 is turned back on cannot be
//!   configured by a pod (the CVE-2020-10749 class);
//! - IPv4 redirects and source routes from the pod are ignored, and strict reverse-path
//!   filtering accepts on the host side only sources routed back through it — the pod's own
//!   address (the datapath enforces the same, and that a local pod's address enters the node
//!   only through its own veth).
//!
//! Each setting is written through /proc/sys of the calling thread's network namespace.

use crate::error::{code, io, CniError, Result};

/// One sysctl of an interface: `net/<family>/conf/<ifname>/<key>`.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub family: Family,
    pub key: &'static str,
    pub value: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

const fn set(family: Family, key: &'static str, value: &'static str) -> Setting {
    Setting { family, key, value }
}

/// The host-side veth.
pub const HOST: [Setting; 8] = [
    set(Family::Ipv6, "disable_ipv6", "1"),
    set(Family::Ipv6, "accept_ra", "0"),
    set(Family::Ipv6, "autoconf", "0"),
    set(Family::Ipv6, "accept_redirects", "0"),
    set(Family::Ipv4, "accept_redirects", "0"),
    set(Family::Ipv4, "secure_redirects", "0"),
    set(Family::Ipv4, "accept_source_route", "0"),
    set(Family::Ipv4, "rp_filter", "1"),
];

/// The pod's interface.
pub const POD: [Setting; 1] = [set(Family::Ipv6, "disable_ipv6", "1")];

impl Setting {
    fn path(&self, ifname: &str) -> String {
        let family = match self.family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        format!("/proc/sys/net/{family}/conf/{ifname}/{}", self.key)
    }
}

/// Whether this namespace has IPv6 at all (a kernel booted with ipv6.disable=1 has no
/// /proc/sys/net/ipv6, and then there is nothing to turn off).
fn ipv6_present() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6/conf").exists()
}

fn applicable(settings: &[Setting]) -> impl Iterator<Item = &Setting> {
    let v6 = ipv6_present();
    settings.iter().filter(move |s| v6 || s.family == Family::Ipv4)
}

/// Writes every setting for `ifname`.
pub fn apply(ifname: &str, settings: &[Setting]) -> Result<()> {
    for s in applicable(settings) {
        let path = s.path(ifname);
        std::fs::write(&path, s.value).map_err(|e| io(format!("writing {path}"), e))?;
    }
    Ok(())
}

/// Checks every setting for `ifname`; the error names the first that differs.
pub fn verify(ifname: &str, side: &str, settings: &[Setting]) -> Result<()> {
    for s in applicable(settings) {
        let path = s.path(ifname);
        let found = std::fs::read_to_string(&path).map_err(|e| io(format!("reading {path}"), e))?;
        if found.trim() != s.value {
            return Err(CniError::new(
                code::CHECK_MISMATCH,
                format!("{side} interface {ifname}: {path} is {}, ADD set {}", found.trim(), s.value),
            ));
        }
    }
    Ok(())
}
