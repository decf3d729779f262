//! The blob store: small blobs as rows of the `blobs` column family, large
//! ones as files, both counted, pinned and collected the same way.
//!
//! # Where a blob lives
//! A blob of at most [`StoreConfig::blob_inline_max_bytes`] bytes is a row
//! of the `blobs` column family (`sha256 → content`). A larger one is the
//! file `<store dir>/blobs/<h0h1>/<h2h3>/<64 hex>` (the first two bytes of
//! its digest shard the directories). Either way a digest is stored once:
//! a put finds it in either place before storing it again, and reads look
//! in both, so changing the threshold between runs loses nothing.
//!
//! # Writing a file blob
//! [`BlobStore::put_reader`] reads the content in chunks of
//! [`STREAM_CHUNK_BYTES`], hashing as it goes. Up to the threshold the
//! bytes stay in memory; past it they go to a temporary file in
//! `<store dir>/blobs/tmp/`. At the end the file is fsynced, the digest
//! checked against the caller's (a mismatch removes the file and keeps
//! nothing), and — under the pin lock, so no collection can run between
//! "stored" and "pinned" — renamed into place, after which the shard
//! directory is fsynced. A crash before the rename leaves only a temporary
//! file, which the next open removes (`sweep_temp_files`).
//!
//! These fsyncs (the file's, and the directories' after creating a shard
//! or renaming into it) follow [`StoreConfig::sync`], like the log's
//! commits: with it off (benchmarks only) no blob write is fsynced, and a
//! power loss may lose blob files an acknowledged event refers to.
//!
//! # Collection
//! [`BlobStore::collect_garbage`] runs on the writer thread, so no commit
//! adds a reference meanwhile. It removes every row and every file whose
//! digest no `blob_refs` row names and no [`crate::BlobPin`] holds.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{Cursor, Read, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use rocksdb::IteratorMode;
use sha2::{Digest as _, Sha256};
use tracing::info;

use super::writer::Writer;
use super::{command::Command, config::StoreConfig, inner::Inner, Store};
use crate::{
    blob::{BlobPin, BlobReader, BlobStore, Digest, GcStats},
    columns::Column,
    keys, StorageError,
};

/// Bytes read from a caller's reader (and from a blob file) at a time.
pub const STREAM_CHUNK_BYTES: usize = 64 * 1024;

/// Directory of file blobs under the store's directory.
const BLOB_DIR: &str = "blobs";
/// Directory of blob files being written, under [`BLOB_DIR`].
const TEMP_DIR: &str = "tmp";

impl StoreConfig {
    /// Directory holding file blobs: `<path>/blobs`.
    pub fn blob_dir(&self) -> PathBuf {
        self.path.join(BLOB_DIR)
    }
}

/// Path of the file of blob `digest` under `root` (the blob directory).
fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = hex::encode(digest.0);
    root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
}

/// Removes temporary files left by puts a crash interrupted. Called at open,
/// after RocksDB's lock is taken, so no other process is writing there.
/// Returns how many files it removed.
pub(super) fn sweep_temp_files(config: &StoreConfig) -> Result<u64, StorageError> {
    let temp = config.blob_dir().join(TEMP_DIR);
    let entries = match fs::read_dir(&temp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::io(format!("reading {}", temp.display()), e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry =
            entry.map_err(|e| StorageError::io(format!("reading {}", temp.display()), e))?;
        let path = entry.path();
        fs::remove_file(&path)
            .map_err(|e| StorageError::io(format!("removing {}", path.display()), e))?;
        removed += 1;
    }
    if removed > 0 {
        info!(removed, "removed blob files left by an interrupted put");
    }
    Ok(removed)
}

/// fsyncs directory `dir`, so a rename or creation in it is durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("syncing directory {}", dir.display()), e))
}

/// A temporary blob file that removes itself unless kept.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dir: &Path) -> Result<Self, StorageError> {
        fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{}.part", cairn_events::envelope::new_id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(format!("creating {}", path.display()), e))?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(bytes)
            .map_err(|e| StorageError::io(format!("writing {}", self.path.display()), e))
    }

    /// Closes the file, fsyncing it first when `sync` is set.
    fn finish(&mut self, sync: bool) -> Result<(), StorageError> {
        let file = self.file.take().expect("open until finished");
        if !sync {
            return Ok(());
        }
        file.sync_all()
            .map_err(|e| StorageError::io(format!("syncing {}", self.path.display()), e))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where streamed content went: memory (small) or a temporary file.
enum Spool {
    Memory(Vec<u8>),
    File(TempFile, u64),
}

impl Store {
    fn pin(&self, digest: Digest) -> BlobPin {
        let weak = Arc::downgrade(&self.shared.inner);
        BlobPin {
            digest,
            release: Some(Box::new(move |d| {
                if let Some(inner) = weak.upgrade() {
                    let mut pins = inner.pins.lock();
                    if let Some(n) = pins.get_mut(&d) {
                        *n -= 1;
                        if *n == 0 {
                            pins.remove(&d);
                        }
                    }
                }
            })),
        }
    }

    /// Stores a small blob as a row (once), pinned.
    fn put_inline(&self, digest: Digest, content: &[u8]) -> Result<BlobPin, StorageError> {
        let inner = self.inner();
        let blobs = inner.cf(Column::Blobs);
        {
            // Pin and write under the lock a collection also takes per blob,
            // so a blob is never removed between "exists" and "pinned".
            let mut pins = inner.pins.lock();
            if !inner.blob_exists(&digest)? {
                // Not synced on its own: the synced append that refers to it
                // comes later in the same WAL, so it is durable first.
                inner.db.put_cf(blobs, digest.0, content)?;
            }
            *pins.entry(digest).or_insert(0) += 1;
        }
        Ok(self.pin(digest))
    }

    /// Moves a finished temporary file into place (unless the blob is
    /// stored already), pinned.
    fn put_file(&self, digest: Digest, mut temp: TempFile) -> Result<BlobPin, StorageError> {
        let inner = self.inner();
        let root = inner.config.blob_dir();
        let target = blob_path(&root, &digest);
        let shard = target.parent().expect("blob paths have a shard directory");
        // `StoreConfig::sync` off (benchmarks only): no fsync of the file
        // or of the directories, as the log's commits are not synced either.
        let sync = inner.config.sync;
        temp.finish(sync)?;
        if !shard.is_dir() {
            fs::create_dir_all(shard)
                .map_err(|e| StorageError::io(format!("creating {}", shard.display()), e))?;
            if sync {
                // Make the new directories' entries durable too.
                let first = shard.parent().expect("shards are two levels deep");
                sync_dir(first)?;
                sync_dir(&root)?;
            }
        }
        {
            let mut pins = inner.pins.lock();
            if !inner.blob_exists(&digest)? {
                fs::rename(&temp.path, &target).map_err(|e| {
                    StorageError::io(format!("moving a blob to {}", target.display()), e)
                })?;
                temp.path = PathBuf::new(); // moved: nothing to remove
                if sync {
                    sync_dir(shard)?;
                }
            }
            *pins.entry(digest).or_insert(0) += 1;
        }
        Ok(self.pin(digest))
    }
}

impl Inner {
    /// Whether blob `digest` is stored, as a row or as a file.
    fn blob_exists(&self, digest: &Digest) -> Result<bool, StorageError> {
        if self
            .db
            .get_pinned_cf(self.cf(Column::Blobs), digest.0)?
            .is_some()
        {
            return Ok(true);
        }
        Ok(blob_path(&self.config.blob_dir(), digest).is_file())
    }

    pub(super) fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError> {
        let cf = self.cf(Column::BlobRefs);
        let mut total = 0;
        for view in &self.views {
            if let Some(v) = self
                .db
                .get_cf(cf, keys::blob_ref_key(view.name(), &digest.0))?
            {
                total += keys::decode_u64(&v)
                    .ok_or_else(|| StorageError::Corrupt(format!("ref count of {digest}")))?;
            }
        }
        Ok(total)
    }
}

impl BlobStore for Store {
    fn put(&self, content: &[u8]) -> Result<BlobPin, StorageError> {
        if content.len() > self.inner().config.blob_inline_max_bytes {
            let mut reader = content;
            return self.put_reader(&mut reader, None);
        }
        self.put_inline(Digest::of(content), content)
    }

    fn put_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> Result<BlobPin, StorageError> {
        let inline_max = self.inner().config.blob_inline_max_bytes;
        let temp_dir = self.inner().config.blob_dir().join(TEMP_DIR);
        let mut hasher = Sha256::new();
        let mut spool = Spool::Memory(Vec::new());
        let mut chunk = vec![0u8; STREAM_CHUNK_BYTES];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io("reading blob content", e)),
            };
            let bytes = &chunk[..n];
            hasher.update(bytes);
            spool = match spool {
                Spool::Memory(mut held) if held.len() + n <= inline_max => {
                    held.extend_from_slice(bytes);
                    Spool::Memory(held)
                }
                Spool::Memory(held) => {
                    let mut temp = TempFile::create(&temp_dir)?;
                    temp.write(&held)?;
                    temp.write(bytes)?;
                    Spool::File(temp, (held.len() + n) as u64)
                }
                Spool::File(mut temp, size) => {
                    temp.write(bytes)?;
                    Spool::File(temp, size + n as u64)
                }
            };
        }
        let digest = Digest(hasher.finalize().into());
        if let Some(expected) = expected {
            if *expected != digest {
                // The temporary file, if any, is removed as `spool` drops.
                return Err(StorageError::DigestMismatch {
                    expected: *expected,
                    found: digest,
                });
            }
        }
        match spool {
            Spool::Memory(content) => self.put_inline(digest, &content),
            Spool::File(temp, _) => self.put_file(digest, temp),
        }
    }

    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StorageError> {
        let inner = self.inner();
        if let Some(row) = inner.db.get_cf(inner.cf(Column::Blobs), digest.0)? {
            return Ok(Some(row));
        }
        let path = blob_path(&inner.config.blob_dir(), digest);
        match fs::read(&path) {
            Ok(content) => Ok(Some(content)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>, StorageError> {
        let inner = self.inner();
        if let Some(row) = inner.db.get_cf(inner.cf(Column::Blobs), digest.0)? {
            return Ok(Some(BlobReader::new(row.len() as u64, Cursor::new(row))));
        }
        let path = blob_path(&inner.config.blob_dir(), digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(format!("opening {}", path.display()), e)),
        };
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?
            .len();
        Ok(Some(BlobReader::new(
            size,
            std::io::BufReader::with_capacity(STREAM_CHUNK_BYTES, file),
        )))
    }

    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError> {
        self.inner().ref_count(digest)
    }

    fn collect_garbage(&self) -> Result<GcStats, StorageError> {
        self.call(Command::CollectGarbage)
    }
}

/// Every file blob under `root`: `(digest, path, size)`. Skips the
/// temporary directory and anything not named like a blob.
fn file_blobs(root: &Path) -> Result<Vec<(Digest, PathBuf, u64)>, StorageError> {
    let read = |dir: &Path| -> Result<Vec<fs::DirEntry>, StorageError> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::io(format!("reading {}", dir.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StorageError::io(format!("reading {}", dir.display()), e)),
        }
    };
    let is_shard = |entry: &fs::DirEntry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut out = Vec::new();
    for first in read(root)?.into_iter().filter(is_shard) {
        for second in read(&first.path())?.into_iter().filter(is_shard) {
            for file in read(&second.path())? {
                let name = file.file_name();
                let Some(digest) = name.to_str().and_then(Digest::parse) else {
                    continue;
                };
                let path = file.path();
                let size = file
                    .metadata()
                    .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?
                    .len();
                out.push((digest, path, size));
            }
        }
    }
    Ok(out)
}

impl Writer {
    /// Removes blobs that no view references and nobody pins. References
    /// are read from every `blob_refs` row, including rows of views this
    /// build does not know (left by another version), so a roll-back never
    /// loses a newer view's blobs. Runs on the writer thread, so no commit
    /// can add a reference meanwhile; appends wait for it.
    pub(super) fn collect_garbage(&mut self) -> Result<GcStats, StorageError> {
        let inner = self.inner.clone();
        let mut referenced = HashSet::new();
        for item in inner
            .db
            .iterator_cf(inner.cf(Column::BlobRefs), IteratorMode::Start)
        {
            let (key, _) = item?;
            let digest = key
                .len()
                .checked_sub(32)
                .and_then(|at| <[u8; 32]>::try_from(&key[at..]).ok())
                .ok_or_else(|| StorageError::Corrupt("blob ref key without a sha256".into()))?;
            referenced.insert(digest);
        }
        let blobs = inner.cf(Column::Blobs);
        let mut rows = Vec::new();
        let mut stats = GcStats::default();
        let mut iter = inner.db.raw_iterator_cf(blobs);
        iter.seek_to_first();
        while iter.valid() {
            stats.scanned += 1;
            if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                let digest: [u8; 32] = key
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("blob key is not a sha256".into()))?;
                if !referenced.contains(&digest) {
                    rows.push((Digest(digest), value.len() as u64));
                }
            }
            iter.next();
        }
        iter.status()?;
        for (digest, size) in rows {
            let pins = inner.pins.lock();
            if pins.contains_key(&digest) {
                continue;
            }
            inner.db.delete_cf(blobs, digest.0)?;
            drop(pins);
            stats.removed += 1;
            stats.removed_bytes += size;
        }
        for (digest, path, size) in file_blobs(&inner.config.blob_dir())? {
            stats.scanned += 1;
            if referenced.contains(&digest.0) {
                continue;
            }
            let pins = inner.pins.lock();
            if pins.contains_key(&digest) {
                continue;
            }
            fs::remove_file(&path)
                .map_err(|e| StorageError::io(format!("removing {}", path.display()), e))?;
            drop(pins);
            stats.removed += 1;
            stats.removed_bytes += size;
        }
        if stats.removed > 0 {
            info!(
                removed = stats.removed,
                bytes = stats.removed_bytes,
                "blobs collected"
            );
        }
        Ok(stats)
    }
}
