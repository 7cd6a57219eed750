//! netpol-agent: the node agent of netpol.
//!
//! - [`datapath`]: the eBPF programs, their pinned maps and links, and a typed API over them
//!   (the only module that talks to the kernel through aya).
pub mod datapath;
