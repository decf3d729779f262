//! RocksDB store specifics: views fold live and rebuild byte-identically,
//! views catch up at open, blobs are stored once and collected, appends are
//! group-committed, limits are enforced.

use std::{
    ops::ControlFlow,
    path::Path,
    sync::{Arc, Mutex},
    thread,
};

use cairn_events::{
    envelope::{event, Metadata},
    v1::{
        event::Payload, Envelope, GitSpec, PackageRevision, PackageRevisionAdded,
        PackageRevisionDeleted, RepositoryClosed, RepositoryRegistered, RepositorySpec,
        RepositorySpecChanged,
    },
    StreamId,
};
use cairn_storage::{
    blob::Digest,
    conformance::compaction::LastPerStream,
    sample::marker,
    views::{
        default_views, package_revision_list::Scope, PackageRevisionListView, PackageRevisionsView,
        RepositoriesView,
    },
    BlobStore, EventLog, ExpectedVersion, StorageError, Store, StoreConfig, View, ViewReadExt,
    ViewTx,
};
use proptest::prelude::*;

fn spec(ns: &str, name: &str, branch: &str) -> RepositorySpec {
    RepositorySpec {
        namespace: ns.into(),
        name: name.into(),
        r#type: "git".into(),
        git: Some(GitSpec {
            url: format!("file:///srv/{name}.git"),
            branch: branch.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn registered(ns: &str, name: &str) -> cairn_events::v1::Event {
    event(Payload::RepositoryRegistered(RepositoryRegistered {
        spec: Some(spec(ns, name, "main")),
    }))
}

/// Test view: retains the blob named by each `RepositoryClosed.reason` that
/// parses as a digest, releases it on a reason of `-<digest>`.
#[derive(Debug)]
struct BlobRefView;

impl View for BlobRefView {
    fn name(&self) -> &'static str {
        "test_blob_refs"
    }
    fn apply(&self, tx: &mut ViewTx<'_>, env: &Envelope) -> Result<(), StorageError> {
        if let Some(Payload::RepositoryClosed(c)) =
            env.event.as_ref().and_then(|e| e.payload.as_ref())
        {
            if let Some(d) = c.reason.strip_prefix('-').and_then(Digest::parse) {
                tx.release_blob(&d)?;
                tx.delete(d.0.to_vec());
            } else if let Some(d) = Digest::parse(&c.reason) {
                tx.retain_blob(&d)?;
                tx.put(d.0.to_vec(), env.seq.to_be_bytes().to_vec());
            }
        }
        Ok(())
    }
}

fn views_with_blobs() -> Vec<Arc<dyn View>> {
    let mut v = default_views();
    v.push(Arc::new(BlobRefView));
    v
}

fn open(path: &Path) -> Store {
    Store::open(StoreConfig::new(path), views_with_blobs()).unwrap()
}

#[test]
fn repositories_view_follows_events_and_reads_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::repository("team-a", "one").unwrap();
    let b = StreamId::repository("team-b", "two").unwrap();
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![registered("team-a", "one")],
            Metadata::command("alice"),
        )
        .unwrap();
    // Read-your-writes: visible as soon as append returns.
    let row = RepositoriesView::get(&store, "team-a", "one")
        .unwrap()
        .unwrap();
    assert_eq!(row.spec.unwrap().git.unwrap().branch, "main");
    assert_eq!(
        (
            row.registered_by.as_str(),
            row.stream_version,
            row.updated_seq
        ),
        ("alice", 1, 1)
    );

    store
        .append(
            &b,
            ExpectedVersion::NoStream,
            vec![registered("team-b", "two")],
            Metadata::default(),
        )
        .unwrap();
    let changed = event(Payload::RepositorySpecChanged(RepositorySpecChanged {
        spec: Some(spec("team-a", "one", "release")),
        next_sync_at: None,
    }));
    store
        .append(
            &a,
            ExpectedVersion::Exact(1),
            vec![changed],
            Metadata::default(),
        )
        .unwrap();
    let row = RepositoriesView::get(&store, "team-a", "one")
        .unwrap()
        .unwrap();
    assert_eq!(row.spec.unwrap().git.unwrap().branch, "release");
    assert_eq!(
        (
            row.registered_by.as_str(),
            row.stream_version,
            row.updated_seq
        ),
        ("alice", 2, 3)
    );

    let names = |ns| -> Vec<String> {
        RepositoriesView::list(&store, ns)
            .unwrap()
            .into_iter()
            .map(|r| r.spec.unwrap().name)
            .collect()
    };
    assert_eq!(names(None), ["one", "two"]);
    assert_eq!(names(Some("team-b")), ["two"]);

    let closed = event(Payload::RepositoryClosed(RepositoryClosed {
        reason: "unregistered".into(),
    }));
    store
        .append(
            &a,
            ExpectedVersion::Exact(2),
            vec![closed],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        RepositoriesView::get(&store, "team-a", "one").unwrap(),
        None
    );
    assert_eq!(names(None), ["two"]);
}

#[test]
fn blobs_are_stored_once_and_collected_when_unreferenced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = StreamId::new("blobs").unwrap();
    let content = b"apiVersion: kpt.dev/v1\nkind: Kptfile\n".to_vec();
    let pin1 = store.put(&content).unwrap();
    let pin2 = store.put(&content).unwrap();
    let digest = pin1.digest();
    assert_eq!(digest, pin2.digest());
    assert_eq!(digest, Digest::of(&content));
    assert_eq!(store.get(&digest).unwrap(), Some(content.clone()));

    // Pinned and unreferenced: kept.
    assert_eq!(store.collect_garbage().unwrap().removed, 0);
    // Two references from the view.
    for _ in 0..2 {
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![marker(digest.to_string())],
                Metadata::default(),
            )
            .unwrap();
    }
    drop((pin1, pin2));
    assert_eq!(store.ref_count(&digest).unwrap(), 2);
    assert_eq!(store.collect_garbage().unwrap().removed, 0);
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![marker(format!("-{digest}"))],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(store.ref_count(&digest).unwrap(), 1);
    assert_eq!(store.collect_garbage().unwrap().removed, 0);
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![marker(format!("-{digest}"))],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(store.ref_count(&digest).unwrap(), 0);

    let orphan = store.put(b"never referenced").unwrap().digest(); // pin dropped at once
    let stats = store.collect_garbage().unwrap();
    assert_eq!(
        (stats.scanned, stats.removed, stats.removed_bytes),
        (2, 2, content.len() as u64 + 16)
    );
    assert_eq!(store.get(&digest).unwrap(), None);
    assert_eq!(store.get(&orphan).unwrap(), None);

    // Releasing a reference the view does not hold is corruption: the whole
    // append is refused and nothing is written.
    let before = store.last_seq().unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![marker(format!("-{digest}"))],
            Metadata::default(),
        )
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err:?}");
    assert_eq!(store.last_seq().unwrap(), before);
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            thread::spawn(move || {
                let s = StreamId::new(format!("w{w}")).unwrap();
                for i in 0..100 {
                    store
                        .append(
                            &s,
                            ExpectedVersion::Any,
                            vec![marker(format!("{i}"))],
                            Metadata::default(),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let stats = store.writer_stats();
    assert_eq!(stats.appends, 800);
    assert!(
        stats.batches < stats.appends,
        "no group commit happened: {stats:?}"
    );
}

#[test]
fn limits_are_enforced_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.append_max_events = 3;
    config.event_max_bytes = 64;
    let store = Store::open(config, default_views()).unwrap();
    let s = StreamId::new("s").unwrap();
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            (0..4).map(|i| marker(format!("{i}"))).collect(),
            Metadata::default(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid append: 4 events in one append, at most 3 allowed"
    );
    let err = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![marker("x".repeat(100))],
            Metadata::default(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid append: event 0 (RepositoryClosed) is 104 bytes, at most 64 allowed"
    );
    assert_eq!(store.last_seq().unwrap(), 0);
}

#[test]
fn queued_chunks_commit_in_order_and_stop_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.event_max_bytes = 64;
    let store = Store::open(config, default_views()).unwrap();
    let s = StreamId::new("s").unwrap();
    let chunk = |names: &[&str]| {
        names
            .iter()
            .map(|n| marker(n.to_string()))
            .collect::<Vec<_>>()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let versions =
        |results: Vec<Result<cairn_storage::Appended, StorageError>>| -> Vec<Result<u64, String>> {
            results
                .into_iter()
                .map(|r| r.map(|a| a.stream_version()).map_err(|e| e.to_string()))
                .collect()
        };

    // Three chunks from version 0: versions 2, 3, 5, seqs gap-free.
    let results = runtime.block_on(store.append_chunks_async(
        &s,
        0,
        vec![chunk(&["a", "b"]), chunk(&["c"]), chunk(&["d", "e"])],
        Metadata::default(),
    ));
    assert_eq!(versions(results), vec![Ok(2), Ok(3), Ok(5)]);
    let names: Vec<u64> = store
        .read_stream(&s, 1, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(names, vec![1, 2, 3, 4, 5]);

    // A chunk that fails (too large) stops the rest: the one before it is
    // written, nothing after it.
    let results = runtime.block_on(store.append_chunks_async(
        &s,
        5,
        vec![chunk(&["f"]), vec![marker("x".repeat(100))], chunk(&["g"])],
        Metadata::default(),
    ));
    assert_eq!(
        versions(results),
        vec![
            Ok(6),
            Err(
                "invalid append: event 0 (RepositoryClosed) is 104 bytes, at most 64 allowed"
                    .into()
            )
        ]
    );
    assert_eq!(store.last_seq().unwrap(), 6);

    // A stale version fails the first chunk and so every later one.
    let results = runtime.block_on(store.append_chunks_async(
        &s,
        2,
        vec![chunk(&["h"]), chunk(&["i"])],
        Metadata::default(),
    ));
    let results = versions(results);
    assert_eq!(results.len(), 1);
    assert!(
        results[0]
            .as_ref()
            .is_err_and(|e| e.contains("expected version 2")),
        "{results:?}"
    );
    assert_eq!(store.last_seq().unwrap(), 6);
}

#[test]
fn the_appends_of_one_pipelined_call_share_one_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.group_commit_max_events = 8192;
    // A writer's queue shorter than the call: it takes one slot.
    config.queue_max_appends = 16;
    let store = Store::open(config, default_views()).unwrap();
    let s = StreamId::new("s").unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let before = store.writer_stats();
    // 300 appends of the commands of one batch, each with its own
    // metadata.
    let appends = (0..300)
        .map(|i| {
            (
                vec![marker(format!("m{i}"))],
                Metadata::command(format!("p{i}")),
            )
        })
        .collect();
    let results =
        runtime.block_on(store.append_pipelined(&s, 0, appends, cairn_storage::Durability::Sync));
    let versions: Vec<u64> = results
        .into_iter()
        .map(|r| r.unwrap().stream_version())
        .collect();
    assert_eq!(versions, (1..=300).collect::<Vec<u64>>());
    let after = store.writer_stats();
    assert_eq!(after.appends - before.appends, 300);
    // One group commit, one fsync: not one at the first append and
    // another for the rest.
    assert_eq!(after.batches - before.batches, 1);
    assert_eq!(after.synced_batches - before.synced_batches, 1);
    let principals: Vec<String> = store
        .read_stream(&s, 1, 1000)
        .unwrap()
        .into_iter()
        .map(|e| e.principal)
        .collect();
    assert_eq!(
        principals,
        (0..300).map(|i| format!("p{i}")).collect::<Vec<_>>()
    );

    // Within `group-commit-max-events`: a call larger than a group goes
    // in groups of at most that many events.
    drop(store);
    let mut config = StoreConfig::new(dir.path());
    config.group_commit_max_events = 4;
    config.append_max_events = 2;
    let store = Store::open(config, default_views()).unwrap();
    let before = store.writer_stats();
    let appends = (0..10)
        .map(|i| (vec![marker(format!("n{i}"))], Metadata::default()))
        .collect();
    let results =
        runtime.block_on(store.append_pipelined(&s, 300, appends, cairn_storage::Durability::Sync));
    assert_eq!(results.len(), 10);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.writer_stats().batches - before.batches, 3);
}

#[test]
fn a_view_added_later_catches_up_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::of(b"x");
    {
        let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
        let _pin = store.put(b"x").unwrap();
        store
            .append(
                &StreamId::new("s").unwrap(),
                ExpectedVersion::Any,
                vec![marker(digest.to_string())],
                Metadata::default(),
            )
            .unwrap();
        store
            .append(
                &StreamId::repository("a", "b").unwrap(),
                ExpectedVersion::Any,
                vec![registered("a", "b")],
                Metadata::default(),
            )
            .unwrap();
    }
    let store = open(dir.path());
    let dump = store.view_dump("test_blob_refs").unwrap();
    assert_eq!(dump.checkpoint, 2);
    assert_eq!(
        dump.rows,
        vec![(digest.0.to_vec(), 1u64.to_be_bytes().to_vec())]
    );
    assert_eq!(store.ref_count(&digest).unwrap(), 1);
}

#[test]
fn reads_a_stream_from_a_global_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::new("a").unwrap();
    let b = StreamId::new("b").unwrap();
    for i in 0..20 {
        let s = if i % 3 == 0 { &a } else { &b };
        store
            .append(
                s,
                ExpectedVersion::Any,
                vec![marker(format!("{i}"))],
                Metadata::default(),
            )
            .unwrap();
    }
    // a holds seqs 1, 4, 7, 10, 13, 16, 19.
    let seqs = |from, limit| -> Vec<u64> {
        store
            .read_stream_from_seq(&a, from, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(0, 100), [1, 4, 7, 10, 13, 16, 19]);
    assert_eq!(seqs(5, 2), [7, 10]);
    assert_eq!(seqs(7, 1), [7]);
    assert_eq!(seqs(20, 10), Vec::<u64>::new());
    assert_eq!(
        store
            .read_stream_from_seq(&StreamId::new("none").unwrap(), 1, 10)
            .unwrap()
            .len(),
        0
    );
}

/// A log with only [`EventLog`]'s required methods (the store's), so its
/// `read_stream_from_seq` is the trait's default.
struct RequiredOnly(Store);

impl EventLog for RequiredOnly {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<cairn_events::v1::Event>,
        metadata: Metadata,
    ) -> Result<cairn_storage::Appended, StorageError> {
        self.0.append(stream, expected, events, metadata)
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        EventLog::read_stream(&self.0, stream, from_version, limit)
    }

    fn read_all(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, StorageError> {
        self.0.read_all(from_seq, limit)
    }

    fn last_seq(&self) -> Result<u64, StorageError> {
        EventLog::last_seq(&self.0)
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError> {
        self.0.stream_version(stream)
    }
}

#[test]
fn the_default_stream_read_from_a_sequence_agrees_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequiredOnly(open(dir.path()));
    cairn_storage::conformance::check_stream_reads_from_seq(&log);
}

#[test]
fn metadata_that_cannot_travel_in_headers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = StreamId::new("s").unwrap();
    let mut meta = Metadata::command("mallory\r\nX-Injected: 1");
    let err = store
        .append(&s, ExpectedVersion::Any, vec![marker("x")], meta.clone())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid append: principal contains control characters"
    );
    meta.principal = "p".repeat(513);
    let err = store
        .append(&s, ExpectedVersion::Any, vec![marker("x")], meta)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid append: principal is 513 bytes, at most 512 allowed"
    );
    assert_eq!(store.last_seq().unwrap(), 0);
}

#[test]
fn a_spec_change_after_close_does_not_bring_a_repository_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::repository("team-a", "one").unwrap();
    let closed = event(Payload::RepositoryClosed(RepositoryClosed {
        reason: "gone".into(),
    }));
    let changed = event(Payload::RepositorySpecChanged(RepositorySpecChanged {
        spec: Some(spec("team-a", "one", "x")),
        next_sync_at: None,
    }));
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![registered("team-a", "one"), closed, changed],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        RepositoriesView::get(&store, "team-a", "one").unwrap(),
        None
    );
}

#[test]
fn collection_keeps_blobs_referenced_by_views_this_build_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let digest = Digest::of(b"kept");
    {
        // A "newer" build with the blob-holding view references the blob.
        let store = open(dir.path());
        let _pin = store.put(b"kept").unwrap();
        store
            .append(
                &StreamId::new("s").unwrap(),
                ExpectedVersion::Any,
                vec![marker(digest.to_string())],
                Metadata::default(),
            )
            .unwrap();
    }
    // An "older" build without that view must not collect it.
    let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
    let stats = store.collect_garbage().unwrap();
    assert_eq!((stats.scanned, stats.removed), (1, 0));
    assert_eq!(store.get(&digest).unwrap(), Some(b"kept".to_vec()));
}

#[test]
fn unknown_views_and_future_layouts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.view_dump("nope").unwrap_err().to_string(),
        "unknown view \"nope\""
    );
    assert_eq!(
        store.rebuild(&["nope"], None).unwrap_err().to_string(),
        "unknown view \"nope\""
    );
}

fn package_revision_added(repo: &str, package: u8, digest: &Digest) -> cairn_events::v1::Event {
    let revision = PackageRevision {
        name: format!("{repo}.pkg{package}.v1"),
        package: format!("pkg{package}"),
        workspace: "v1".into(),
        revision: 1,
        lifecycle: "Published".into(),
        resources: [("Kptfile".to_string(), digest.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    event(Payload::PackageRevisionAdded(PackageRevisionAdded {
        revision: Some(revision),
    }))
}

#[test]
fn package_revisions_hold_their_blobs_and_list_by_repository() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = store.put(b"blob0").unwrap();
    let r1 = StreamId::repository("ns", "r1").unwrap();
    let r10 = StreamId::repository("ns", "r10").unwrap();
    store
        .append(
            &r1,
            ExpectedVersion::Any,
            vec![
                package_revision_added("r1", 0, &d.digest()),
                package_revision_added("r1", 1, &d.digest()),
            ],
            Metadata::default(),
        )
        .unwrap();
    store
        .append(
            &r10,
            ExpectedVersion::Any,
            vec![package_revision_added("r10", 0, &d.digest())],
            Metadata::default(),
        )
        .unwrap();
    drop(d);
    assert_eq!(store.ref_count(&Digest::of(b"blob0")).unwrap(), 3);
    let names = |repo: Option<&str>, after: Option<&[u8]>, limit| -> Vec<String> {
        PackageRevisionsView::list(&store, Some("ns"), repo, after, limit)
            .unwrap()
            .into_iter()
            .map(|(_, row)| row.revision.unwrap().name)
            .collect()
    };
    // "r1." does not match "r10.".
    assert_eq!(names(Some("r1"), None, 10), ["r1.pkg0.v1", "r1.pkg1.v1"]);
    assert_eq!(
        names(None, None, 10),
        ["r1.pkg0.v1", "r1.pkg1.v1", "r10.pkg0.v1"]
    );
    assert_eq!(names(None, Some(b"ns/r1.pkg0.v1"), 1), ["r1.pkg1.v1"]);
    let row = PackageRevisionsView::get(&store, "ns", "r10.pkg0.v1")
        .unwrap()
        .unwrap();
    assert_eq!((row.repository.as_str(), row.updated_seq), ("r10", 3));
    store
        .append(
            &r1,
            ExpectedVersion::Any,
            vec![event(Payload::PackageRevisionDeleted(
                PackageRevisionDeleted {
                    name: "r1.pkg0.v1".into(),
                    last: None,
                },
            ))],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        PackageRevisionsView::get(&store, "ns", "r1.pkg0.v1").unwrap(),
        None
    );
    assert_eq!(store.ref_count(&Digest::of(b"blob0")).unwrap(), 2);
}

/// Names and JSON forms of the list view's rows in `scope` after `after`.
fn listed(
    store: &Store,
    scope: &Scope<'_>,
    after: Option<&[u8]>,
) -> Vec<(Vec<u8>, String, Vec<u8>)> {
    let mut out = Vec::new();
    PackageRevisionListView::scan::<StorageError>(store, scope, after, |row| {
        out.push((row.key.to_vec(), row.name.to_owned(), row.json.to_vec()));
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    out
}

#[test]
fn the_list_view_scans_by_scope_renders_json_and_follows_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = Digest::of(b"blob0");
    let r1 = StreamId::repository("ns", "r1").unwrap();
    let r10 = StreamId::repository("ns", "r10").unwrap();
    let mut nested = package_revision_added("r1", 0, &d);
    if let Some(Payload::PackageRevisionAdded(added)) = nested.payload.as_mut() {
        let r = added.revision.as_mut().unwrap();
        r.path = "sub".into();
        r.name = "r1.sub.pkg0.v1".into();
        r.labels = [("tier".to_owned(), "base".to_owned())].into();
    }
    let pins = [store.put(b"blob0").unwrap()];
    for (stream, events) in [
        (
            &r1,
            vec![
                package_revision_added("r1", 1, &d),
                package_revision_added("r1", 0, &d),
                nested,
            ],
        ),
        (&r10, vec![package_revision_added("r10", 0, &d)]),
    ] {
        store
            .append(stream, ExpectedVersion::Any, events, Metadata::default())
            .unwrap();
    }
    drop(pins);
    let names = |scope: Scope<'_>| -> Vec<String> {
        listed(&store, &scope, None)
            .into_iter()
            .map(|(_, name, _)| name)
            .collect()
    };
    let repo = |r| Scope {
        namespace: Some("ns"),
        repository: Some(r),
        ..Scope::default()
    };
    // Key order: package, path, name; "r1" is not a prefix match of "r10".
    assert_eq!(
        names(repo("r1")),
        ["r1.pkg0.v1", "r1.sub.pkg0.v1", "r1.pkg1.v1"]
    );
    assert_eq!(
        names(Scope {
            package: Some("pkg0"),
            ..repo("r1")
        }),
        ["r1.pkg0.v1", "r1.sub.pkg0.v1"]
    );
    assert_eq!(
        names(Scope {
            package: Some("pkg0"),
            path: Some("sub"),
            ..repo("r1")
        }),
        ["r1.sub.pkg0.v1"]
    );
    // Fields after a missing one are checked per row.
    assert_eq!(
        names(Scope {
            path: Some("sub"),
            ..Scope::default()
        }),
        ["r1.sub.pkg0.v1"]
    );
    assert_eq!(
        names(Scope {
            repository: Some("r10"),
            ..Scope::default()
        }),
        ["r10.pkg0.v1"]
    );
    assert_eq!(
        names(Scope {
            namespace: Some("other"),
            ..Scope::default()
        }),
        Vec::<String>::new()
    );

    // Rows hold the JSON form as replies render it, and the filter fields.
    let all = listed(&store, &repo("r1"), None);
    let row = PackageRevisionsView::get(&store, "ns", "r1.sub.pkg0.v1")
        .unwrap()
        .unwrap();
    assert_eq!(all[1].2, cairn_events::revision::revision_json_bytes(&row));
    let mut head = None;
    PackageRevisionListView::scan::<StorageError>(
        &store,
        &Scope {
            path: Some("sub"),
            ..repo("r1")
        },
        None,
        |row| {
            head = Some(row.listing()?);
            Ok(ControlFlow::Break(()))
        },
    )
    .unwrap();
    let head = head.unwrap();
    assert_eq!(
        (
            head.name.as_str(),
            head.workspace.as_str(),
            head.revision,
            head.lifecycle.as_str(),
            head.labels.get("tier").map(String::as_str)
        ),
        ("r1.sub.pkg0.v1", "v1", 1, "Published", Some("base"))
    );
    // Continuing after a key.
    let after: Vec<String> = listed(&store, &repo("r1"), Some(&all[0].0))
        .into_iter()
        .map(|(_, n, _)| n)
        .collect();
    assert_eq!(after, ["r1.sub.pkg0.v1", "r1.pkg1.v1"]);

    // A deletion names only the revision: the index finds its row.
    store
        .append(
            &r1,
            ExpectedVersion::Any,
            vec![event(Payload::PackageRevisionDeleted(
                PackageRevisionDeleted {
                    name: "r1.sub.pkg0.v1".into(),
                    last: None,
                },
            ))],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(names(repo("r1")), ["r1.pkg0.v1", "r1.pkg1.v1"]);
    let rows = store.view_dump(PackageRevisionListView::NAME).unwrap().rows;
    assert_eq!(
        rows.len(),
        2 * 3,
        "a listing row and an index row per revision: {rows:?}"
    );
}

#[test]
fn a_snapshot_scan_and_its_seq_agree_while_the_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = Digest::of(b"blob0");
    let pins = [store.put(b"blob0").unwrap()];
    let r1 = StreamId::repository("ns", "r1").unwrap();
    let names =
        |rows: &[(u64, String)]| -> Vec<String> { rows.iter().map(|(_, n)| n.clone()).collect() };
    let scope = Scope {
        namespace: Some("ns"),
        repository: Some("r1"),
        ..Scope::default()
    };

    // An empty store: nothing listed, position 0.
    let mut rows = Vec::new();
    let seq = store
        .view_snapshot_scan_each::<StorageError>(PackageRevisionListView::NAME, b"", |_, _| {
            rows.push(());
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
    assert_eq!((seq, rows.len()), (0, 0));

    store
        .append(
            &r1,
            ExpectedVersion::Any,
            vec![
                package_revision_added("r1", 0, &d),
                package_revision_added("r1", 1, &d),
            ],
            Metadata::default(),
        )
        .unwrap();

    // Appends committed while a snapshot scan runs are invisible to it,
    // and its seq is the one its rows reflect.
    let snapshot = store.snapshot();
    let mut seen: Vec<(u64, String)> = Vec::new();
    PackageRevisionListView::scan_snapshot::<StorageError>(&snapshot, &scope, None, |row| {
        if seen.is_empty() {
            // The writer commits a third revision mid-scan.
            store
                .append(
                    &r1,
                    ExpectedVersion::Any,
                    vec![package_revision_added("r1", 2, &d)],
                    Metadata::default(),
                )
                .unwrap();
        }
        let json = String::from_utf8(row.json.to_vec()).unwrap();
        let version = json
            .split("\"resource_version\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        seen.push((version.parse().unwrap(), row.name.to_owned()));
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(snapshot.last_seq().unwrap(), 2);
    assert_eq!(names(&seen), ["r1.pkg0.v1", "r1.pkg1.v1"]);
    assert_eq!(seen.iter().map(|(s, _)| *s).max(), Some(2));
    drop(snapshot);
    assert_eq!(store.last_seq().unwrap(), 3);

    // A new snapshot sees the third one, at seq 3.
    let mut now = Vec::new();
    let seq = store
        .view_snapshot_scan_each::<StorageError>(
            PackageRevisionListView::NAME,
            b"Lns\0r1\0",
            |key, _| {
                now.push(
                    String::from_utf8_lossy(key)
                        .rsplit('\0')
                        .next()
                        .unwrap()
                        .to_owned(),
                );
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap();
    assert_eq!(seq, 3);
    assert_eq!(now, ["r1.pkg0.v1", "r1.pkg1.v1", "r1.pkg2.v1"]);
    drop(pins);
}

/// Random histories of repository and blob events.
fn history() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
    proptest::collection::vec((0u8..6, 0u8..5, 0u8..3), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Rebuilding every view from the log gives byte-identical views.
    #[test]
    fn rebuild_equals_live(history in history()) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let blobs: Vec<Digest> = (0..3).map(|i| Digest::of(format!("blob{i}").as_bytes())).collect();
        let mut held = [0u32; 3];
        let mut pins = Vec::new();
        for (kind, repo, blob) in history {
            let name = format!("r{repo}");
            let s = StreamId::repository("ns", &name).unwrap();
            let ev = match kind {
                0 | 4 | 5 => registered("ns", &name),
                1 => event(Payload::RepositorySpecChanged(RepositorySpecChanged { spec: Some(spec("ns", &name, &format!("b{blob}"))), next_sync_at: None })),
                2 => event(Payload::RepositoryClosed(RepositoryClosed { reason: "gone".into() })),
                _ => {
                    let d = blobs[blob as usize];
                    if held[blob as usize] > 0 && repo % 2 == 0 {
                        held[blob as usize] -= 1;
                        marker(format!("-{d}"))
                    } else {
                        pins.push(store.put(format!("blob{blob}").as_bytes()).unwrap());
                        held[blob as usize] += 1;
                        marker(d.to_string())
                    }
                }
            };
            let ev = match kind {
                4 => {
                    pins.push(store.put(format!("blob{blob}").as_bytes()).unwrap());
                    package_revision_added(&name, blob, &blobs[blob as usize])
                }
                5 => event(Payload::PackageRevisionDeleted(PackageRevisionDeleted { name: format!("{name}.pkg{blob}.v1"), last: None })),
                _ => ev,
            };
            let s = if kind == 3 { StreamId::new("blobs").unwrap() } else { s };
            // Some commands carry an idempotency key (folded by the
            // `requests` view), some share one.
            let metadata = Metadata {
                request_id: if blob == 0 { String::new() } else { format!("req-{repo}-{blob}") },
                request_digest: vec![blob; 4],
                ..Metadata::default()
            };
            store.append(&s, ExpectedVersion::Any, vec![ev], metadata).unwrap();
        }
        let before: Vec<_> = store.view_names().iter().map(|v| store.view_dump(v).unwrap()).collect();
        let progress = Arc::new(Mutex::new(Vec::new()));
        let seen = progress.clone();
        let stats = store.rebuild(&[], Some(Box::new(move |done, total| seen.lock().unwrap().push((done, total))))).unwrap();
        let after: Vec<_> = store.view_names().iter().map(|v| store.view_dump(v).unwrap()).collect();
        prop_assert_eq!(&before, &after);
        prop_assert_eq!(stats.events, store.last_seq().unwrap());
        prop_assert_eq!(
            stats.views,
            vec!["repositories".to_string(), "package_revisions".to_string(), "package_revision_list".to_string(), "requests".to_string(), "kv_entries".to_string(), "artifacts".to_string(), "test_blob_refs".to_string()]
        );
        let last = *progress.lock().unwrap().last().unwrap();
        prop_assert_eq!(last, (stats.events, stats.events));
        let test_refs = store.view_dump("test_blob_refs").unwrap().blob_refs;
        for (i, d) in blobs.iter().enumerate() {
            let count = test_refs
                .iter()
                .find(|(key, _)| key.ends_with(&d.0))
                .map_or(0, |(_, v)| u64::from_be_bytes(v.as_slice().try_into().unwrap()));
            prop_assert_eq!(count, u64::from(held[i]));
        }
    }
}

#[test]
fn lifecycle_events_move_a_revision_through_both_revision_views() {
    use cairn_events::v1::{DraftCreated, PackageRevisionProposed, PackageRevisionPublished};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = Digest::of(b"blob0");
    let pin = store.put(b"blob0").unwrap();
    let r1 = StreamId::repository("ns", "r1").unwrap();
    let mut draft = PackageRevision {
        name: "r1.pkg.ws".into(),
        package: "pkg".into(),
        workspace: "ws".into(),
        revision: 0,
        lifecycle: "Draft".into(),
        resources: [("Kptfile".to_string(), d.to_string())].into(),
        ..Default::default()
    };
    let lifecycle = |store: &Store| -> (String, i64, String) {
        let row = PackageRevisionsView::get(store, "ns", "r1.pkg.ws")
            .unwrap()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&listed(store, &Scope::default(), None)[0].2).unwrap();
        let r = row.revision.unwrap();
        assert_eq!(json["lifecycle"].as_str(), Some(r.lifecycle.as_str()));
        (
            r.lifecycle,
            r.revision,
            json["resource_version"].as_str().unwrap().to_owned(),
        )
    };
    store
        .append(
            &r1,
            ExpectedVersion::Any,
            vec![event(Payload::DraftCreated(DraftCreated {
                revision: Some(draft.clone()),
                clone_from: String::new(),
                copied_from: String::new(),
            }))],
            Metadata::default(),
        )
        .unwrap();
    drop(pin);
    assert_eq!(lifecycle(&store), ("Draft".into(), 0, "1".into()));
    draft.lifecycle = "Proposed".into();
    let proposed = event(Payload::PackageRevisionProposed(PackageRevisionProposed {
        revision: Some(draft.clone()),
    }));
    draft.lifecycle = "Published".into();
    draft.revision = 1;
    draft.latest = true;
    let published = event(Payload::PackageRevisionPublished(
        PackageRevisionPublished {
            revision: Some(draft.clone()),
        },
    ));
    store
        .append(
            &r1,
            ExpectedVersion::Exact(1),
            vec![proposed],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(lifecycle(&store), ("Proposed".into(), 0, "2".into()));
    store
        .append(
            &r1,
            ExpectedVersion::Exact(2),
            vec![published],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(lifecycle(&store), ("Published".into(), 1, "3".into()));
    // The blob stays referenced by the row through every change.
    assert_eq!(store.ref_count(&d).unwrap(), 1);
}

#[test]
fn large_blobs_are_sharded_files_and_leftover_temp_files_go_at_open() {
    use cairn_storage::ViewRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.blob_inline_max_bytes = 1024;
    let large = vec![7u8; 1025];
    let digest = Digest::of(&large);
    {
        let store = Store::open(config.clone(), views_with_blobs()).unwrap();
        drop(store.put(&large).unwrap());
        let small = store.put(&[1u8; 1024]).unwrap();
        let hex = hex_of(&digest);
        let path = dir
            .path()
            .join("blobs")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex);
        assert_eq!(std::fs::read(&path).unwrap(), large);
        // The small one is a row, not a file.
        let small_hex = hex_of(&small.digest());
        assert!(!dir.path().join("blobs").join(&small_hex[0..2]).exists());
        assert_eq!(store.read_seq().unwrap(), 0);
        let wrong = Digest::of(b"other");
        let err = store
            .put_reader(&mut vec![3u8; 5000].as_slice(), Some(&wrong))
            .unwrap_err();
        assert!(matches!(err, StorageError::DigestMismatch { .. }));
    }
    let temp = dir.path().join("blobs").join("tmp");
    // Puts that failed or were refused left no temporary file behind.
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::write(temp.join("interrupted.part"), b"half a blob").unwrap();
    let store = Store::open(config, views_with_blobs()).unwrap();
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);
    assert_eq!(store.get(&digest).unwrap(), Some(large));
}

fn hex_of(digest: &Digest) -> String {
    digest.to_string().trim_start_matches("sha256:").to_owned()
}

#[test]
fn typed_views_read_through_any_view_read() {
    use cairn_storage::{ViewRead, ViewReadExt as _};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = StreamId::repository("ns", "one").unwrap();
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![registered("ns", "one")],
            Metadata::default(),
        )
        .unwrap();
    let snapshot = store.snapshot();
    // The snapshot does not see what is committed after it was taken.
    store
        .append(
            &StreamId::repository("ns", "two").unwrap(),
            ExpectedVersion::NoStream,
            vec![registered("ns", "two")],
            Metadata::default(),
        )
        .unwrap();
    let boxed = store.read_snapshot();
    let readers: [(&dyn ViewRead, u64, usize); 3] =
        [(&store, 2, 2), (&snapshot, 1, 1), (&*boxed, 2, 2)];
    for (reader, seq, rows) in readers {
        assert_eq!(reader.read_seq().unwrap(), seq);
        let row = RepositoriesView::get(reader, "ns", "one").unwrap().unwrap();
        assert_eq!(row.updated_seq, 1);
        assert_eq!(
            RepositoriesView::list(reader, Some("ns")).unwrap().len(),
            rows
        );
        assert_eq!(
            reader.view_scan("repositories", b"ns/", 10).unwrap().len(),
            rows
        );
        let mut seen = Vec::new();
        let flow: Result<(), StorageError> =
            reader.view_scan_each("repositories", b"", None, |key, _| {
                seen.push(key.to_vec());
                Ok(ControlFlow::Continue(()))
            });
        flow.unwrap();
        assert_eq!(seen.len(), rows);
    }
    // A callback error stops the scan and comes back as it was.
    let err = (&store as &dyn ViewRead)
        .view_scan_each("repositories", b"", None, |_, _| {
            Err::<ControlFlow<()>, _>(StorageError::InvalidAppend("stop".into()))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid append: stop");
    let arc = Arc::new(store.clone());
    assert!(RepositoriesView::get(&arc, "ns", "two").unwrap().is_some());
}

/// Compacts every stream under `kv/` to its last event.
const KV_CLASS: LastPerStream = LastPerStream("kv/");

/// A stream index key too short to hold a version (written behind the
/// store's back) is reported as corruption by a resuming read of a
/// compacted stream, never a panic.
#[test]
fn a_short_stream_index_key_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = StreamId::new("kv/a").unwrap();
    {
        let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![marker("1"), marker("2")],
                Metadata::default(),
            )
            .unwrap();
        let stats = store
            .compact(Arc::new(KV_CLASS), std::time::SystemTime::now())
            .unwrap();
        assert_eq!(stats.superseded, 1);
    }
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &cfs).unwrap();
        let streams = db.cf_handle(cairn_storage::Column::Streams.name()).unwrap();
        // `kv/a ‖ 0x00 ‖ 0xff`: 6 bytes, pointing past every event.
        db.put_cf(streams, b"kv/a\0\xff", u64::MAX.to_be_bytes())
            .unwrap();
    }
    let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
    let err = store.read_stream_from_seq(&s, 3, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "corrupt store: stream kv/a: index key of 6 bytes has no version"
    );
}

/// An envelope as a replica receives it: `seq`, recorded `at_secs`, with
/// idempotency key `request_id` (may be empty).
fn replicated(seq: u64, at_secs: i64, request_id: &str) -> Envelope {
    Envelope {
        schema_version: cairn_events::envelope::SCHEMA_VERSION,
        event_id: format!("01900000-0000-7000-8000-{seq:012}"),
        stream: format!("repo/ns/r{seq}"),
        stream_version: 1,
        seq,
        recorded_at: Some(pbjson_types::Timestamp {
            seconds: at_secs,
            nanos: 0,
        }),
        correlation_id: "c".into(),
        causation_id: "c".into(),
        principal: "p".into(),
        event: Some(registered("ns", &format!("r{seq}"))),
        request_id: request_id.into(),
        request_digest: request_id.as_bytes().to_vec(),
        ..Envelope::default()
    }
}

/// The `requests` view keeps an idempotency key for a day after its
/// command's first event, prunes by the events' recorded times (so however
/// the log was grouped into commits, and after a rebuild, the rows are
/// the same), and answers only live keys.
#[test]
fn requests_view_keeps_keys_for_a_window_and_prunes_by_event_time() {
    use cairn_storage::{views::RequestsView, ReplicatedLog};
    const T0: i64 = 1_790_000_000;
    const DAY: i64 = 24 * 60 * 60;
    let history = vec![
        replicated(1, T0, "a"),
        replicated(2, T0 + 1, "a"),
        replicated(3, T0 + 10, "b"),
        replicated(4, T0 + 20, ""),
        replicated(5, T0 + DAY + 5, "c"),
        replicated(6, T0 + DAY + 30, "b"),
    ];
    let micros = |secs: i64| u64::try_from(secs).unwrap() * 1_000_000;
    let mut dumps = Vec::new();
    for grouping in [vec![6], vec![1, 1, 1, 1, 1, 1], vec![4, 2]] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut rest = history.clone();
        for n in grouping {
            store.apply_replicated(rest.drain(..n).collect()).unwrap();
        }
        // "a": two events of one command; pruned by "c", a day later.
        assert_eq!(RequestsView::get(&store, "a").unwrap(), None);
        // "b": pruned by "c" too, then recorded again by seq 6.
        let b = RequestsView::get(&store, "b").unwrap().unwrap();
        assert_eq!(
            (b.first_seq, b.last_seq, b.stream.as_str()),
            (6, 6, "repo/ns/r6")
        );
        let c = RequestsView::get(&store, "c").unwrap().unwrap();
        assert_eq!(
            (c.first_seq, c.last_seq, c.digest.as_slice()),
            (5, 5, &b"c"[..])
        );
        assert_eq!(
            RequestsView::get_live(&store, "c", micros(T0 + DAY + 6)).unwrap(),
            Some(c.clone())
        );
        assert_eq!(
            RequestsView::get_live(&store, "c", micros(T0 + 2 * DAY + 5)).unwrap(),
            None,
            "a day after its first event the key is forgotten"
        );
        let live = store.view_dump("requests").unwrap();
        store.rebuild(&["requests"], None).unwrap();
        assert_eq!(
            store.view_dump("requests").unwrap(),
            live,
            "rebuild equals live"
        );
        dumps.push(live);
    }
    assert_eq!(dumps[0], dumps[1], "one commit or one per event");
    assert_eq!(dumps[0], dumps[2]);

    // Before the pruning event, "a" holds both events of its command.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.apply_replicated(history[..4].to_vec()).unwrap();
    let a = RequestsView::get(&store, "a").unwrap().unwrap();
    assert_eq!((a.first_seq, a.last_seq), (1, 2));
    assert_eq!(
        RequestsView::get_live(&store, "a", micros(T0 + 60)).unwrap(),
        Some(a)
    );
}

/// A group of buffered appends is written without an fsync; a group
/// holding one synced append is fsynced; both are readable at once.
#[test]
fn buffered_appends_skip_the_fsync_unless_a_synced_one_shares_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
    let stream = StreamId::new("kv/00").unwrap();
    let before = store.writer_stats();
    let out = futures::executor::block_on(store.append_chunks_durable(
        &stream,
        0,
        vec![vec![marker("1")]],
        Metadata::command("t"),
        cairn_storage::Durability::Buffered,
    ));
    assert!(out[0].is_ok());
    let after = store.writer_stats();
    assert_eq!(after.batches, before.batches + 1);
    assert_eq!(after.synced_batches, before.synced_batches);
    assert_eq!(store.stream_version(&stream).unwrap(), 1);
    store.sync_wal().unwrap();
    let out = futures::executor::block_on(store.append_chunks_durable(
        &stream,
        1,
        vec![vec![marker("2")]],
        Metadata::command("t"),
        cairn_storage::Durability::Sync,
    ));
    assert!(out[0].is_ok());
    let synced = store.writer_stats();
    assert_eq!(synced.batches, after.batches + 1);
    assert_eq!(synced.synced_batches, after.synced_batches + 1);
}

/// Messages of a replicated order get their sequence numbers from the
/// order: two nodes applying the same messages, grouped differently, hold
/// the same log and views byte for byte — the same as the replicated
/// apply of the same events with their seqs; a message at or below the
/// position is skipped; one whose stream version does not continue its
/// stream, or one the applier refused from the message alone, is refused
/// alone (nothing of it written) and the position moves past it; the
/// position survives a reopen.
#[test]
fn sequenced_commits_take_their_seqs_from_the_replicated_order() {
    use cairn_storage::{ReplicatedLog, Sequenced, SequencedCommit};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let unsequenced = |seq: u64, stream: &str, version: u64| Envelope {
        seq: 0,
        stream: stream.into(),
        stream_version: version,
        event: Some(if version == 1 {
            registered("ns", stream.trim_start_matches("repo/ns/"))
        } else {
            cairn_events::v1::Event {
                payload: Some(Payload::RepositoryClosed(RepositoryClosed::default())),
            }
        }),
        ..replicated(seq, 1_790_000_000 + seq as i64, "")
    };
    let messages = vec![
        SequencedCommit {
            position: 3,
            envelopes: vec![
                unsequenced(1, "repo/ns/a", 1),
                unsequenced(2, "repo/ns/b", 1),
            ],
            ..Default::default()
        },
        // A fence: no events.
        SequencedCommit {
            position: 4,
            envelopes: vec![],
            ..Default::default()
        },
        // A deposed writer's stale version: refused, nothing written.
        SequencedCommit {
            position: 7,
            envelopes: vec![
                unsequenced(90, "repo/ns/c", 1),
                unsequenced(91, "repo/ns/a", 1),
            ],
            ..Default::default()
        },
        // Refused from the message alone (by the applier that read it).
        SequencedCommit {
            position: 8,
            refused: Some("an envelope of another stream".into()),
            ..Default::default()
        },
        SequencedCommit {
            position: 9,
            envelopes: vec![unsequenced(3, "repo/ns/a", 2)],
            ..Default::default()
        },
    ];
    let mut dumps = Vec::new();
    for grouping in [vec![5], vec![1, 1, 1, 1, 1], vec![2, 3]] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut rest = messages.clone();
        let mut outcomes = Vec::new();
        for n in grouping {
            let group: Vec<_> = rest.drain(..n).collect();
            outcomes.extend(
                runtime
                    .block_on(store.apply_sequenced_async(group))
                    .unwrap(),
            );
        }
        assert_eq!(
            outcomes,
            [
                Sequenced::Applied {
                    first_seq: 1,
                    last_seq: 2
                },
                Sequenced::Empty,
                Sequenced::Refused(
                    "stream repo/ns/a is at version 1; an event of version 1 does not continue it"
                        .into()
                ),
                Sequenced::Refused("an envelope of another stream".into()),
                Sequenced::Applied {
                    first_seq: 3,
                    last_seq: 3
                },
            ]
        );
        assert_eq!(store.replication_position().unwrap(), 9);
        assert_eq!(store.last_seq().unwrap(), 3);
        // Applied again (a consumer redelivering after a restart): skipped.
        assert_eq!(
            runtime
                .block_on(store.apply_sequenced_async(messages[..2].to_vec()))
                .unwrap(),
            [Sequenced::AlreadyApplied, Sequenced::AlreadyApplied]
        );
        dumps.push(store.state_dump().unwrap());
    }
    assert_eq!(dumps[0], dumps[1], "one write or one per message");
    assert_eq!(dumps[0], dumps[2]);

    // The same events applied with their seqs give the same log and views
    // (the replication position aside, which only this path records).
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let with_seqs = [
        (1, "repo/ns/a", 1),
        (2, "repo/ns/b", 1),
        (3, "repo/ns/a", 2),
    ]
    .map(|(seq, stream, version)| Envelope {
        seq,
        ..unsequenced(seq, stream, version)
    });
    store.apply_replicated(with_seqs.to_vec()).unwrap();
    let mut replicated_dump = store.state_dump().unwrap();
    let mut sequenced_dump = dumps.pop().unwrap();
    for dump in [&mut replicated_dump, &mut sequenced_dump] {
        for (family, rows) in dump.iter_mut() {
            if family == "meta" {
                rows.retain(|(key, _)| key.as_slice() != b"replication_position");
            }
        }
    }
    assert_eq!(sequenced_dump, replicated_dump);

    // The position is durable with the events.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        runtime
            .block_on(store.apply_sequenced_async(messages[..1].to_vec()))
            .unwrap();
        runtime.block_on(store.shutdown());
    }
    let store = open(dir.path());
    assert_eq!(store.replication_position().unwrap(), 3);
    assert_eq!(store.last_seq().unwrap(), 2);
}

/// What a commit observer saw: each call's envelope seqs, with the last
/// seq the store announced at that moment, and a view row read through
/// the views it was handed.
#[derive(Debug, Default)]
struct Seen {
    calls: Mutex<Vec<(Vec<u64>, u64, bool)>>,
    announced: Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
}

impl cairn_storage::CommitObserver for Seen {
    fn committed(&self, envelopes: &[&Envelope], views: &dyn cairn_storage::ViewRead) {
        let announced = *self
            .announced
            .lock()
            .unwrap()
            .as_ref()
            .expect("set before any commit")
            .borrow();
        let last = envelopes.last().expect("a commit has events");
        let name = last.stream.trim_start_matches("repo/ns/");
        let row = RepositoriesView::get(views, "ns", name).unwrap();
        self.calls.lock().unwrap().push((
            envelopes.iter().map(|e| e.seq).collect(),
            announced,
            row.is_some(),
        ));
    }
}

/// An observer is told of every commit — appends and replicated commits
/// alike — with the seqs they got, after the views hold them and before
/// the store announces their seq.
#[test]
fn commit_observers_see_every_commit_before_its_seq_is_announced() {
    use cairn_storage::SequencedCommit;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let seen = Arc::new(Seen::default());
    *seen.announced.lock().unwrap() = Some(store.subscribe());
    store.observe(seen.clone());
    store
        .append(
            &StreamId::repository("ns", "a").unwrap(),
            ExpectedVersion::Exact(0),
            vec![registered("ns", "a")],
            Metadata::command("t"),
        )
        .unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = open(replica_dir.path());
    *seen.announced.lock().unwrap() = Some(replica.subscribe());
    replica.observe(seen.clone());
    let unsequenced = |name: &str| Envelope {
        seq: 0,
        stream: format!("repo/ns/{name}"),
        stream_version: 1,
        event: Some(registered("ns", name)),
        ..replicated(1, 1_790_000_000, "")
    };
    runtime
        .block_on(replica.apply_sequenced_async(vec![
            SequencedCommit {
                position: 1,
                envelopes: vec![unsequenced("b"), unsequenced("c")],
                ..Default::default()
            },
            SequencedCommit {
                position: 2,
                envelopes: vec![unsequenced("d")],
                ..Default::default()
            },
        ]))
        .unwrap();
    assert_eq!(
        *seen.calls.lock().unwrap(),
        [
            // The append: seq 1, announced after; its row readable.
            (vec![1], 0, true),
            // Both replicated commits in one write: seqs 1–3.
            (vec![1, 2, 3], 0, true),
        ]
    );
    assert_eq!(store.last_seq().unwrap(), 1);
    assert_eq!(replica.last_seq().unwrap(), 3);
}

/// Reads through the store (its row cache) from inside an observer.
#[derive(Default)]
struct ReadsBack {
    store: Mutex<Option<Store>>,
    rows: Mutex<Vec<bool>>,
}

impl cairn_storage::CommitObserver for ReadsBack {
    fn committed(&self, _: &[&Envelope], _: &dyn cairn_storage::ViewRead) {
        let store = self.store.lock().unwrap().clone().expect("set");
        let row = RepositoriesView::get(&store, "ns", "a").unwrap();
        self.rows.lock().unwrap().push(row.is_some());
    }
}

/// A row the row cache holds from before a commit is not an answer once
/// the commit is written, even before the commit is announced: a reader
/// told of the commit by an observer (the key-value memory tier's
/// readers) reads what the commit left.
#[test]
fn the_row_cache_answers_no_row_read_before_a_commit_its_observers_were_told_of() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = StreamId::repository("ns", "a").unwrap();
    store
        .append(
            &a,
            ExpectedVersion::Exact(0),
            vec![registered("ns", "a")],
            Metadata::command("t"),
        )
        .unwrap();
    // Cached at seq 1.
    assert!(RepositoriesView::get(&store, "ns", "a").unwrap().is_some());
    let observer = Arc::new(ReadsBack::default());
    *observer.store.lock().unwrap() = Some(store.clone());
    store.observe(observer.clone());
    store
        .append(
            &a,
            ExpectedVersion::Exact(1),
            vec![cairn_events::v1::Event {
                payload: Some(Payload::RepositoryClosed(RepositoryClosed::default())),
            }],
            Metadata::command("t"),
        )
        .unwrap();
    assert_eq!(
        *observer.rows.lock().unwrap(),
        [false],
        "the closed repository's row is gone"
    );
    *observer.store.lock().unwrap() = None;
}

/// A row read into the row cache while a rebuild refills the views is
/// not an answer once the rebuild is done (no new seq was written).
#[test]
fn the_row_cache_answers_no_row_read_during_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.replay_batch_events = 1;
    let store = Store::open(config, views_with_blobs()).unwrap();
    for name in ["b", "a"] {
        store
            .append(
                &StreamId::repository("ns", name).unwrap(),
                ExpectedVersion::Exact(0),
                vec![registered("ns", name)],
                Metadata::command("t"),
            )
            .unwrap();
    }
    let during = Arc::new(Mutex::new(Vec::new()));
    let (reader, seen) = (store.clone(), during.clone());
    store
        .rebuild(
            &[RepositoriesView::NAME],
            Some(Box::new(move |done, _| {
                let row = RepositoriesView::get(&reader, "ns", "a").unwrap();
                seen.lock().unwrap().push((done, row.is_some()));
            })),
        )
        .unwrap();
    // After b's event only, a's row is not there yet (and was cached so).
    assert_eq!(*during.lock().unwrap(), [(1, false), (2, true)]);
    assert!(RepositoriesView::get(&store, "ns", "a").unwrap().is_some());
    assert!(RepositoriesView::get(&store, "ns", "b").unwrap().is_some());
}

#[test]
fn in_memory_reads_answer_from_memory_or_say_they_need_the_disk() {
    use cairn_events::v1::{ArtifactKey, ArtifactStored};
    use cairn_storage::views::ArtifactsView;
    let dir = tempfile::tempdir().unwrap();
    let key = ArtifactKey {
        method: "GET".into(),
        url: "https://charts.example.com/a.tgz".into(),
        vary_key: String::new(),
    };
    let absent = ArtifactKey {
        url: "https://charts.example.com/b.tgz".into(),
        ..key.clone()
    };
    let body = b"a small body, stored as a row";
    let digest;
    {
        let store = open(dir.path());
        let pin = store.put(body).unwrap();
        digest = pin.digest();
        store
            .append(
                &StreamId::artifact(0),
                ExpectedVersion::NoStream,
                vec![event(Payload::ArtifactStored(ArtifactStored {
                    key: Some(key.clone()),
                    status: 200,
                    digest: digest.to_string(),
                    size: body.len() as u64,
                    ..Default::default()
                }))],
                Metadata::command("alice"),
            )
            .unwrap();
        // Just written: in the memtables.
        let row = ArtifactsView::get_in_memory(&store, &key).unwrap();
        assert_eq!(row.unwrap().unwrap().digest, digest.to_string());
        assert_eq!(
            store.blob_row_in_memory(&digest).unwrap(),
            Some(Some(body.to_vec()))
        );
    }
    // Reopened: the view's rows are in table files, not in memory (the
    // blob rows are: opening counts their bytes).
    let store = open(dir.path());
    assert_eq!(ArtifactsView::get_in_memory(&store, &key).unwrap(), None);
    // Once read from the disk, they are answered from memory.
    let row = ArtifactsView::get(&store, &key).unwrap().unwrap();
    assert_eq!(
        ArtifactsView::get_in_memory(&store, &key).unwrap(),
        Some(Some(row))
    );
    assert_eq!(store.get(&digest).unwrap(), Some(body.to_vec()));
    assert_eq!(
        store.blob_row_in_memory(&digest).unwrap(),
        Some(Some(body.to_vec()))
    );
    // An absent key, its table's blocks in memory: known absent.
    assert_eq!(
        ArtifactsView::get_in_memory(&store, &absent).unwrap(),
        Some(None)
    );
}

/// A sequenced commit that carries its envelopes' bytes stores each as
/// those bytes with the event's seq spliced in: the same rows as encoding
/// the envelopes again, fields this build does not know kept; bytes not in
/// prost's field order are encoded again instead; the event size limit
/// holds on either path.
#[test]
fn sequenced_rows_are_the_replicated_bytes_with_their_seq() {
    use cairn_storage::{Sequenced, SequencedCommit};
    use prost::Message as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let unsequenced = |n: u64| Envelope {
        seq: 0,
        ..replicated(n, 1_790_000_000, "")
    };
    let bytes_of = |env: &Envelope| bytes::Bytes::from(env.encode_to_vec());
    let commit =
        |position: u64, envelopes: Vec<Envelope>, encoded: Vec<bytes::Bytes>| SequencedCommit {
            position,
            envelopes,
            encoded,
            refused: None,
        };
    let (one, two) = (unsequenced(1), unsequenced(2));
    // Field 14 (unknown to this build), a varint 1, after the known ones.
    let mut newer = one.encode_to_vec();
    newer.extend_from_slice(&[14 << 3, 1]);
    // Field 2 (the event id) moved last: decodes to `three`, not prost's order.
    let three = unsequenced(3);
    let mut shuffled = Envelope {
        event_id: String::new(),
        ..three.clone()
    }
    .encode_to_vec();
    prost::encoding::string::encode(2, &three.event_id, &mut shuffled);
    assert_eq!(Envelope::decode(shuffled.as_slice()).unwrap(), three);
    let big = Envelope {
        event: Some(event(Payload::RepositoryClosed(RepositoryClosed {
            reason: "x".repeat(100),
        }))),
        ..unsequenced(4)
    };

    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::new(dir.path());
    config.event_max_bytes = 90;
    let store = Store::open(config, views_with_blobs()).unwrap();
    let outcomes = runtime
        .block_on(store.apply_sequenced_async(vec![
            commit(
                1,
                vec![one.clone(), two.clone()],
                vec![newer.clone().into(), bytes_of(&two)],
            ),
            commit(2, vec![three.clone()], vec![shuffled.into()]),
            commit(3, vec![big.clone()], vec![bytes_of(&big)]),
        ]))
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Sequenced::Applied {
                first_seq: 1,
                last_seq: 2
            },
            Sequenced::Applied {
                first_seq: 3,
                last_seq: 3
            },
            Sequenced::Refused("event at seq 4 is 104 bytes, at most 90 allowed".into()),
        ]
    );
    let rows_of = |store: &Store| -> Vec<Vec<u8>> {
        store
            .read_log_events(1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.bytes.to_vec())
            .collect()
    };
    let rows = rows_of(&store);
    let with_seq = |env: &Envelope, seq| Envelope { seq, ..env.clone() }.encode_to_vec();
    let mut first = with_seq(&one, 1);
    first.extend_from_slice(&[14 << 3, 1]);
    assert_eq!(rows, [first, with_seq(&two, 2), with_seq(&three, 3)]);

    // The same commits without their bytes: the same log rows, but for
    // the unknown field.
    let dir = tempfile::tempdir().unwrap();
    let again = open(dir.path());
    runtime
        .block_on(again.apply_sequenced_async(vec![
            commit(1, vec![one.clone(), two.clone()], Vec::new()),
            commit(2, vec![three.clone()], Vec::new()),
        ]))
        .unwrap();
    assert_eq!(
        rows_of(&again),
        [with_seq(&one, 1), with_seq(&two, 2), with_seq(&three, 3)]
    );
}
