//! netpol-policy: the pure core of netpol. Everything here is computation over values — no
//! aya, no build script, no kernel — so `cargo test -p netpol-policy` needs neither root
//! nor the eBPF toolchain.
//!
//! - [`model`]: what the sources deliver (Namespaces, Pods, NetworkPolicies, Nodes,
//!   Services, EndpointSlices, and the agents' [`crd::NetpolEndpoint`] address
//!   announcements); [`policy`]: NetworkPolicy validation and normalization;
//!   [`services`]: frontends and their ready backends (and local mode's EndpointSlices).
//! - [`compiler`]: model → desired map state, in stages (identities, CIDR identities,
//!   ipcache, rule expansion with named ports, budgets), with stable typed numbering.
//! - [`entries`]: the entry vocabulary (direction, protocol, policy entry, raw map keys);
//!   [`state`]: a whole map state; [`lookup`]: the programs' decision re-enacted over one.
//! - [`cilium`]: CiliumNetworkPolicy, the subset netpol enforces, validated and lowered to
//!   the same form.
//! - [`names`]: DNS names as CiliumNetworkPolicy matches them (`matchName`, `matchPattern`).
//! - [`reference`]: the plain-semantics oracle the compiler is tested against; it shares no
//!   code with `policy` or `compiler`.
pub mod cilium;
pub mod compiler;
pub mod crd;
pub mod entries;
pub mod lookup;
pub mod model;
pub mod names;
pub mod policy;
pub mod reference;
pub mod services;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
