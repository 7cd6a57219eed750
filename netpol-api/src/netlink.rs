//! One way to talk rtnetlink, for the agent (routes between nodes) and the CNI plugin (pod
//! wiring): each conversation gets a fresh connection, on a thread of its own with its own
//! current-thread runtime, inside a chosen network namespace.
//!
//! Why a thread: `setns` moves only the calling thread and a netlink socket belongs to the
//! namespace it was opened in, so a conversation in another namespace must not disturb the
//! caller's; and the caller may itself be inside a runtime, where blocking on another one is
//! not allowed. A new thread starts in the *process's* namespace, so even "the caller's
//! namespace" is entered explicitly (`/proc/thread-self/ns/net` of the calling thread).

use std::{
    fs::File,
    future::Future,
    os::fd::{AsFd, AsRawFd},
};

pub use rtnetlink::{self, Handle};

/// What failed before the conversation could start, or how it ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("netlink: entering the network namespace: {0}")]
    Namespace(std::io::Error),
    #[error("netlink: the conversation's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("netlink: socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink: the conversation's thread panicked")]
    Panicked,
}

/// Runs `f` on a fresh rtnetlink connection in the network namespace `netns` (None: the
/// calling thread's). Errors of the setup become `E` through `From<SetupError>`.
pub fn converse<T, E, F, Fut>(netns: Option<&File>, f: F) -> Result<T, E>
where
    T: Send,
    E: From<SetupError> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, E>>,
{
    let own;
    let netns = match netns {
        Some(ns) => ns,
        None => {
            own = File::open("/proc/thread-self/ns/net").map_err(SetupError::Namespace)?;
            &own
        }
    };
    let fd = netns.as_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(SetupError::Namespace(std::io::Error::last_os_error()).into());
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(SetupError::Runtime)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::Socket)?;
                let task = tokio::spawn(conn);
                let r = f(handle).await;
                task.abort();
                r
            })
        })
        .join()
        .unwrap_or_else(|_| Err(SetupError::Panicked.into()))
    })
}
