//! Paths the suites share.

use std::path::PathBuf;

/// The workspace's `../shared` directory (Porch fixtures and docs). The
/// runtime `CARGO_MANIFEST_DIR` first (cargo and nextest set it): a binary
/// another checkout built into a shared target directory still finds this
/// checkout's.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../shared")
}
