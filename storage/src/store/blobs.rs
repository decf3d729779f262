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
//! # Reading a blob while it is written
//! [`Store::blob_writer`] is the same put driven from outside: the caller
//! [`BlobWriter::write`]s chunks as they come (a download), then
//! [`BlobWriter::finish`]es (stored and pinned as by `put_reader`: a row
//! when small, else renamed into place) or drops it (the temporary file is
//! removed, nothing stored). The bytes always go to the temporary file —
//! also those of a blob that ends up a row — so that other threads can
//! read what was written so far through a [`BlobSpool`]: positional reads
//! of one read handle of that file, which stays valid after the file is
//! renamed into place or removed (the open handle keeps the data). The
//! writer says how far it got ([`BlobWriter::written`]); a reader must not
//! read past what it was told.
//!
//! These fsyncs (the file's, and the directories' after creating a shard
//! or renaming into it) follow [`StoreConfig::sync`], like the log's
//! commits: with it off (benchmarks only) no blob write is fsynced, and a
//! power loss may lose blob files an acknowledged event refers to.
//!
//! # Collection
//! [`BlobStore::collect_garbage`] removes every row and every file whose
//! digest no `blob_refs` row names and no [`crate::BlobPin`] holds. The
//! scan runs on the caller's thread, off the write path: it reads the
//! references and the blob rows from one RocksDB snapshot, and lists the
//! blob files, while appends go on. What it found unreferenced is only a
//! candidate — an append committed since the snapshot may refer to it again
//! (a revision re-added with the same content), and such an append need not
//! pin it. So the deletion is conditional, decided where references are
//! written: the candidates go to the writer thread in batches of at most
//! [`GC_DELETE_BATCH_BLOBS`], and for each the writer checks — with no
//! commit running, under the pin lock — that no `blob_refs` row names it
//! now and no pin holds it, and only then deletes it. An append waits for
//! at most one such batch (point reads and deletes), never for the scan.

use std::{
    collections::{BTreeSet, HashSet},
    fs::{self, File},
    io::{Cursor, Read, Write},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
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

/// Most candidates of a collection the writer re-checks and deletes in one
/// command: what an append may wait for while a collection runs.
pub const GC_DELETE_BATCH_BLOBS: usize = 256;

/// A blob a collection found unreferenced in its snapshot, for the writer
/// to re-check and delete.
#[derive(Debug, Clone)]
pub(super) struct GcCandidate {
    digest: Digest,
    size: u64,
    /// Its file, for a file blob; `None` for a row.
    file: Option<PathBuf>,
}

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

impl Store {
    /// Bytes of every blob this store holds (rows and files), as of now:
    /// counted once at open, then kept up to date by puts and collections.
    pub fn blob_bytes(&self) -> u64 {
        self.inner().blob_bytes.load(Ordering::Relaxed)
    }

    /// Blob `digest` when it is a row (blobs up to
    /// `blob_inline_max_bytes`) that RocksDB holds in memory (memtables,
    /// block cache), never waiting for the disk: `Some(Some(content))`;
    /// `Some(None)` when it is no row (a file blob, or not stored);
    /// `None` when telling needs a read from a file. For a hot path on an
    /// async thread; [`BlobStore::get`] reads it wherever it is.
    pub fn blob_row_in_memory(
        &self,
        digest: &Digest,
    ) -> Result<Option<Option<Vec<u8>>>, StorageError> {
        let inner = self.inner();
        super::read::get_in_memory(&inner.db, inner.cf(Column::Blobs), &digest.0)
    }

    /// The file holding blob `digest`, when it is stored as a file (blobs
    /// up to `blob_inline_max_bytes` are rows and have none): for a client
    /// on the same host that reads it in place. Read-only use: the file is
    /// removed when the blob is collected.
    pub fn blob_file(&self, digest: &Digest) -> Option<PathBuf> {
        let path = blob_path(&self.config().blob_dir(), digest);
        path.is_file().then_some(path)
    }
}

/// Path of the file of blob `digest` under `root` (the blob directory).
fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = const_hex::encode(digest.0);
    root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
}

/// Bytes of every stored blob: the rows of the `blobs` column family and
/// the files under the blob directory (read at open, once).
pub(super) fn stored_bytes(inner: &Inner) -> Result<u64, StorageError> {
    let mut total = 0u64;
    let mut iter = inner.db.raw_iterator_cf(inner.cf(Column::Blobs));
    iter.seek_to_first();
    while iter.valid() {
        total += iter.value().map_or(0, |v| v.len() as u64);
        iter.next();
    }
    iter.status()?;
    for (_, _, size) in file_blobs(&inner.config.blob_dir())? {
        total += size;
    }
    Ok(total)
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

    /// Pins blob `digest` when it is stored: `None` when it is not. For a
    /// holder of a blob it did not just write — a cluster node about to
    /// append an event that refers to a body it holds already. Under the
    /// lock a collection takes per blob, so a pinned blob is never removed.
    pub fn pin_stored(&self, digest: &Digest) -> Result<Option<BlobPin>, StorageError> {
        let inner = self.inner();
        {
            let mut pins = inner.pins.lock();
            if !inner.blob_exists(digest)? {
                return Ok(None);
            }
            *pins.entry(*digest).or_insert(0) += 1;
        }
        Ok(Some(self.pin(*digest)))
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
                inner
                    .blob_bytes
                    .fetch_add(content.len() as u64, Ordering::Relaxed);
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
                let size = fs::metadata(&target)
                    .map_err(|e| StorageError::io(format!("reading {}", target.display()), e))?
                    .len();
                inner.blob_bytes.fetch_add(size, Ordering::Relaxed);
                if sync {
                    sync_dir(shard)?;
                }
            }
            *pins.entry(digest).or_insert(0) += 1;
        }
        Ok(self.pin(digest))
    }
}

/// A blob being written, readable while it is written (see "Reading a
/// blob while it is written" in the module docs): made by
/// [`Store::blob_writer`]; dropped unfinished, it removes its temporary
/// file and stores nothing.
pub struct BlobWriter {
    store: Store,
    temp: TempFile,
    hasher: Sha256,
    written: u64,
    spool: BlobSpool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.temp.path)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// What a [`BlobWriter`] wrote so far, for readers on other threads:
/// positional reads of one read handle of its file (cheap to clone; the
/// data stays readable after the file is moved into place or removed).
#[derive(Debug, Clone)]
pub struct BlobSpool {
    file: Arc<File>,
}

impl BlobSpool {
    /// Reads into `buf` from byte `offset`; answers how many bytes were
    /// read (0 at the end of what was written). Blocking file I/O.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&*self.file, buf, offset)
    }
}

impl Store {
    /// A [`BlobWriter`]: a blob written in chunks and readable while it is
    /// written. Creates its temporary file (blocking file I/O).
    pub fn blob_writer(&self) -> Result<BlobWriter, StorageError> {
        let temp = TempFile::create(&self.inner().config.blob_dir().join(TEMP_DIR))?;
        let file = File::open(&temp.path)
            .map_err(|e| StorageError::io(format!("opening {}", temp.path.display()), e))?;
        Ok(BlobWriter {
            store: self.clone(),
            temp,
            hasher: Sha256::new(),
            written: 0,
            spool: BlobSpool {
                file: Arc::new(file),
            },
        })
    }
}

impl BlobWriter {
    /// Appends `bytes` (hashed, written to the file: readable through
    /// [`BlobWriter::spool`] once this returns). Blocking file I/O.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.hasher.update(bytes);
        self.temp.write(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A reader of what was written so far.
    pub fn spool(&self) -> BlobSpool {
        self.spool.clone()
    }

    /// Stores what was written, like [`BlobStore::put_reader`] (once per
    /// digest; a row up to `blob_inline_max_bytes`, else the file renamed
    /// into place), and pins it. Blocking file I/O.
    pub fn finish(self) -> Result<BlobPin, StorageError> {
        let Self {
            store,
            temp,
            hasher,
            written,
            spool,
        } = self;
        let digest = Digest(hasher.finalize().into());
        if written > store.inner().config.blob_inline_max_bytes as u64 {
            return store.put_file(digest, temp);
        }
        let mut content = vec![0u8; written as usize];
        let mut at = 0;
        while at < content.len() {
            match spool.read_at(at as u64, &mut content[at..]) {
                Ok(0) => {
                    return Err(StorageError::io(
                        format!("reading {}", temp.path.display()),
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    ))
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StorageError::io(
                        format!("reading {}", temp.path.display()),
                        e,
                    ))
                }
            }
        }
        // The temporary file is removed as `temp` drops.
        store.put_inline(digest, &content)
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

    /// One batched lookup of the rows (RocksDB's `MultiGet`, keys
    /// sorted, nothing copied), then a file check for each digest without
    /// a row.
    fn absent_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>, StorageError> {
        let inner = self.inner();
        let mut sorted: Vec<&Digest> = digests.iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let rows = inner.db.batched_multi_get_cf(
            inner.cf(Column::Blobs),
            sorted.iter().map(|d| &d.0),
            true,
        );
        let dir = inner.config.blob_dir();
        let mut stored = std::collections::HashSet::with_capacity(sorted.len());
        for (digest, row) in sorted.into_iter().zip(rows) {
            if row?.is_some() || blob_path(&dir, digest).is_file() {
                stored.insert(*digest);
            }
        }
        Ok(digests
            .iter()
            .filter(|d| !stored.contains(*d))
            .copied()
            .collect())
    }

    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError> {
        self.inner().ref_count(digest)
    }

    fn collect_garbage(&self) -> Result<GcStats, StorageError> {
        self.collect_garbage_between(&mut || {})
    }
}

impl Store {
    /// [`BlobStore::collect_garbage`], calling `between` after the scan and
    /// before any deletion (tests append there, as a concurrent writer
    /// would). References are read from every `blob_refs` row, including
    /// rows of views this build does not know (left by another version),
    /// so a roll-back never loses a newer view's blobs.
    pub(crate) fn collect_garbage_between(
        &self,
        between: &mut dyn FnMut(),
    ) -> Result<GcStats, StorageError> {
        let inner = self.inner();
        let mut stats = GcStats::default();
        let mut referenced = HashSet::new();
        // Where a reference may live: every view's prefix, and any other
        // the snapshot holds (an unknown view's; none can appear while
        // this build runs).
        let mut prefixes: BTreeSet<Vec<u8>> = inner
            .views
            .iter()
            .map(|v| keys::blob_ref_prefix(v.name()))
            .collect();
        let mut candidates = Vec::new();
        {
            let snapshot = inner.db.snapshot();
            for item in snapshot.iterator_cf(inner.cf(Column::BlobRefs), IteratorMode::Start) {
                let (key, _) = item?;
                let (prefix, digest) = keys::blob_ref_parts(&key)?;
                referenced.insert(digest);
                if !prefixes.contains(prefix) {
                    prefixes.insert(prefix.to_vec());
                }
            }
            let mut iter = snapshot.raw_iterator_cf(inner.cf(Column::Blobs));
            iter.seek_to_first();
            while iter.valid() {
                stats.scanned += 1;
                if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                    let digest: [u8; 32] = key
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("blob key is not a sha256".into()))?;
                    if !referenced.contains(&digest) {
                        candidates.push(GcCandidate {
                            digest: Digest(digest),
                            size: value.len() as u64,
                            file: None,
                        });
                    }
                }
                iter.next();
            }
            iter.status()?;
        }
        for (digest, path, size) in file_blobs(&inner.config.blob_dir())? {
            stats.scanned += 1;
            if !referenced.contains(&digest.0) {
                candidates.push(GcCandidate {
                    digest,
                    size,
                    file: Some(path),
                });
            }
        }
        drop(referenced);
        between();
        let prefixes: Arc<[Vec<u8>]> = prefixes.into_iter().collect();
        for batch in candidates.chunks(GC_DELETE_BATCH_BLOBS) {
            let batch = batch.to_vec();
            let prefixes = prefixes.clone();
            let done =
                self.call(|reply| Command::DeleteUnreferencedBlobs(batch, prefixes, reply))?;
            stats.removed += done.removed;
            stats.removed_bytes += done.removed_bytes;
        }
        if stats.removed > 0 {
            info!(
                removed = stats.removed,
                bytes = stats.removed_bytes,
                scanned = stats.scanned,
                "blobs collected"
            );
        }
        Ok(stats)
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
    /// Deletes each of `candidates` (found unreferenced by a collection's
    /// scan) that is still stored, no `blob_refs` row under any of
    /// `prefixes` names, and nobody pins. On the writer thread, so no
    /// commit adds a reference between the check and the deletion; under
    /// the pin lock, so no put pins it meanwhile. Counts only what it
    /// removed.
    pub(super) fn delete_unreferenced_blobs(
        &mut self,
        candidates: Vec<GcCandidate>,
        prefixes: &[Vec<u8>],
    ) -> Result<GcStats, StorageError> {
        let inner = self.inner.clone();
        let refs = inner.cf(Column::BlobRefs);
        let blobs = inner.cf(Column::Blobs);
        let mut stats = GcStats::default();
        let mut key = Vec::with_capacity(64);
        for candidate in candidates {
            let pins = inner.pins.lock();
            if pins.contains_key(&candidate.digest) {
                continue;
            }
            let mut referenced = false;
            for prefix in prefixes {
                key.clear();
                key.extend_from_slice(prefix);
                key.extend_from_slice(&candidate.digest.0);
                if inner.db.get_pinned_cf(refs, &key)?.is_some() {
                    referenced = true;
                    break;
                }
            }
            if referenced {
                continue;
            }
            match &candidate.file {
                None => {
                    if inner.db.get_pinned_cf(blobs, candidate.digest.0)?.is_none() {
                        continue; // another collection removed it
                    }
                    inner.db.delete_cf(blobs, candidate.digest.0)?;
                }
                Some(path) => match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(StorageError::io(format!("removing {}", path.display()), e))
                    }
                },
            }
            drop(pins);
            let _ = inner
                .blob_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(candidate.size))
                });
            stats.removed += 1;
            stats.removed_bytes += candidate.size;
        }
        Ok(stats)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use cairn_events::{
        envelope::{event, Metadata},
        v1::{
            event::Payload, Event, PackageRevision, PackageRevisionAdded, PackageRevisionDeleted,
        },
        StreamId,
    };

    use super::*;
    use crate::{views::default_views, EventLog, ExpectedVersion};

    /// A published revision `r.<name>.v1` whose Kptfile is blob `digest`
    /// (also for the checkpoint's tests).
    pub(in crate::store) fn added(name: &str, digest: &Digest) -> Event {
        event(Payload::PackageRevisionAdded(PackageRevisionAdded {
            revision: Some(PackageRevision {
                name: format!("r.{name}.v1"),
                package: name.into(),
                workspace: "v1".into(),
                revision: 1,
                lifecycle: "Published".into(),
                resources: [("Kptfile".to_string(), digest.to_string())].into(),
                ..Default::default()
            }),
        }))
    }

    fn deleted(name: &str) -> Event {
        event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
            name: format!("r.{name}.v1"),
            last: None,
        }))
    }

    /// A blob the scan found unreferenced, referenced again by an append
    /// (without a pin) before the deletion, is kept: the writer re-checks
    /// each candidate. Appends go on during the scan meanwhile (the one
    /// in `between` would never finish if the scan held the writer).
    #[test]
    fn a_blob_referenced_again_after_the_scan_is_not_collected() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.blob_inline_max_bytes = 64; // the large one is a file
        let store = Store::open(config, default_views()).unwrap();
        let repo = StreamId::repository("ns", "r").unwrap();
        let small = b"kind: Kptfile\n".to_vec();
        let large = vec![7u8; 1000];
        let (s, l) = {
            let (a, b) = (store.put(&small).unwrap(), store.put(&large).unwrap());
            let digests = (a.digest(), b.digest());
            store
                .append(
                    &repo,
                    ExpectedVersion::Any,
                    vec![added("a", &digests.0), added("b", &digests.1)],
                    Metadata::default(),
                )
                .unwrap();
            digests
        };
        // Referenced, then no more (and no pin): candidates.
        store
            .append(
                &repo,
                ExpectedVersion::Any,
                vec![deleted("a"), deleted("b")],
                Metadata::default(),
            )
            .unwrap();
        let orphan = store.put(b"nobody refers to me").unwrap().digest();
        assert_eq!(
            (store.ref_count(&s).unwrap(), store.ref_count(&l).unwrap()),
            (0, 0)
        );

        let stats = store
            .collect_garbage_between(&mut || {
                // After the scan: the same contents come back under new
                // names, referring to the stored blobs by digest.
                store
                    .append(
                        &repo,
                        ExpectedVersion::Any,
                        vec![added("c", &s), added("d", &l)],
                        Metadata::default(),
                    )
                    .unwrap();
            })
            .unwrap();
        // Three candidates scanned; only the orphan went.
        assert_eq!(
            (stats.scanned, stats.removed, stats.removed_bytes),
            (3, 1, 19)
        );
        assert_eq!(store.get(&orphan).unwrap(), None);
        assert_eq!(store.get(&s).unwrap(), Some(small));
        assert_eq!(store.get(&l).unwrap(), Some(large));
        assert_eq!(
            (store.ref_count(&s).unwrap(), store.ref_count(&l).unwrap()),
            (1, 1)
        );
    }

    /// The blob bytes counted: a row and a file once each (a second put of
    /// the same content adds nothing), less what a collection removed, and
    /// the same after a reopen (counted from what is stored).
    #[test]
    fn blob_bytes_count_rows_and_files_once_and_follow_collections() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.blob_inline_max_bytes = 64; // the large one is a file
        let store = Store::open(config.clone(), default_views()).unwrap();
        assert_eq!(store.blob_bytes(), 0);
        let small = store.put(b"kind: Kptfile\n").unwrap();
        let large = store.put(&[7u8; 1000]).unwrap();
        drop(store.put(b"kind: Kptfile\n").unwrap());
        drop(store.put(&[7u8; 1000]).unwrap());
        assert_eq!(store.blob_bytes(), 14 + 1000);
        let orphan = store.put(b"nobody refers to me").unwrap();
        assert_eq!(store.blob_bytes(), 14 + 1000 + 19);
        drop(orphan);
        let stats = store.collect_garbage().unwrap();
        // Only the orphan is unpinned.
        assert_eq!((stats.removed, stats.removed_bytes), (1, 19));
        assert_eq!(store.blob_bytes(), 14 + 1000);
        drop((small, large));
        drop(store);
        let store = Store::open(config, default_views()).unwrap();
        assert_eq!(store.blob_bytes(), 14 + 1000);
        store.collect_garbage().unwrap();
        assert_eq!(store.blob_bytes(), 0);
    }

    fn temp_files(config: &StoreConfig) -> usize {
        fs::read_dir(config.blob_dir().join(TEMP_DIR)).map_or(0, |d| d.count())
    }

    fn read_all(spool: &BlobSpool, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len + 10];
        let mut at = 0;
        loop {
            let n = spool.read_at(at as u64, &mut out[at..]).unwrap();
            if n == 0 {
                break;
            }
            at += n;
        }
        out.truncate(at);
        out
    }

    /// A blob writer's bytes are readable while it writes and after it
    /// finished (its file moved into place, or removed for a row); it
    /// stores what `put` stores: a row when small, a file when large.
    #[test]
    fn a_blob_writer_is_readable_while_written_and_stores_like_put() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.blob_inline_max_bytes = 64; // the large one is a file
        let store = Store::open(config.clone(), default_views()).unwrap();
        for content in [b"kind: Kptfile\n".to_vec(), vec![9u8; 1000]] {
            let mut writer = store.blob_writer().unwrap();
            let spool = writer.spool();
            writer.write(&content[..5]).unwrap();
            assert_eq!(writer.written(), 5);
            assert_eq!(read_all(&spool, content.len()), &content[..5]);
            writer.write(&content[5..]).unwrap();
            assert_eq!(read_all(&spool, content.len()), content);
            assert_eq!(temp_files(&config), 1);
            let pin = writer.finish().unwrap();
            assert_eq!(pin.digest(), Digest::of(&content));
            assert_eq!(store.get(&pin.digest()).unwrap(), Some(content.clone()));
            assert_eq!(store.blob_file(&pin.digest()).is_some(), content.len() > 64);
            assert_eq!(temp_files(&config), 0);
            assert_eq!(read_all(&spool, content.len()), content);
        }
        assert_eq!(store.blob_bytes(), 14 + 1000);
    }

    /// A blob writer dropped unfinished stores nothing and removes its
    /// file; what was read of it stays readable through the handle.
    #[test]
    fn a_blob_writer_dropped_unfinished_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path());
        let store = Store::open(config.clone(), default_views()).unwrap();
        let mut writer = store.blob_writer().unwrap();
        let spool = writer.spool();
        writer.write(b"half a bo").unwrap();
        drop(writer);
        assert_eq!(temp_files(&config), 0);
        assert_eq!(store.get(&Digest::of(b"half a bo")).unwrap(), None);
        assert_eq!(store.blob_bytes(), 0);
        assert_eq!(read_all(&spool, 9), b"half a bo");
    }

    /// More candidates than one batch: all are deleted, in several
    /// commands to the writer.
    #[test]
    fn candidates_are_deleted_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
        let count = GC_DELETE_BATCH_BLOBS * 2 + 3;
        for i in 0..count {
            drop(store.put(format!("orphan {i}").as_bytes()).unwrap());
        }
        let mut between_calls = 0;
        let stats = store
            .collect_garbage_between(&mut || between_calls += 1)
            .unwrap();
        assert_eq!(between_calls, 1);
        assert_eq!((stats.scanned, stats.removed), (count as u64, count as u64));
        assert_eq!(store.collect_garbage().unwrap(), GcStats::default());
    }
}
