//! Paths the suites share.

use std::path::{Path, PathBuf};

/// The workspace's `../shared` directory (Porch fixtures and docs).
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}
