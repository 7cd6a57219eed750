//! Where the model comes from: the local store (local mode, the embedded default) or a
//! Kubernetes API server. Sources deliver objects and know nothing of identities or maps;
//! both hand what they observe to the agent's one entry point,
//! [`Agent::handle`](crate::controller::Agent::handle), which always reconciles.
pub mod announce;
pub mod kubernetes;
pub mod local;
pub mod validity;

use std::collections::BTreeSet;

use netpol_policy::model::{Key, Kind, Object};

/// A change a source observed.
#[derive(Debug)]
pub enum Change {
    Upsert(Object),
    Delete(Kind, String, String),
    /// A full list of `Kind` completed: anything else of that kind is gone.
    Relisted(Kind, BTreeSet<Key>),
}

/// The kinds the model needs before it may be enforced.
pub const WATCHED: [Kind; 8] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::NetworkPolicy,
    Kind::CiliumNetworkPolicy,
    Kind::Node,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::NetpolEndpoint,
];
