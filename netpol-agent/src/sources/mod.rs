//! Where the model comes from: the local store (local mode, the embedded default) or a
//! Kubernetes API server. Sources deliver objects and know nothing of identities or maps.
pub mod kubernetes;
pub mod local;
