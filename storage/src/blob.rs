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
//!
//! Blobs of any size stream: [`BlobStore::put_reader`] takes any
//! [`std::io::Read`] (the content is hashed while it is written, never held
//! in memory whole) and may check the digest the caller expects;
//! [`BlobStore::open_blob`] gives a [`BlobReader`] (`Read + Seek`, with the
//! blob's size) and [`BlobStore::read_range`] a reader over a byte range.
//! [`BlobStore::put`] and [`BlobStore::get`] remain for small contents.

use std::{
    fmt,
    io::{self, Read, Seek, SeekFrom},
    ops::Range,
};

pub use crate::digest::Digest;
use crate::StorageError;

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

/// A stored blob opened for reading: `Read + Seek` over its content, and
/// its size. Reads stream from wherever the blob lives (a file, or a row
/// held in memory for small blobs).
pub struct BlobReader {
    size: u64,
    source: Box<dyn ReadSeek>,
}

/// What a [`BlobReader`] reads from.
trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

impl BlobReader {
    /// A reader over `source`, which holds `size` bytes.
    pub fn new(size: u64, source: impl Read + Seek + Send + 'static) -> Self {
        Self {
            size,
            source: Box::new(source),
        }
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A reader of bytes `range` of the blob only. A range reaching past
    /// the end, or ending before it starts, is [`StorageError::BlobRange`].
    pub fn range(
        mut self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<io::Take<BlobReader>, StorageError> {
        if range.start > range.end || range.end > self.size {
            return Err(StorageError::BlobRange {
                digest: *digest,
                start: range.start,
                end: range.end,
                size: self.size,
            });
        }
        self.seek(SeekFrom::Start(range.start))
            .map_err(|source| StorageError::io(format!("seeking in blob {digest}"), source))?;
        Ok(self.take(range.end - range.start))
    }
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.source.read(buf)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.source.seek(pos)
    }
}

/// A content-addressed store of byte blobs.
pub trait BlobStore: Send + Sync {
    /// Stores `content` (once per digest) and pins it until the returned
    /// guard is dropped.
    fn put(&self, content: &[u8]) -> Result<BlobPin, StorageError>;

    /// Stores everything `reader` yields, streaming (never holding it whole
    /// in memory), once per digest, and pins it until the returned guard is
    /// dropped. When `expected` is given and the content's digest differs,
    /// fails with [`StorageError::DigestMismatch`] and keeps nothing.
    fn put_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> Result<BlobPin, StorageError>;

    /// The content of `digest`, if stored, read whole into memory: for
    /// small blobs; stream large ones with [`BlobStore::open_blob`].
    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StorageError>;

    /// A streaming reader of blob `digest` (with its size), if stored.
    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>, StorageError>;

    /// A reader of bytes `range` of blob `digest`, if stored; a range
    /// outside the blob is [`StorageError::BlobRange`].
    fn read_range(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Option<io::Take<BlobReader>>, StorageError> {
        self.open_blob(digest)?
            .map(|reader| reader.range(digest, range))
            .transpose()
    }

    /// The size of blob `digest` in bytes, if stored.
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(self.open_blob(digest)?.map(|r| r.size()))
    }

    /// Those of `digests` that are not stored, in the order given: what a
    /// replica must fetch before it applies events referencing them.
    fn absent_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>, StorageError> {
        let mut missing = Vec::new();
        for digest in digests {
            if self.blob_size(digest)?.is_none() {
                missing.push(*digest);
            }
        }
        Ok(missing)
    }

    /// How many view references `digest` has.
    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError>;

    /// Removes every blob that no view references and no [`BlobPin`] holds.
    fn collect_garbage(&self) -> Result<GcStats, StorageError>;
}
