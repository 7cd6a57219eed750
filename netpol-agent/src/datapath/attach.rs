//! Attaching the programs to a pod's host-side veth.
//!
//! TCX (Linux ≥ 6.6) is preferred: its links are pinned in `<pin dir>/links/`, so they outlive
//! the agent, and a new agent swaps the program behind them atomically. On older kernels the
//! programs go in as clsact filters at a fixed priority and handle, which are left in place
//! when the agent exits and found again by those numbers.

use std::{ffi::CString, path::PathBuf, str::FromStr};

use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    TcAttachType,
};
use netpol_common::programs;
use tracing::{debug, info, warn};

use super::{io_err, Datapath, DatapathError, Result};

/// The two attachment points on the host-side veth (and the benchmark baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress: packets the pod sends.
    FromPod,
    /// tc egress: packets delivered to the pod.
    ToPod,
    /// The pass-through program (never attached).
    Pass,
}

impl Hook {
    pub const ATTACHED: [Hook; 2] = [Hook::FromPod, Hook::ToPod];

    pub fn program(self) -> &'static str {
        match self {
            Hook::FromPod => programs::FROM_POD,
            Hook::ToPod => programs::TO_POD,
            Hook::Pass => programs::PASS,
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Hook::ToPod => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    fn pin_suffix(self) -> &'static str {
        match self {
            Hook::ToPod => "to-pod",
            _ => "from-pod",
        }
    }
}

/// How programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX, falling back to clsact when the kernel has no TCX.
    #[default]
    Auto,
    Tcx,
    /// clsact + cls_bpf through netlink.
    Netlink,
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "tcx" => Ok(AttachMode::Tcx),
            "netlink" | "clsact" => Ok(AttachMode::Netlink),
            _ => Err(format!("unknown attach mode {s:?} (auto, tcx, netlink)")),
        }
    }
}

/// clsact filter priority and handle of netpol's programs ("NP").
const NL_PRIORITY: u16 = 0x4e50;
const NL_HANDLE: TcHandle = TcHandle::new(0, 0x4e50);

pub fn ifindex(name: &str) -> Result<u32> {
    let c =
        CString::new(name).map_err(|e| DatapathError::Interface { name: name.into(), msg: e.to_string() })?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DatapathError::Interface {
            name: name.into(),
            msg: std::io::Error::last_os_error().to_string(),
        }),
        i => Ok(i),
    }
}

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned())
}

impl Datapath {
    fn link_pin(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.pin_dir.join("links").join(format!("{ifindex}-{}", hook.pin_suffix()))
    }

    /// Attaches both programs to `ifname`. Idempotent: an existing attachment is kept and
    /// only its program is swapped for this datapath's (atomically).
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        let index = ifindex(ifname)?;
        for hook in Hook::ATTACHED {
            self.attach_hook(ifname, index, hook)?;
        }
        Ok(())
    }

    fn attach_hook(&mut self, ifname: &str, index: u32, hook: Hook) -> Result<()> {
        let mode = self.cfg.attach;
        if mode != AttachMode::Netlink {
            let pin = self.link_pin(index, hook);
            if pin.exists() {
                match self.update_pinned(&pin, hook) {
                    Ok(()) => return Ok(()),
                    // The interface that link belonged to is gone (its ifindex was reused).
                    Err(e) => {
                        debug!("replacing defunct link {}: {e}", pin.display());
                        std::fs::remove_file(&pin).map_err(io_err(&pin))?;
                    }
                }
            }
            let prog = self.program(hook)?;
            match prog.attach_with_options(
                ifname,
                hook.tc_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|source| DatapathError::Program { prog: hook.program(), source })?;
                    let fd: FdLink = link.try_into().map_err(|e| link_err(&pin, e))?;
                    fd.pin(&pin).map_err(|e| link_err(&pin, e))?;
                    debug!(ifname, hook = hook.program(), "attached (tcx)");
                    return Ok(());
                }
                Err(e) if mode == AttachMode::Auto => {
                    warn!(ifname, "TCX attach failed ({e}); falling back to clsact");
                }
                Err(source) => return Err(DatapathError::Program { prog: hook.program(), source }),
            }
        }
        // clsact: adding the qdisc fails harmlessly when it is already there.
        let _ = tc::qdisc_add_clsact(ifname);
        let prog = self.program(hook)?;
        let opts = NlOptions { priority: NL_PRIORITY, handle: NL_HANDLE, classid: None };
        let id = match prog.attach_with_options(ifname, hook.tc_type(), TcAttachOptions::Netlink(opts)) {
            Ok(id) => id,
            Err(_) => {
                // Our filter is already there: replace its program in place.
                let link =
                    SchedClassifierLink::attached(ifname, hook.tc_type(), NL_PRIORITY, NL_HANDLE, None)
                        .map_err(|e| DatapathError::Interface { name: ifname.into(), msg: e.to_string() })?;
                prog.attach_to_link(link)
                    .map_err(|source| DatapathError::Program { prog: hook.program(), source })?
            }
        };
        let link =
            prog.take_link(id).map_err(|source| DatapathError::Program { prog: hook.program(), source })?;
        // Dropping the link would delete the filter; it must outlive this process.
        std::mem::forget(link);
        debug!(ifname, hook = hook.program(), "attached (clsact)");
        Ok(())
    }

    /// Swaps the program behind a pinned TCX link for this datapath's.
    fn update_pinned(&mut self, pin: &std::path::Path, hook: Hook) -> Result<()> {
        let fd: FdLink = PinnedLink::from_pin(pin).map_err(|e| link_err(pin, e))?.into();
        let link = SchedClassifierLink::try_from(fd).map_err(|e| link_err(pin, e))?;
        let prog = self.program(hook)?;
        let id = prog.attach_to_link(link).map_err(|e| link_err(pin, e))?;
        // The pin keeps the link; drop only our descriptor.
        let link = prog.take_link(id).map_err(|e| link_err(pin, e))?;
        let _fd: FdLink = link.try_into().map_err(|e| link_err(pin, e))?;
        Ok(())
    }

    /// Detaches both programs from `ifname` (a no-op where nothing is attached).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let index = ifindex(ifname)?;
        self.detach_index(index, Some(ifname))
    }

    fn detach_index(&mut self, index: u32, ifname: Option<&str>) -> Result<()> {
        for hook in Hook::ATTACHED {
            let pin = self.link_pin(index, hook);
            if pin.exists() {
                let fd = PinnedLink::from_pin(&pin)
                    .map_err(|e| link_err(&pin, e))?
                    .unpin()
                    .map_err(io_err(&pin))?;
                drop(fd); // the last reference: the kernel detaches here
            }
            if let Some(ifname) = ifname {
                if let Ok(link) =
                    SchedClassifierLink::attached(ifname, hook.tc_type(), NL_PRIORITY, NL_HANDLE, None)
                {
                    // Dropping an attached() link deletes the filter; nothing there is fine.
                    drop(link);
                }
            }
        }
        Ok(())
    }

    /// Interfaces with a pinned link (TCX attachments), by ifindex.
    pub fn attached(&self) -> Result<Vec<u32>> {
        let dir = self.pin_dir.join("links");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(index) =
                e.file_name().to_str().and_then(|n| n.split('-').next()).and_then(|i| i.parse().ok())
            {
                out.push(index);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Moves every existing attachment to this datapath's programs, and drops pins of
    /// interfaces that no longer exist.
    pub(super) fn relink(&mut self) -> Result<()> {
        for index in self.attached()? {
            match ifname(index) {
                Some(name) => {
                    for hook in Hook::ATTACHED {
                        let pin = self.link_pin(index, hook);
                        if pin.exists() {
                            if let Err(e) = self.update_pinned(&pin, hook) {
                                warn!(ifname = name, "link {} is defunct, removing it: {e}", pin.display());
                                std::fs::remove_file(&pin).map_err(io_err(&pin))?;
                            }
                        }
                    }
                    info!(ifname = name, "took over attachment");
                }
                None => self.detach_index(index, None)?,
            }
        }
        if self.cfg.attach == AttachMode::Netlink {
            for (index, _) in self.endpoints()? {
                if let Some(name) = ifname(index) {
                    self.attach(&name)?;
                }
            }
        }
        Ok(())
    }

    /// Detaches everything this datapath attached and removes all its pins. Enforcement
    /// stops: this is for uninstalling, and for tests.
    pub fn teardown(mut self) -> Result<()> {
        for index in self.attached()? {
            let name = ifname(index);
            self.detach_index(index, name.as_deref())?;
        }
        for (index, _) in self.endpoints()? {
            if let Some(name) = ifname(index) {
                self.detach_index(index, Some(&name))?;
            }
        }
        let root = self.cfg.root();
        drop(self);
        remove_pins(&root)
    }
}

/// Removes a pin directory tree (bpffs allows unlink/rmdir of pins).
pub fn remove_pins(root: &std::path::Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(root).map_err(io_err(root))
}

pub(super) fn link_err(path: &std::path::Path, e: impl std::fmt::Display) -> DatapathError {
    DatapathError::Link { path: path.to_path_buf(), msg: e.to_string() }
}
