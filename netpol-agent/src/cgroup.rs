//! cgroup2, where the socket hooks attach: the root of the unified hierarchy in a cluster (every
//! pod's processes are below it), a dedicated directory in local mode (only the pods'
//! processes join it, so the host's own sockets are never translated).
//!
//! The mount is found through `/proc/self/mountinfo`, not assumed: hybrid hierarchies (this
//! machine's) mount cgroup2 at `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted (the first mount of type `cgroup2`).
pub fn cgroup2_mount() -> std::io::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    mount_of(&info, "cgroup2")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup2 mount"))
}

/// The mount point of the first mount of `fstype` in a mountinfo text: the fifth field,
/// the type being the first field after the ` - ` separator.
fn mount_of(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let point = head.split(' ').nth(4)?;
        (tail.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// Whether `path` is a directory of the cgroup2 hierarchy (it has `cgroup.procs`).
pub fn is_cgroup(path: &Path) -> bool {
    path.join("cgroup.procs").exists()
}

/// The ids of the programs attached to the cgroup directory `dir` itself (not inherited)
/// at one attach point (`enum bpf_attach_type`), from BPF_PROG_QUERY.
pub fn attached_programs(dir: &Path, attach_type: u32) -> std::io::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    /// The `query` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    let cgroup = std::fs::File::open(dir)?;
    let mut ids = vec![0u32; 64];
    let mut q = Query {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: `q` is a valid bpf_attr prefix for BPF_PROG_QUERY and `prog_ids` points at
    // `prog_cnt` writable u32s that outlive the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut Query, std::mem::size_of::<Query>())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    ids.truncate(q.prog_cnt as usize);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_hybrid_and_unified_layouts() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(mount_of(hybrid, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_of(unified, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup")));
        let odd = "31 1 0:27 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(mount_of(odd, "cgroup2"), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(mount_of("", "cgroup2"), None);
    }
}
