//! netpol-agent: the node agent of netpol.
//!
//! - [`datapath`]: the eBPF programs, their pinned maps and links, and a typed API over them
//!   (the only module that talks to the kernel through aya).
//! - [`endpoints`]: attachments handed over by netpol-cni, persisted, with their identities.
//! - [`api`]: the HTTP/JSON API on the agent's Unix socket.
pub mod api;
pub mod datapath;
pub mod endpoints;
