//! bpffs: pins need it, and a fresh machine may not have it mounted.

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use super::{DatapathError, Result};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at `path` unless it is already there. The check and the mount happen under
/// an exclusive lock on the parent directory: two datapaths opening at once would otherwise
/// both mount, stacking a second bpffs that hides the pins made on the first.
pub fn ensure_mounted(path: &Path) -> Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    let err = |msg: String| DatapathError::Bpffs { path: path.to_path_buf(), msg };
    // The parent directory is the lock: nothing to create or leave behind.
    let parent = path.parent().unwrap_or(Path::new("/"));
    let lock = std::fs::File::open(parent).map_err(|e| err(format!("lock {}: {e}", parent.display())))?;
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(err(format!("lock: {}", std::io::Error::last_os_error())));
    }
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| err(e.to_string()))?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| err(e.to_string()))?;
    let rc = unsafe {
        libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast())
    };
    if rc != 0 {
        return Err(err(format!("mount -t bpf: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}
