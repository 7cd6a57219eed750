//! Shared by the local-mode suites.

use std::path::PathBuf;

/// The netpol binary; netpol-agent and netpol-cni must sit next to it (`cargo xtask test`
/// builds every binary before it runs the tests).
pub fn netpol() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_netpol"));
    for tool in ["netpol-agent", "netpol-cni"] {
        assert!(
            bin.with_file_name(tool).exists(),
            "{tool} is not built next to netpol: run `cargo xtask test`"
        );
    }
    bin
}
