//! netpol-agent: the node agent of netpol.
//!
//! - [`datapath`]: the eBPF programs, their pinned maps and links, and a typed API over them
//!   (the only module that talks to the kernel through aya).
//! - [`endpoints`]: attachments handed over by netpol-cni, persisted, with their identities.
//! - [`controller`]: the agent's state and its loop body (compile, then sync);
//!   [`sources`]: the local store and the Kubernetes watchers that feed it.
//! - [`api`]: the HTTP/JSON API on the agent's Unix socket.
//! - [`model`]: what the sources deliver (Namespaces, Pods, NetworkPolicies, Nodes);
//!   [`policy`]: NetworkPolicy validation and normalization; [`compiler`]: model → desired
//!   datapath state; [`reference`]: the plain-semantics oracle the tests check it against.
pub mod api;
pub mod compiler;
pub mod controller;
pub mod datapath;
pub mod endpoints;
pub mod model;
pub mod policy;
pub mod reference;
pub mod sources;
