//! The simulated internet's plumbing for one local node: its network namespace
//! (`ROOT-inet`) joined to the node by a veth, the documentation ranges routed to it for the
//! node's pods (a rule for the pod range and a table of the node's own, so local nodes side
//! by side each reach their own internet and never share routes), its server process
//! ([`crate::internet`]), and the CA pods trust.
//!
//! The node answers the internet's ARP for pod addresses (proxy ARP on its end of the veth),
//! so the internet's one route, a default over its veth, brings replies back through the
//! node — pods reach the internet through the node, as on a cluster (without masquerade:
//! the internet sees pod addresses).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{alive, run, Local, Runtime};
use crate::internet::{self, Files};

/// Routing tables from here on ("NI"), one per local node.
const TABLE_BASE: u32 = 0x4e49_0000;
/// The rule's priority: before the main table.
const RULE_PRIORITY: &str = "1000";

impl Local {
    pub(super) fn internet_netns(&self) -> String {
        format!("{}-inet", self.root)
    }

    pub(super) fn internet_dir(&self) -> PathBuf {
        self.state.join("internet")
    }

    fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.root.as_bytes()).into()
    }

    /// The node's end of the veth (interface names are at most 15 bytes).
    fn internet_link(&self) -> String {
        let h = self.hash();
        format!("npi{:02x}{:02x}{:02x}{:02x}", h[0], h[1], h[2], h[3])
    }

    fn internet_table(&self) -> String {
        let h = self.hash();
        (TABLE_BASE | (u32::from(h[4]) << 7 | u32::from(h[5]) >> 1)).to_string()
    }

    fn in_internet(&self, args: &[&str]) -> Result<String> {
        let ns = self.internet_netns();
        run(Command::new("ip").args(["netns", "exec", &ns]).args(args))
    }

    /// Brings the internet up (again after a crash); idempotent.
    pub(super) fn internet_up(&self, rt: &mut Runtime) -> Result<()> {
        if rt.internet_pid.is_some_and(alive) {
            return Ok(());
        }
        let (ns, link, table) = (self.internet_netns(), self.internet_link(), self.internet_table());
        self.internet_down(rt);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        run(Command::new("ip")
            .args(["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns]))?;
        self.in_internet(&["ip", "link", "set", "lo", "up"])?;
        self.in_internet(&["ip", "link", "set", "eth0", "up"])?;
        for ip in internet::addresses() {
            self.in_internet(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        }
        self.in_internet(&["ip", "route", "add", "default", "dev", "eth0"])?;
        run(Command::new("ip").args(["link", "set", &link, "up"]))?;
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{link}/proxy_arp"), "1").context("proxy ARP")?;
        for range in internet::RANGES {
            run(Command::new("ip").args(["route", "replace", range, "dev", &link, "table", &table]))?;
        }
        let rule = ["from", rt.pod_cidr.as_str(), "lookup", table.as_str(), "priority", RULE_PRIORITY];
        run(Command::new("ip").arg("rule").arg("add").args(rule))?;
        let files = Files(&self.internet_dir());
        if !files.trust().exists() {
            internet::make_certificates(&files).context("making local mode's CA")?;
        }
        rt.internet_pid = Some(self.spawn_internet()?);
        Ok(())
    }

    fn spawn_internet(&self) -> Result<u32> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.internet_netns()))
            .arg("--")
            .arg(std::env::current_exe()?)
            .args(["internet-server", "--node", &self.root, "--dir"])
            .arg(self.internet_dir());
        super::pods::detach(&mut cmd, None);
        super::pods::spawn_ready(&mut cmd).context("the simulated internet did not start")
    }

    /// Takes the internet down: its process, rule, namespace (and veth, with it).
    pub(super) fn internet_down(&self, rt: &Runtime) {
        super::pods::kill(rt.internet_pid);
        let table = self.internet_table();
        let rule = ["from", rt.pod_cidr.as_str(), "lookup", table.as_str()];
        while Command::new("ip").arg("rule").arg("del").args(rule).output().is_ok_and(|o| o.status.success())
        {
        }
        // The link first: it goes at once (with its peer), where a namespace's links go only
        // once nothing holds the namespace.
        let _ = Command::new("ip").args(["link", "del", &self.internet_link()]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.internet_netns()]).output();
    }

    /// What the internet's DNS server received, one line per query.
    pub fn internet_queries(&self) -> Result<String> {
        self.require_up()?;
        let path = Files(&self.internet_dir()).queries();
        Ok(std::fs::read_to_string(&path).unwrap_or_default())
    }

    /// The CA bundle pods trust (the machine's and local mode's), once the internet is up.
    pub(super) fn trust_bundle(&self) -> Option<PathBuf> {
        Some(Files(&self.internet_dir()).trust()).filter(|p| p.exists())
    }
}
