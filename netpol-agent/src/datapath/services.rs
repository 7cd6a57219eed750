//! The socket hooks for Services: the cgroup `sock_addr` programs of netpol-ebpf attached to
//! one cgroup2 directory (the root in a cluster, a dedicated one in local mode), their links
//! pinned in `<pin dir>/links/cgroup-<hook>` so they outlive the agent, and the `SERVICES`
//! map they read.
//!
//! Taking over is make-before-break: the new program is attached beside the old one (cgroup
//! links stack), its pin renamed over the old pin, and only then is the old link released.
//! Running both for an instant is harmless — the first translation leaves a backend address
//! the second does not know. So there is never a moment without translation.
//!
//! `SERVICES` writes are ordered so a concurrent `connect()` never picks an empty slot: a
//! frontend that grows gets its new slots before its count, one that shrinks its count
//! before losing slots.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockAddr,
    },
    Ebpf,
};
use netpol_common::{programs, RevNatKey, ServiceKey, ServiceValue, IPPROTO_UDP};
use tracing::{debug, info, warn};

use super::{attach::link_err, io_err, map_err, Datapath, DatapathError, Result};
use netpol_common::maps;

/// The four socket hooks.
pub const HOOKS: [&str; 4] =
    [programs::CONNECT4, programs::SENDMSG4, programs::RECVMSG4, programs::GETPEERNAME4];

/// The kernel's attach type of each hook (`enum bpf_attach_type`).
fn attach_type(hook: &str) -> u32 {
    match hook {
        programs::CONNECT4 => 10, // BPF_CGROUP_INET4_CONNECT
        programs::SENDMSG4 => 14, // BPF_CGROUP_UDP4_SENDMSG
        programs::RECVMSG4 => 19, // BPF_CGROUP_UDP4_RECVMSG
        _ => 29,                  // BPF_CGROUP_INET4_GETPEERNAME
    }
}

/// The ids of the programs attached to the cgroup directory `dir` itself at `hook`'s attach
/// point, as the kernel reports them.
pub fn cgroup_programs(dir: &Path, hook: &str) -> std::io::Result<Vec<u32>> {
    crate::cgroup::attached_programs(dir, attach_type(hook))
}

/// Where the socket hooks are in effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketHooks {
    /// Every hook whose link is pinned and whose program the kernel lists on the cgroup
    /// this agent attached it to.
    pub attached: Vec<&'static str>,
}

impl SocketHooks {
    /// All four hooks are in effect.
    pub fn complete(&self) -> bool {
        self.attached.len() == HOOKS.len()
    }
}

pub(super) fn sock_program<'a>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    let prog = bpf
        .program_mut(name)
        .ok_or(DatapathError::Program { prog: name, source: aya::programs::ProgramError::NotLoaded })?;
    prog.try_into().map_err(|source| DatapathError::Program { prog: name, source })
}

impl Datapath {
    fn sock_link_pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("cgroup-{name}"))
    }

    /// Attaches (or takes over) the four socket hooks on the cgroup2 directory `cgroup`.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let dir = File::open(cgroup).map_err(io_err(cgroup))?;
        for name in HOOKS {
            let pin = self.sock_link_pin(name);
            let fresh = self.sock_link_pin(&format!("{name}-new"));
            let _ = std::fs::remove_file(&fresh);
            let prog = sock_program(&mut self.bpf, name)?;
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| DatapathError::Program { prog: name, source })?;
            let link = prog.take_link(id).map_err(|source| DatapathError::Program { prog: name, source })?;
            let fd: FdLink = link.try_into().map_err(|e| link_err(&pin, e))?;
            fd.pin(&fresh).map_err(|e| link_err(&fresh, e))?;
            // The old link (if any) stays attached until its last reference goes below.
            let old = PinnedLink::from_pin(&pin).ok();
            std::fs::rename(&fresh, &pin).map_err(io_err(&pin))?;
            drop(old);
            debug!(hook = name, cgroup = %cgroup.display(), "socket hook attached");
        }
        info!(cgroup = %cgroup.display(), "socket hooks in effect");
        self.cgroup = Some(cgroup.to_path_buf());
        Ok(())
    }

    /// Releases the socket hooks: Services are no longer translated.
    pub fn detach_cgroup(&mut self) -> Result<()> {
        for name in HOOKS {
            let pin = self.sock_link_pin(name);
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
        }
        self.cgroup = None;
        Ok(())
    }

    /// The cumulative run time and run count of one socket hook's program (counted while
    /// BPF run-time statistics are on), as [`Datapath::program_stats`] for the TC hooks.
    pub fn socket_hook_stats(&mut self, name: &'static str) -> Result<(std::time::Duration, u64)> {
        let info = sock_program(&mut self.bpf, name)?
            .info()
            .map_err(|source| DatapathError::Program { prog: name, source })?;
        Ok((info.run_time(), info.run_count()))
    }

    /// Which hooks are in effect: pinned, and listed by the kernel on the cgroup (a pin
    /// alone outlives a removed cgroup or a detach by hand).
    pub fn socket_hooks(&self) -> SocketHooks {
        let in_effect = |name: &&'static str| {
            let Some(cgroup) = &self.cgroup else { return false };
            let ours = self
                .bpf
                .program(name)
                .and_then(|p| <&CgroupSockAddr>::try_from(p).ok())
                .and_then(|p| p.info().ok())
                .map(|info| info.id());
            PinnedLink::from_pin(self.sock_link_pin(name)).is_ok()
                && ours.is_some_and(|id| cgroup_programs(cgroup, name).is_ok_and(|ids| ids.contains(&id)))
        };
        SocketHooks { attached: HOOKS.into_iter().filter(in_effect).collect() }
    }

    /// Destroys, in each of `namespaces`, the connected UDP sockets the hooks translated to
    /// one of `gone` (see [`crate::sockets`]); returns how many. A namespace that cannot be
    /// searched (its pod is going away) is logged and skipped.
    pub fn release_backends(&self, gone: &BTreeSet<SocketAddrV4>, namespaces: &BTreeSet<PathBuf>) -> usize {
        if gone.is_empty() {
            return 0;
        }
        let translated = |cookie: u64, peer: SocketAddrV4| {
            let key = RevNatKey {
                cookie,
                addr: u32::from_ne_bytes(peer.ip().octets()),
                port: peer.port().to_be(),
                proto: IPPROTO_UDP,
                _pad: 0,
            };
            gone.contains(&peer) && self.rev_nat.get(&key, 0).is_ok()
        };
        let mut destroyed = 0;
        for ns in namespaces {
            match crate::sockets::destroy_connected_udp(ns, translated) {
                Ok(n) => destroyed += n,
                Err(e) => warn!(netns = %ns.display(), "searching for sockets to departed backends: {e}"),
            }
        }
        if destroyed > 0 {
            info!(destroyed, "connected UDP sockets to departed backends destroyed");
        }
        destroyed
    }

    // ---------------------------------------------------------------- the SERVICES map

    pub fn services(&self) -> Result<BTreeMap<ServiceKey, ServiceValue>> {
        let mut out = BTreeMap::new();
        for r in self.services.iter() {
            let (k, v) = r.map_err(map_err(maps::SERVICES))?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// Makes `SERVICES` hold `desired`, frontend by frontend, in the order the module doc
    /// states. Returns (written, removed).
    pub(super) fn sync_services(
        &mut self,
        desired: &BTreeMap<ServiceKey, ServiceValue>,
    ) -> Result<(usize, usize)> {
        let cur = self.services()?;
        let fronts: BTreeSet<ServiceKey> =
            cur.keys().chain(desired.keys()).map(|k| ServiceKey { slot: 0, ..*k }).collect();
        let (mut written, mut removed) = (0, 0);
        for front in fronts {
            let of = |m: &BTreeMap<ServiceKey, ServiceValue>| -> BTreeMap<ServiceKey, ServiceValue> {
                m.range(front..=ServiceKey { slot: u32::MAX, ..front }).map(|(k, v)| (*k, *v)).collect()
            };
            let (now, want) = (of(&cur), of(desired));
            let count = |m: &BTreeMap<ServiceKey, ServiceValue>| m.get(&front).map_or(0, |v| v.count);
            let growing = count(&want) >= count(&now);
            let slots = want.iter().filter(|(k, v)| k.slot != 0 && now.get(k) != Some(v));
            let head = want.get(&front).filter(|v| now.get(&front) != Some(*v));
            // Growing: slots, then the count. Shrinking: the count, then the slots.
            let mut writes: Vec<(&ServiceKey, &ServiceValue)> = slots.collect();
            if let Some(v) = head {
                if growing {
                    writes.push((&front, v));
                } else {
                    writes.insert(0, (&front, v));
                }
            }
            for (k, v) in writes {
                self.services.insert(k, v, 0).map_err(map_err(maps::SERVICES))?;
                written += 1;
            }
            // Gone slots last, the frontend itself after them.
            for k in now.keys().rev().filter(|k| !want.contains_key(k)) {
                self.services.remove(k).map_err(map_err(maps::SERVICES))?;
                removed += 1;
            }
        }
        Ok((written, removed))
    }
}
