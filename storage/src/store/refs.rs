//! [`BlobRefCounts`]: the blob reference counts the writer last committed,
//! kept in memory so that a view's retain or release (one per resource of
//! every package revision folded) costs no RocksDB read; and
//! [`WriterRows`], the [`RowSource`] the writer's folds read through.
//!
//! Decision: a bounded cache of *committed* counts, not a write-back one.
//! The writer thread is the only code that writes the `blob_refs` family
//! (its commits, catch-up and rebuild through [`super::Inner::write_overlay`],
//! rebuild's clearing; blob collection, compaction and checkpoints only
//! read it), so a count it committed stays the row's value until it
//! commits another. Each count a batch changed is set here as the batch is
//! written — after a failed write the cache is emptied, since the rows
//! may not hold what it says — and a rebuild empties it when it clears
//! the rows. A count not held (never seen, or pushed out by
//! [`BLOB_REF_COUNTS_MAX_ENTRIES`] newer ones) is read from its row, as
//! before. The fold still reports a release of a reference the view did
//! not hold as corruption: the count it starts from is the row's either
//! way. A RocksDB merge operator was the other way to drop the read, but
//! it would have to carry that check into the merge (where a failure can
//! no longer refuse the batch) and it changes how the rows are written.

use std::num::NonZeroUsize;

use super::inner::Inner;
use crate::{
    view::{BlobRefId, RowSource},
    Digest, StorageError,
};

/// Most blob reference counts the writer keeps in memory. An entry is a
/// view name reference, a 32-byte digest and a count, about 100 bytes with
/// the LRU's links and hash slot: about 6.5 MiB when full.
pub const BLOB_REF_COUNTS_MAX_ENTRIES: usize = 65_536;

/// The committed counts of the most recently changed `blob_refs` rows:
/// `(view, digest)` → count (0: no row).
pub(super) struct BlobRefCounts {
    counts: lru::LruCache<BlobRefId, u64>,
}

impl BlobRefCounts {
    pub(super) fn new() -> Self {
        Self::with_capacity(
            NonZeroUsize::new(BLOB_REF_COUNTS_MAX_ENTRIES).expect("a positive constant"),
        )
    }

    pub(super) fn with_capacity(entries: NonZeroUsize) -> Self {
        Self {
            counts: lru::LruCache::new(entries),
        }
    }

    /// The committed count of `id`, if held.
    pub(super) fn get(&self, id: &BlobRefId) -> Option<u64> {
        self.counts.peek(id).copied()
    }

    /// Records that `id`'s row now holds `count` (0: it was deleted).
    pub(super) fn set(&mut self, id: BlobRefId, count: u64) {
        self.counts.put(id, count);
    }

    /// Forgets every count (the rows changed behind them, or may have).
    pub(super) fn clear(&mut self) {
        self.counts.clear();
    }

    /// Counts held now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.counts.len()
    }
}

/// What the writer's folds read rows from: `inner`'s families, blob
/// reference counts from `counts` first.
pub(super) struct WriterRows<'a> {
    pub(super) inner: &'a Inner,
    pub(super) counts: &'a BlobRefCounts,
}

impl RowSource for WriterRows<'_> {
    fn read(&self, cf: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.read(cf, key)
    }

    fn last_key(&self, cf: usize, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.last_key(cf, from, to)
    }

    fn for_each_key(
        &self,
        cf: usize,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StorageError> {
        self.inner.for_each_key(cf, from, to, f)
    }

    fn blob_ref_count(&self, view: &'static str, digest: &Digest) -> Result<u64, StorageError> {
        match self.counts.get(&(view, digest.0)) {
            Some(count) => Ok(count),
            None => self.inner.blob_ref_count(view, digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_events::{envelope::Metadata, v1::Envelope, StreamId};

    use super::*;
    use crate::{
        columns::Column,
        keys,
        sample::{marker, marker_text},
        EventLog, ExpectedVersion, Store, StoreConfig, View, ViewTx,
    };

    /// Retains the blob each `+<digest>` word of a marker names, releases
    /// it for each `-<digest>`.
    #[derive(Debug)]
    struct Holds;

    const HOLDS: &str = "test_holds";

    impl View for Holds {
        fn name(&self) -> &'static str {
            HOLDS
        }

        fn apply(&self, tx: &mut ViewTx<'_>, env: &Envelope) -> Result<(), StorageError> {
            let Some(text) = env.event.as_ref().and_then(marker_text) else {
                return Ok(());
            };
            for word in text.split(' ') {
                if let Some(d) = word.strip_prefix('+').and_then(Digest::parse) {
                    tx.retain_blob(&d)?;
                } else if let Some(d) = word.strip_prefix('-').and_then(Digest::parse) {
                    tx.release_blob(&d)?;
                }
            }
            Ok(())
        }
    }

    fn open(path: &std::path::Path) -> Store {
        Store::open(StoreConfig::new(path), vec![Arc::new(Holds)]).unwrap()
    }

    /// `words` (`+a`, `-b`, … with `a`, `b` standing for `digests`) as one
    /// append: one batch.
    fn append(store: &Store, digests: &[Digest; 2], words: &str) -> Result<(), StorageError> {
        let text: Vec<String> = words
            .split(' ')
            .map(|word| {
                let (sign, name) = word.split_at(1);
                let digest = if name == "a" { digests[0] } else { digests[1] };
                format!("{sign}{digest}")
            })
            .collect();
        let text = text.join(" ");
        let stream = StreamId::new("holds").unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![marker(text)],
                Metadata::default(),
            )
            .map(|_| ())
    }

    /// The `blob_refs` rows of the two digests, as stored.
    fn rows(store: &Store, digests: &[Digest; 2]) -> [Option<Vec<u8>>; 2] {
        let inner = store.inner();
        digests.map(|d| {
            inner
                .db
                .get_cf(inner.cf(Column::BlobRefs), keys::blob_ref_key(HOLDS, &d.0))
                .unwrap()
        })
    }

    fn count(n: u64) -> Option<Vec<u8>> {
        Some(n.to_be_bytes().to_vec())
    }

    #[test]
    fn the_writer_counts_references_in_memory_as_the_rows_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let digests = [Digest::of(b"a"), Digest::of(b"b")];
        let store = open(dir.path());
        append(&store, &digests, "+a +a +b").unwrap();
        append(&store, &digests, "-a +b").unwrap();
        append(&store, &digests, "-b -b +a -a").unwrap();
        assert_eq!(rows(&store, &digests), [count(1), None]);

        // Behind the writer's back, the rows now hold what no count
        // decodes from: the writer, which holds both counts (1, and 0 for
        // the deleted row), reads neither, and writes the next counts.
        {
            let inner = store.inner();
            for d in &digests {
                let key = keys::blob_ref_key(HOLDS, &d.0);
                inner
                    .db
                    .put_cf(inner.cf(Column::BlobRefs), key, b"x")
                    .unwrap();
            }
        }
        append(&store, &digests, "+a +b").unwrap();
        assert_eq!(rows(&store, &digests), [count(2), count(1)]);

        // A release of a reference not held is still corruption, from a
        // count held in memory: the append is refused whole, nothing moves.
        let before = store.last_seq().unwrap();
        let err = append(&store, &digests, "+a -b -b").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "corrupt store: view {HOLDS} released blob {} it did not hold",
                digests[1]
            )
        );
        assert_eq!(store.last_seq().unwrap(), before);
        assert_eq!(rows(&store, &digests), [count(2), count(1)]);
        // The refused batch left the counts held as committed.
        append(&store, &digests, "-b -a").unwrap();
        assert_eq!(rows(&store, &digests), [count(1), None]);
        drop(store);

        // Reopened, nothing is held: counts come from the rows again.
        let store = open(dir.path());
        append(&store, &digests, "+a +b").unwrap();
        assert_eq!(rows(&store, &digests), [count(2), count(1)]);
        append(&store, &digests, "-a -a -b").unwrap();
        assert_eq!(rows(&store, &digests), [None, None]);
        let err = append(&store, &digests, "-a").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "corrupt store: view {HOLDS} released blob {} it did not hold",
                digests[0]
            )
        );
        drop(store);
        let store = open(dir.path());
        let err = append(&store, &digests, "-b").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "corrupt store: view {HOLDS} released blob {} it did not hold",
                digests[1]
            )
        );
        assert_eq!(rows(&store, &digests), [None, None]);
    }

    #[test]
    fn a_rebuild_forgets_the_counts_it_clears() {
        let dir = tempfile::tempdir().unwrap();
        let digests = [Digest::of(b"a"), Digest::of(b"b")];
        let store = open(dir.path());
        append(&store, &digests, "+a +a +b").unwrap();
        append(&store, &digests, "-a").unwrap();
        store.rebuild(&[], None).unwrap();
        // Folded again from no rows: had the writer kept its counts (1 and
        // 1), the log's retains would have been counted twice.
        assert_eq!(rows(&store, &digests), [count(1), count(1)]);
        append(&store, &digests, "-a -b").unwrap();
        assert_eq!(rows(&store, &digests), [None, None]);
    }

    /// The store's rows, counting point reads and last-key lookups.
    struct Counting<'a> {
        inner: &'a Inner,
        reads: std::cell::Cell<usize>,
        last_keys: std::cell::Cell<usize>,
    }

    impl RowSource for Counting<'_> {
        fn read(&self, cf: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.read(cf, key)
        }

        fn last_key(
            &self,
            cf: usize,
            from: &[u8],
            to: &[u8],
        ) -> Result<Option<Vec<u8>>, StorageError> {
            self.last_keys.set(self.last_keys.get() + 1);
            self.inner.last_key(cf, from, to)
        }

        fn for_each_key(
            &self,
            cf: usize,
            from: &[u8],
            to: &[u8],
            f: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
        ) -> Result<(), StorageError> {
            self.inner.for_each_key(cf, from, to, f)
        }
    }

    #[test]
    fn a_batch_reads_no_key_of_a_group_past_its_last_stored_one() {
        use cairn_events::v1::{event::Payload, PackageRevision, PackageRevisionAdded};

        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(StoreConfig::new(dir.path()), crate::views::default_views()).unwrap();
        let stream = StreamId::repository("ns", "repo").unwrap();
        let added = |name: &str| {
            cairn_events::envelope::event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                revision: Some(PackageRevision {
                    name: name.into(),
                    package: "p".into(),
                    ..Default::default()
                }),
            }))
        };
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![added("repo.b"), added("repo.d")],
                Metadata::default(),
            )
            .unwrap();
        let inner = store.inner();
        let cf = 1 + inner
            .views
            .iter()
            .position(|v| v.name() == crate::views::PackageRevisionsView::NAME)
            .unwrap();
        let source = Counting {
            inner,
            reads: Default::default(),
            last_keys: Default::default(),
        };
        let mut overlay = crate::view::Overlay::default();
        let mut tx = ViewTx {
            view: crate::views::PackageRevisionsView::NAME,
            cf,
            overlay: &mut overlay,
            source: &source,
        };
        let group = "ns/repo.".len();
        let found = |tx: &mut ViewTx<'_>, name: &str| {
            tx.get_in_group(format!("ns/{name}").as_bytes(), group)
                .unwrap()
                .is_some()
        };
        // A first read of the group is a point read.
        assert!(!found(&mut tx, "repo.a"));
        assert_eq!((source.reads.get(), source.last_keys.get()), (1, 0));
        // The second looks up the group's last stored key: `repo.d`.
        assert!(found(&mut tx, "repo.b"));
        assert_eq!((source.reads.get(), source.last_keys.get()), (2, 1));
        assert!(!found(&mut tx, "repo.c"));
        assert!(found(&mut tx, "repo.d"));
        assert_eq!((source.reads.get(), source.last_keys.get()), (4, 1));
        // Past it, nothing is read; this batch's own rows still answer.
        tx.put(b"ns/repo.f".to_vec(), b"row".to_vec());
        assert!(!found(&mut tx, "repo.e"));
        assert!(found(&mut tx, "repo.f"));
        assert!(!found(&mut tx, "repo.g"));
        assert_eq!((source.reads.get(), source.last_keys.get()), (4, 1));
        // Another group, with no stored key: after its first read, none.
        assert!(!found(&mut tx, "other.a"));
        assert!(!found(&mut tx, "other.b"));
        assert!(!found(&mut tx, "other.c"));
        assert_eq!((source.reads.get(), source.last_keys.get()), (5, 2));
    }

    #[test]
    fn the_least_recently_set_count_is_the_one_forgotten() {
        let mut counts = BlobRefCounts::with_capacity(NonZeroUsize::new(2).unwrap());
        counts.set((HOLDS, [1; 32]), 1);
        counts.set((HOLDS, [2; 32]), 0);
        counts.set((HOLDS, [1; 32]), 5);
        counts.set((HOLDS, [3; 32]), 3);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts.get(&(HOLDS, [1; 32])), Some(5));
        assert_eq!(counts.get(&(HOLDS, [2; 32])), None);
        assert_eq!(counts.get(&(HOLDS, [3; 32])), Some(3));
        counts.clear();
        assert_eq!(counts.get(&(HOLDS, [1; 32])), None);
    }
}
