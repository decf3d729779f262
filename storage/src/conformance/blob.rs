//! The conformance suite every [`BlobStore`] must pass.
//!
//! The store under test must also be an [`EventLog`] whose views count the
//! resource blobs of package revisions of repository streams (cairn's
//! default views do): references come from events, as in production.
//! Use [`blob_store_conformance!`](crate::blob_store_conformance).

use std::{
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, PackageRevision, PackageRevisionAdded, PackageRevisionDeleted},
    StreamId,
};

use crate::{BlobStore, Digest, EventLog, ExpectedVersion, StorageError};

/// A blob store whose views reference blobs named by package revisions.
pub trait BlobLog: BlobStore + EventLog {}

impl<T: BlobStore + EventLog> BlobLog for T {}

/// Opens a blob store (and its log) in a directory.
pub type OpenBlobs<'a> = &'a dyn Fn(&Path) -> Box<dyn BlobLog>;

/// Generates one `#[test]` per blob store check for the store opened by
/// `$open: fn(&Path) -> S`.
#[macro_export]
macro_rules! blob_store_conformance {
    ($open:path) => {
        $crate::blob_store_conformance!(@tests $open;
            put_get_and_dedupe,
            streamed_blobs_read_whole_and_by_range,
            a_wrong_expected_digest_keeps_nothing,
            a_failing_reader_keeps_nothing,
            pins_and_references_keep_blobs_from_collection,
            reopen_keeps_blobs,
        );
    };
    (@tests $open:path; $($check:ident,)*) => {
        $(
            #[test]
            fn $check() {
                let dir = $crate::conformance::tempfile::tempdir().unwrap();
                $crate::conformance::blob::$check(dir.path(), &|p| Box::new($open(p)));
            }
        )*
    };
}

/// Deterministic content of `len` bytes that differs per `seed`.
pub fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Sizes covering empty, tiny, around a 4 KiB threshold, and above the
/// default 1 MiB threshold, so both kinds of storage are exercised.
const SIZES: [usize; 6] = [0, 1, 4000, 5000, 200_000, 1_300_000];

fn revision_added(repo: &str, name: &str, digest: &Digest) -> cairn_events::v1::Event {
    event(Payload::PackageRevisionAdded(PackageRevisionAdded {
        revision: Some(PackageRevision {
            name: format!("{repo}.{name}.v1"),
            package: name.into(),
            workspace: "v1".into(),
            revision: 1,
            lifecycle: "Published".into(),
            resources: [("Kptfile".to_string(), digest.to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }))
}

fn revision_deleted(repo: &str, name: &str) -> cairn_events::v1::Event {
    event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
        name: format!("{repo}.{name}.v1"),
        last: None,
    }))
}

/// Stored once per digest, read back whole; unknown digests are `None`.
pub fn put_get_and_dedupe(dir: &Path, open: OpenBlobs<'_>) {
    let store = open(dir);
    let small = b"apiVersion: kpt.dev/v1\nkind: Kptfile\n".to_vec();
    let large = content(7, 1_300_000);
    let mut pins = Vec::new();
    for bytes in [&small, &large] {
        let first = store.put(bytes).unwrap();
        let second = store.put(bytes).unwrap();
        let third = store.put_reader(&mut bytes.as_slice(), None).unwrap();
        assert_eq!(first.digest(), Digest::of(bytes));
        assert_eq!(second.digest(), first.digest());
        assert_eq!(third.digest(), first.digest());
        assert_eq!(store.get(&first.digest()).unwrap().as_ref(), Some(bytes));
        assert_eq!(
            store.blob_size(&first.digest()).unwrap(),
            Some(bytes.len() as u64)
        );
        assert_eq!(store.ref_count(&first.digest()).unwrap(), 0);
        pins.extend([first, second, third]);
    }
    let unknown = Digest::of(b"never stored");
    assert_eq!(store.get(&unknown).unwrap(), None);
    assert!(store.open_blob(&unknown).unwrap().is_none());
    assert!(store.read_range(&unknown, 0..1).unwrap().is_none());
    assert_eq!(store.blob_size(&unknown).unwrap(), None);
    let (small_digest, large_digest) = (Digest::of(&small), Digest::of(&large));
    assert_eq!(
        store
            .absent_blobs(&[unknown, small_digest, large_digest, unknown])
            .unwrap(),
        [unknown, unknown]
    );
    assert_eq!(store.absent_blobs(&[]).unwrap(), []);
    // Two blobs, each stored once, all pinned: nothing collected.
    let stats = store.collect_garbage().unwrap();
    assert_eq!((stats.scanned, stats.removed), (2, 0));
    drop(pins);
    let stats = store.collect_garbage().unwrap();
    assert_eq!(
        (stats.scanned, stats.removed, stats.removed_bytes),
        (2, 2, (small.len() + large.len()) as u64)
    );
    assert_eq!(
        store.absent_blobs(&[large_digest, small_digest]).unwrap(),
        [large_digest, small_digest]
    );
}

/// Streamed puts of every size read back whole, by seeking and by range;
/// a range outside the blob is an error naming it.
pub fn streamed_blobs_read_whole_and_by_range(dir: &Path, open: OpenBlobs<'_>) {
    let store = open(dir);
    let mut pins = Vec::new();
    for (i, size) in SIZES.into_iter().enumerate() {
        let bytes = content(i as u8, size);
        let digest = Digest::of(&bytes);
        let pin = store
            .put_reader(&mut bytes.as_slice(), Some(&digest))
            .unwrap();
        assert_eq!(pin.digest(), digest);
        pins.push(pin);

        let mut reader = store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(reader.size(), size as u64, "size {size}");
        let mut whole = Vec::new();
        reader.read_to_end(&mut whole).unwrap();
        assert!(whole == bytes, "content of size {size} differs");
        assert_eq!(store.get(&digest).unwrap().unwrap().len(), size);

        let mid = size as u64 / 2;
        reader.seek(SeekFrom::Start(mid)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert!(tail == bytes[mid as usize..], "tail of size {size} differs");

        let (start, end) = (mid.saturating_sub(3), (mid + 5).min(size as u64));
        let mut part = Vec::new();
        store
            .read_range(&digest, start..end)
            .unwrap()
            .unwrap()
            .read_to_end(&mut part)
            .unwrap();
        assert_eq!(
            part,
            bytes[start as usize..end as usize],
            "range of size {size}"
        );

        let err = store.read_range(&digest, 0..size as u64 + 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "range 0..{} is outside blob {digest} of {size} bytes",
                size + 1
            )
        );
        assert!(matches!(err, StorageError::BlobRange { .. }));
    }
}

/// A streamed put whose content does not match the stated digest fails
/// naming both digests and keeps nothing.
pub fn a_wrong_expected_digest_keeps_nothing(dir: &Path, open: OpenBlobs<'_>) {
    let store = open(dir);
    for size in [10, 1_300_000] {
        let bytes = content(3, size);
        let wrong = Digest::of(b"something else");
        let err = store
            .put_reader(&mut bytes.as_slice(), Some(&wrong))
            .unwrap_err();
        let found = Digest::of(&bytes);
        assert_eq!(
            err.to_string(),
            format!("blob digest mismatch: expected {wrong}, found {found}")
        );
        assert!(matches!(
            err,
            StorageError::DigestMismatch { expected, found: f } if expected == wrong && f == found
        ));
        assert_eq!(store.get(&found).unwrap(), None);
        assert_eq!(store.get(&wrong).unwrap(), None);
    }
    let stats = store.collect_garbage().unwrap();
    assert_eq!((stats.scanned, stats.removed), (0, 0), "something was kept");
}

/// A pinned or referenced blob survives collection; once neither, it goes.
pub fn pins_and_references_keep_blobs_from_collection(dir: &Path, open: OpenBlobs<'_>) {
    let store = open(dir);
    let repo = StreamId::repository("ns", "r").unwrap();
    let small = content(1, 100);
    let large = content(2, 1_300_000);
    let small_pin = store.put(&small).unwrap();
    let large_pin = store.put_reader(&mut large.as_slice(), None).unwrap();
    let (s, l) = (small_pin.digest(), large_pin.digest());
    let orphan = store.put(&content(3, 1_200_000)).unwrap().digest(); // pin dropped
    let stats = store.collect_garbage().unwrap();
    assert_eq!(
        (stats.scanned, stats.removed, stats.removed_bytes),
        (3, 1, 1_200_000)
    );
    assert_eq!(store.get(&orphan).unwrap(), None);

    // Referenced by committed events, then unpinned: kept.
    store
        .append(
            &repo,
            ExpectedVersion::Any,
            vec![revision_added("r", "a", &s), revision_added("r", "b", &l)],
            Metadata::default(),
        )
        .unwrap();
    drop((small_pin, large_pin));
    assert_eq!(
        (store.ref_count(&s).unwrap(), store.ref_count(&l).unwrap()),
        (1, 1)
    );
    assert_eq!(store.collect_garbage().unwrap().removed, 0);
    assert_eq!(store.get(&l).unwrap().unwrap().len(), large.len());

    // References dropped: collected, both kinds.
    store
        .append(
            &repo,
            ExpectedVersion::Any,
            vec![revision_deleted("r", "a"), revision_deleted("r", "b")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        (store.ref_count(&s).unwrap(), store.ref_count(&l).unwrap()),
        (0, 0)
    );
    let stats = store.collect_garbage().unwrap();
    assert_eq!(
        (stats.scanned, stats.removed, stats.removed_bytes),
        (2, 2, (small.len() + large.len()) as u64)
    );
    assert_eq!(store.get(&s).unwrap(), None);
    assert!(store.open_blob(&l).unwrap().is_none());
    // Stored again after collection: back.
    let again = store.put(&large).unwrap();
    assert_eq!(
        store.get(&again.digest()).unwrap().unwrap().len(),
        large.len()
    );
}

/// Blobs of both kinds survive closing and reopening.
pub fn reopen_keeps_blobs(dir: &Path, open: OpenBlobs<'_>) {
    let small = content(4, 10);
    let large = content(5, 1_300_000);
    {
        let store = open(dir);
        let repo = StreamId::repository("ns", "r").unwrap();
        let pins = [store.put(&small).unwrap(), store.put(&large).unwrap()];
        store
            .append(
                &repo,
                ExpectedVersion::Any,
                pins.iter()
                    .enumerate()
                    .map(|(i, p)| revision_added("r", &format!("p{i}"), &p.digest()))
                    .collect(),
                Metadata::default(),
            )
            .unwrap();
    }
    let store = open(dir);
    assert_eq!(store.get(&Digest::of(&small)).unwrap(), Some(small));
    let mut read = Vec::new();
    store
        .open_blob(&Digest::of(&large))
        .unwrap()
        .unwrap()
        .read_to_end(&mut read)
        .unwrap();
    assert!(read == large);
    assert_eq!(store.collect_garbage().unwrap().removed, 0);
}

/// Yields `ok_bytes` bytes, then fails.
struct Failing {
    ok_bytes: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok_bytes == 0 {
            return Err(std::io::Error::other("source went away"));
        }
        let n = buf.len().min(self.ok_bytes);
        buf[..n].fill(9);
        self.ok_bytes -= n;
        Ok(n)
    }
}

/// A reader failing part way (before or after the inline threshold) fails
/// the put with the reader's error and keeps nothing.
pub fn a_failing_reader_keeps_nothing(dir: &Path, open: OpenBlobs<'_>) {
    let store = open(dir);
    for ok_bytes in [100, 2_000_000] {
        let err = store
            .put_reader(&mut Failing { ok_bytes }, None)
            .unwrap_err();
        assert_eq!(err.to_string(), "reading blob content: source went away");
        assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    }
    let stats = store.collect_garbage().unwrap();
    assert_eq!((stats.scanned, stats.removed), (0, 0), "something was kept");
}
