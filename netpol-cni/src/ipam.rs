//! Address allocation from the node's pod range, persisted on disk.
//!
//! One directory per network; one file per allocated address (named by the address, holding
//! the container id and interface), so an allocation is created atomically with
//! `O_CREAT|O_EXCL` and survives plugin and node restarts. Concurrent calls serialize on an
//! exclusive `flock` of the directory itself (no lock file to leave behind), held only while
//! the store is read or changed. Allocation continues after the last address handed out, so
//! a freed address is not reused at once (stale conntrack and ARP entries would point at
//! the old pod); that marker goes away with the last allocation.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

use crate::error::{code, io, CniError, Result};

const LAST: &str = "last_reserved_ip";

/// The store of one network, locked for as long as it lives.
pub struct Ipam {
    dir: PathBuf,
    _lock: File,
}

/// An allocation: address, container id, interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

impl Ipam {
    pub fn open(data_dir: &Path, network: &str) -> Result<Ipam> {
        let dir = data_dir.join("networks").join(network);
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        let lock = File::open(&dir).map_err(|e| io(format!("opening {}", dir.display()), e))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(format!("locking {}", dir.display()), std::io::Error::last_os_error()));
        }
        Ok(Ipam { dir, _lock: lock })
    }

    /// Every allocation of this network.
    pub fn list(&self) -> Result<Vec<Allocation>> {
        let mut out = Vec::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| io(format!("reading {}", self.dir.display()), e))?;
        for e in entries.flatten() {
            let Some(ip) = e.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let mut lines = text.lines();
            let (cid, ifname) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            out.push(Allocation { ip, container_id: cid.to_string(), ifname: ifname.to_string() });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .list()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    /// Allocates an address for the attachment (its existing one when it has one).
    pub fn allocate(&mut self, range: Ipv4Net, container_id: &str, ifname: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.find(container_id, ifname)? {
            return Ok(ip);
        }
        let first = u32::from(range.network()) + 1;
        let last = u32::from(range.broadcast()) - 1;
        let size = last - first + 1;
        let after = std::fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .unwrap_or(last);
        for step in 1..=size {
            let ip = Ipv4Addr::from(first + (after - first + step) % size);
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{container_id}\n{ifname}\n").as_bytes())
                        .map_err(|e| io(format!("writing {}", path.display()), e))?;
                    std::fs::write(self.dir.join(LAST), ip.to_string())
                        .map_err(|e| io(format!("writing {}", self.dir.join(LAST).display()), e))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(format!("creating {}", path.display()), e)),
            }
        }
        Err(CniError::new(
            code::RANGE_FULL,
            format!("no free address in pod range {range} ({size} addresses, all allocated)"),
        ))
    }

    /// Releases the attachment's address; false when it had none.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Result<bool> {
        match self.find(container_id, ifname)? {
            Some(ip) => self.release_ip(ip).map(|_| true),
            None => Ok(false),
        }
    }

    pub fn release_ip(&mut self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", path.display()), e)),
        }
        if self.list()?.is_empty() {
            let _ = std::fs::remove_file(self.dir.join(LAST));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netpol-ipam-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_distinct_addresses_round_robin_and_reports_a_full_range() {
        let d = tmpdir("rr");
        let range: Ipv4Net = "10.9.0.0/29".parse().unwrap(); // 6 usable: .1 - .6
        let mut got = Vec::new();
        for i in 0..6 {
            let mut ipam = Ipam::open(&d, "net").unwrap();
            got.push(ipam.allocate(range, &format!("c{i}"), "eth0").unwrap());
        }
        let want: Vec<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(got, want);
        let mut ipam = Ipam::open(&d, "net").unwrap();
        let full = ipam.allocate(range, "c6", "eth0").unwrap_err();
        assert_eq!(full.code, code::RANGE_FULL);
        assert!(full.msg.contains("10.9.0.0/29"), "{}", full.msg);
        // Idempotent for an attachment that has an address.
        assert_eq!(ipam.allocate(range, "c2", "eth0").unwrap(), Ipv4Addr::new(10, 9, 0, 3));
        // A freed address is not reused before the others.
        assert!(ipam.release("c1", "eth0").unwrap());
        assert!(!ipam.release("c1", "eth0").unwrap());
        assert_eq!(ipam.allocate(range, "c7", "eth0").unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(ipam.list().unwrap().len(), 6);
        for a in ipam.list().unwrap() {
            ipam.release_ip(a.ip).unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(d.join("networks/net")).unwrap().collect();
        assert!(left.is_empty(), "files left behind: {left:?}");
        drop(ipam);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
