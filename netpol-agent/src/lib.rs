//! netpol-agent: the node agent of netpol. The pure policy core (model, validation,
//! compiler, reference evaluator) is the `netpol-policy` crate; this crate adds the kernel
//! and the sources.
//!
//! - [`datapath`]: the eBPF programs, their pinned maps and links, and a typed API over them
//!   (the only module that talks to the kernel through aya); [`cgroup`]: where the socket
//!   hooks for Services attach; [`sockets`]: connected UDP sockets to departed backends
//!   destroyed; [`routing`] and [`masquerade`]: the node network of a cluster (routes to the
//!   other nodes' pods, pod traffic leaving the cluster masqueraded).
//! - [`endpoints`]: attachments handed over by netpol-cni, persisted, with their identities;
//!   [`cni_config`]: the node's CNI configuration, written once the agent is ready.
//! - [`controller`]: the agent's state and its loop body (compile, then sync), over an
//!   [`enforcer`] (the datapath, or in-memory maps for tests);
//!   [`sources`]: the local store and the Kubernetes watchers that feed it.
//! - [`api`]: the HTTP/JSON API on the agent's Unix socket; [`monitor`]: the event ring,
//!   always consumed, counted and served; [`metrics`]: the Prometheus exposition.
//! - `testing` (feature `testing`): harnesses for the test suites (a pinned datapath torn
//!   down on drop, an in-process agent).
pub mod api;
pub mod cgroup;
pub mod cni_config;
pub mod controller;
pub mod datapath;
pub mod dnsproxy;
pub mod endpoints;
pub mod enforcer;
pub mod explain;
pub mod flows;
pub mod masquerade;
pub mod metrics;
pub mod monitor;
pub mod routing;
pub mod sockets;
pub mod sources;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
