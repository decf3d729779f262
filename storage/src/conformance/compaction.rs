//! Compaction of a keyed stream class: a history of package revision
//! events on `kv/` streams, folded by a last-writer-wins test view
//! ([`LwwView`]), is compacted with [`KvPolicy`]; views rebuilt from the
//! compacted log must equal the live ones, byte for byte, and repository
//! streams must be untouched.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn_events::{
    envelope::{event, Metadata},
    v1::{
        event::Payload, Envelope, PackageRevision, PackageRevisionAdded, PackageRevisionDeleted,
        PackageRevisionModified,
    },
    StreamId,
};
use prost::Message as _;

use crate::{
    views::default_views, CompactingLog, CompactionPolicy, ExpectedVersion, StorageError, View,
    ViewTx,
};

/// Stream class of the test: `kv/…`.
pub const KV_PREFIX: &str = "kv/";

/// The key of a package revision event: the revision's name.
fn revision_key(envelope: &Envelope) -> Option<(Vec<u8>, Option<&PackageRevision>)> {
    match envelope.event.as_ref()?.payload.as_ref()? {
        Payload::PackageRevisionAdded(PackageRevisionAdded { revision })
        | Payload::PackageRevisionModified(PackageRevisionModified { revision }) => {
            let revision = revision.as_ref()?;
            Some((revision.name.clone().into_bytes(), Some(revision)))
        }
        Payload::PackageRevisionDeleted(deleted) => Some((deleted.name.clone().into_bytes(), None)),
        _ => None,
    }
}

/// A last-writer-wins view of `kv/` streams: revision name → the latest
/// revision (and the seq and stream of the event that set it); a deletion
/// removes the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct LwwView;

impl View for LwwView {
    fn name(&self) -> &'static str {
        "test_lww"
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        if !envelope.stream.starts_with(KV_PREFIX) {
            return Ok(());
        }
        match revision_key(envelope) {
            Some((key, Some(revision))) => {
                let mut row = revision.encode_to_vec();
                row.extend_from_slice(&envelope.seq.to_be_bytes());
                row.extend_from_slice(envelope.stream.as_bytes());
                tx.put(key, row);
            }
            Some((key, None)) => tx.delete(key),
            None => {}
        }
        Ok(())
    }
}

/// Compacts `kv/` by revision name; deletions are tombstones.
#[derive(Debug, Clone)]
pub struct KvPolicy {
    /// How long tombstones are kept.
    pub retention: Duration,
}

impl CompactionPolicy for KvPolicy {
    fn stream_prefix(&self) -> &str {
        KV_PREFIX
    }

    fn key(&self, envelope: &Envelope) -> Option<Vec<u8>> {
        revision_key(envelope).map(|(key, _)| key)
    }

    fn is_tombstone(&self, envelope: &Envelope) -> bool {
        matches!(revision_key(envelope), Some((_, None)))
    }

    fn tombstone_retention(&self) -> Duration {
        self.retention
    }
}

/// Compacts every stream under its prefix to the stream's last event
/// (one key per stream, no tombstones): the simplest class, for tests of
/// what a compaction leaves behind in the log and of the refusals.
#[derive(Debug)]
pub struct LastPerStream(pub &'static str);

impl CompactionPolicy for LastPerStream {
    fn stream_prefix(&self) -> &str {
        self.0
    }
    fn key(&self, _: &Envelope) -> Option<Vec<u8>> {
        Some(Vec::new())
    }
    fn is_tombstone(&self, _: &Envelope) -> bool {
        false
    }
    fn tombstone_retention(&self) -> Duration {
        Duration::ZERO
    }
}

fn revision(name: &str, step: u32) -> PackageRevision {
    PackageRevision {
        name: name.into(),
        package: name.into(),
        workspace: format!("w{step}"),
        revision: i64::from(step),
        lifecycle: "Draft".into(),
        ..Default::default()
    }
}

/// The views a compaction test store runs: cairn's and [`LwwView`].
pub fn views() -> Vec<Arc<dyn View>> {
    let mut views = default_views();
    views.push(Arc::new(LwwView));
    views
}

fn dumps(store: &dyn CompactingLog) -> Vec<crate::read::ViewDump> {
    store.view_dumps().unwrap()
}

/// Opens a compacting log with the given views in a directory.
pub type OpenWithViews<'a> = &'a dyn Fn(&Path, Vec<Arc<dyn View>>) -> Box<dyn CompactingLog>;

/// The whole check; `open` opens a log with the given views (any
/// [`CompactingLog`]: the RocksDB [`crate::Store`] in this crate's tests).
pub fn compacted_log_rebuilds_to_the_live_views(dir: &Path, open: OpenWithViews<'_>) {
    let store = open(dir, views());
    let kv = [
        StreamId::new("kv/a").unwrap(),
        StreamId::new("kv/b").unwrap(),
    ];
    let repo = StreamId::repository("ns", "r").unwrap();
    let names = ["k0", "k1", "k2", "k3", "k4"];
    // (seq, stream index, key, tombstone) of every kv event, in order.
    let mut kv_events: Vec<(u64, usize, &str, bool)> = Vec::new();
    let mut present: HashMap<&str, bool> = HashMap::new();
    for i in 0..120u32 {
        let key = names[(i * 7 % 5) as usize];
        let s = (i % 2) as usize;
        let exists = present.get(key).copied().unwrap_or(false);
        let (ev, tombstone) = match (exists, i % 3) {
            (false, _) => (
                event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                    revision: Some(revision(key, i)),
                })),
                false,
            ),
            (true, 0) => (
                event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                    name: key.into(),
                    last: None,
                })),
                true,
            ),
            (true, _) => (
                event(Payload::PackageRevisionModified(PackageRevisionModified {
                    revision: Some(revision(key, i)),
                })),
                false,
            ),
        };
        present.insert(key, !tombstone);
        let seq = store
            .append(&kv[s], ExpectedVersion::Any, vec![ev], Metadata::default())
            .unwrap()
            .first_seq();
        kv_events.push((seq, s, key, tombstone));
        if i % 10 == 0 {
            // Repository history, interleaved: never compacted.
            store
                .append(
                    &repo,
                    ExpectedVersion::Any,
                    vec![
                        crate::sample::marker(format!("repo {i}")),
                        event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                            name: "r.gone.v1".into(),
                            last: None,
                        })),
                    ],
                    Metadata::default(),
                )
                .unwrap();
        }
    }
    // A key set once in a stream of its own (so that event is a head and
    // stays) and deleted elsewhere: its tombstone must stay too, however
    // old, or a rebuild would bring the key back.
    let lone = StreamId::new("kv/lone").unwrap();
    for (stream, index, key, ev, tombstone) in [
        (
            &lone,
            2,
            "k9",
            event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                revision: Some(revision("k9", 0)),
            })),
            false,
        ),
        (
            &kv[0],
            0,
            "k9",
            event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                name: "k9".into(),
                last: None,
            })),
            true,
        ),
        (
            &kv[0],
            0,
            "k8",
            event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                revision: Some(revision("k8", 0)),
            })),
            false,
        ),
    ] {
        let seq = store
            .append(stream, ExpectedVersion::Any, vec![ev], Metadata::default())
            .unwrap()
            .first_seq();
        kv_events.push((seq, index, key, tombstone));
    }
    let last_seq = store.last_seq().unwrap();
    let versions: Vec<u64> = kv
        .iter()
        .map(|s| store.stream_version(s).unwrap())
        .collect();
    let repo_before = store.read_stream(&repo, 1, usize::MAX).unwrap();
    let live = dumps(&*store);
    assert!(
        !live.last().unwrap().rows.is_empty(),
        "the test view has rows"
    );
    let all_before = store.read_all(1, usize::MAX).unwrap();

    // What must remain: per key the latest event; plus every stream head.
    let heads: BTreeSet<u64> = kv_events
        .iter()
        .enumerate()
        .filter(|(i, (_, s, _, _))| kv_events[i + 1..].iter().all(|(_, t, _, _)| t != s))
        .map(|(_, (seq, _, _, _))| *seq)
        .collect();
    let mut latest: HashMap<&str, (u64, bool)> = HashMap::new();
    for (seq, _, key, tombstone) in &kv_events {
        latest.insert(key, (*seq, *tombstone));
    }
    // Keys with an older event kept as a stream head keep their tombstone.
    let shadowing: BTreeSet<&str> = kv_events
        .iter()
        .filter(|(seq, _, key, _)| heads.contains(seq) && *seq != latest[key].0)
        .map(|(_, _, key, _)| *key)
        .collect();
    assert!(
        shadowing.contains("k9"),
        "the history has a shadowed tombstone"
    );
    let removed_seqs = |tombstones_expired: bool| -> BTreeSet<u64> {
        kv_events
            .iter()
            .filter(|(seq, _, key, _)| {
                let (last, tombstone) = latest[key];
                let expires = tombstone && tombstones_expired && !shadowing.contains(key);
                !heads.contains(seq) && (*seq != last || expires)
            })
            .map(|(seq, _, _, _)| *seq)
            .collect()
    };

    // Refused: classes that are or cover repository streams.
    for prefix in ["repo/", "repo/ns/", "r", ""] {
        let err = store
            .compact(Arc::new(LastPerStream(prefix)), SystemTime::now())
            .unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidCompaction(_)),
            "{prefix:?}: {err:?}"
        );
    }
    assert_eq!(store.read_all(1, usize::MAX).unwrap(), all_before);

    let check = |store: &dyn CompactingLog, tombstones_expired: bool| {
        let removed = removed_seqs(tombstones_expired);
        let kept: Vec<u64> = (1..=last_seq).filter(|s| !removed.contains(s)).collect();
        let all = store.read_all(1, usize::MAX).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), kept);
        let expected: Vec<&Envelope> = all_before
            .iter()
            .filter(|e| !removed.contains(&e.seq))
            .collect();
        assert_eq!(
            all.iter().collect::<Vec<_>>(),
            expected,
            "kept events unchanged"
        );
        // Windows start at the first kept seq at or after `from`.
        let window = store.read_all(2, 3).unwrap();
        assert_eq!(
            window.iter().map(|e| e.seq).collect::<Vec<_>>(),
            kept.iter()
                .copied()
                .filter(|s| *s >= 2)
                .take(3)
                .collect::<Vec<_>>()
        );
        assert_eq!(store.last_seq().unwrap(), last_seq);
        for (s, version) in kv.iter().zip(&versions) {
            assert_eq!(store.stream_version(s).unwrap(), *version);
            let read = store.read_stream(s, 1, usize::MAX).unwrap();
            assert!(read.iter().all(|e| !removed.contains(&e.seq)));
            assert_eq!(read.last().unwrap().stream_version, *version);
            let from_seq = store.read_stream_from_seq(s, last_seq / 2, 1).unwrap();
            let want = read.iter().find(|e| e.seq >= last_seq / 2).map(|e| e.seq);
            assert_eq!(from_seq.first().map(|e| e.seq), want);
        }
        assert_eq!(
            store.read_stream(&repo, 1, usize::MAX).unwrap(),
            repo_before
        );
        removed.len()
    };

    // Tombstones within their retention are kept.
    let stats = store
        .compact(
            Arc::new(KvPolicy {
                retention: Duration::from_secs(3600),
            }),
            SystemTime::now(),
        )
        .unwrap();
    let removed = check(&*store, false);
    assert!(
        removed > 50,
        "the history supersedes most events ({removed})"
    );
    assert_eq!(
        (
            stats.superseded,
            stats.expired_tombstones,
            stats.compacted_through
        ),
        (removed as u64, 0, last_seq)
    );
    assert_eq!(dumps(&*store), live, "compaction changed no view");
    store.rebuild_views().unwrap();
    assert_eq!(
        dumps(&*store),
        live,
        "views rebuilt from the compacted log differ"
    );

    // Past their retention, tombstones go too (except stream heads).
    let later = SystemTime::now() + Duration::from_secs(7200);
    let stats = store
        .compact(
            Arc::new(KvPolicy {
                retention: Duration::from_secs(3600),
            }),
            later,
        )
        .unwrap();
    let expired = removed_seqs(true).len() - removed;
    assert!(expired > 0, "the history ends with deleted keys");
    assert_eq!(
        (stats.superseded, stats.expired_tombstones),
        (0, expired as u64)
    );
    check(&*store, true);
    store.rebuild_views().unwrap();
    assert_eq!(
        dumps(&*store),
        live,
        "views rebuilt after tombstones expired differ"
    );

    // Reopened: the gaps are still accepted, numbering continues.
    drop(store);
    let store = open(dir, views());
    check(&*store, true);
    let next = store
        .append(
            &kv[0],
            ExpectedVersion::Exact(versions[0]),
            vec![crate::sample::marker("after")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        (next.first_seq(), next.stream_version()),
        (last_seq + 1, versions[0] + 1)
    );
}
