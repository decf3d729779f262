//! The content-addressed blob store.
//!
//! Resource contents are stored once per sha256 digest, however many package
//! revisions refer to them. Views count their references
//! ([`crate::ViewTx::retain_blob`]); [`BlobStore::collect_garbage`] removes
//! blobs that no view references and nobody has pinned.
//!
//! A writer pins a blob from the moment it stores it until the event that
//! refers to it is committed (the [`BlobPin`] guard), so a collection running
//! in between never removes it.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::StorageError;

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `content`.
    pub fn of(content: &[u8]) -> Self {
        Digest(Sha256::digest(content).into())
    }

    /// Parses `sha256:<64 hex>` or bare hex.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Keeps a stored blob from being collected until dropped.
pub struct BlobPin {
    pub(crate) digest: Digest,
    pub(crate) release: Option<Box<dyn FnOnce(Digest) + Send>>,
}

impl BlobPin {
    /// The pinned blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

impl fmt::Debug for BlobPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobPin")
            .field("digest", &self.digest)
            .finish()
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release(self.digest);
        }
    }
}

/// What a garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs examined.
    pub scanned: u64,
    /// Blobs removed because nothing referenced or pinned them.
    pub removed: u64,
    /// Bytes freed.
    pub removed_bytes: u64,
}

/// A content-addressed store of byte blobs.
pub trait BlobStore: Send + Sync {
    /// Stores `content` (once per digest) and pins it until the returned
    /// guard is dropped.
    fn put(&self, content: &[u8]) -> Result<BlobPin, StorageError>;

    /// The content of `digest`, if stored.
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StorageError>;

    /// How many view references `digest` has.
    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError>;

    /// Removes every blob that no view references and no [`BlobPin`] holds.
    fn collect_garbage(&self) -> Result<GcStats, StorageError>;
}
