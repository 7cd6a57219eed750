//! Joining the cgroup whose processes get Services translated at the socket
//! ([`NodeInfo::socket_lb_cgroup`](crate::NodeInfo::socket_lb_cgroup)): the one way the agent's
//! tests and the CLI's pods enter it, between fork and exec.

use std::{ffi::CString, path::Path, process::Command};

/// A cgroup's `cgroup.procs` file, ready to be written after fork.
#[derive(Clone, Debug)]
pub struct CgroupProcs(CString);

impl CgroupProcs {
    /// The `cgroup.procs` file of the cgroup directory `dir`.
    pub fn of(dir: &Path) -> CgroupProcs {
        let path = dir.join("cgroup.procs").into_os_string().into_encoded_bytes();
        CgroupProcs(CString::new(path).expect("a path without NUL"))
    }

    /// Moves the calling process into the cgroup. Only async-signal-safe calls (open,
    /// write, close), so it may run between fork and exec.
    pub fn join(&self) -> std::io::Result<()> {
        // SAFETY: a valid NUL-terminated path and a one-byte buffer.
        let fd = unsafe { libc::open(self.0.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        unsafe { libc::close(fd) };
        if written == 1 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// Makes `cmd`'s process (and everything it starts) join the cgroup `dir` before it execs.
pub fn join_on_exec<'c>(cmd: &'c mut Command, dir: &Path) -> &'c mut Command {
    use std::os::unix::process::CommandExt;
    let procs = CgroupProcs::of(dir);
    // SAFETY: `join` makes only async-signal-safe calls.
    unsafe { cmd.pre_exec(move || procs.join()) }
}
