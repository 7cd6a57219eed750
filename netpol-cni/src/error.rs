//! CNI errors: the spec's error object, with the spec's codes.

use serde_json::json;

/// Well-known error codes (CNI spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: CHECK found the attachment different from what ADD made.
    pub const CHECK_MISMATCH: u32 = 100;
    /// Plugin-specific: the pod range has no free address.
    pub const RANGE_FULL: u32 = 101;
    /// Plugin-specific: the address is already routed to, or registered for, another live
    /// interface (two networks with overlapping ranges): the live one keeps it.
    pub const ADDRESS_IN_USE: u32 = 102;
    /// Anything else (as libcni reports unexpected failures).
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object, in the caller's version.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl From<netpol_api::netlink::SetupError> for CniError {
    fn from(e: netpol_api::netlink::SetupError) -> Self {
        match e {
            netpol_api::netlink::SetupError::Namespace(_) => CniError::new(code::IO_FAILURE, e.to_string()),
            _ => CniError::new(code::INTERNAL, e.to_string()),
        }
    }
}

pub fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

pub fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, format!("{what}: {e}"))
}
