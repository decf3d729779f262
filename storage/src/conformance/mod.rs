//! The conformance suites every implementation of the storage traits must
//! pass (model: quickwit's `metastore_test_suite!`). Compiled only for this
//! crate's tests and with the `testsuite` feature.
//!
//! # Layout
//! - this module — the [`EventLog`] and [`ReplicatedLog`] checks and
//!   [`event_log_conformance!`](crate::event_log_conformance).
//! - [`blob`] — the [`crate::BlobStore`] checks and
//!   [`blob_store_conformance!`](crate::blob_store_conformance).
//! - [`compaction`] — compaction of a keyed stream class against a
//!   last-writer-wins test view, and the guard on repository streams, for
//!   any [`crate::CompactingLog`] (called from a test with an opener, not
//!   through a macro).
//!
//! The macros name `tempfile` through this module
//! ([`tempfile`], re-exported), so a caller needs no
//! `tempfile` dependency of its own.
//!
//! Use a macro with a function that opens the implementation in a
//! directory; each check becomes a `#[test]`. Opening the same directory
//! twice must give the same log (the reopen check).

use std::{collections::HashMap, path::Path, sync::Arc, thread};

use cairn_events::{
    envelope::Metadata,
    v1::{event::Payload, Envelope, Event},
    StreamId,
};

pub use crate::sample::marker;
use crate::{EventLog, ExpectedVersion, Replicated, ReplicatedLog, StorageError};
/// The temporary directories the macros create, so a caller needs no
/// `tempfile` dependency of its own.
pub use tempfile;

pub mod blob;
pub mod compaction;

/// Generates one `#[test]` per conformance check for the log opened by
/// `$open: fn(&Path) -> L`, where `L` is a [`ReplicatedLog`].
#[macro_export]
macro_rules! event_log_conformance {
    ($open:path) => {
        $crate::event_log_conformance!(@tests $open;
            conflicts_name_versions_and_write_nothing,
            stream_versions_are_contiguous,
            global_sequence_is_gap_free,
            stream_reads_resume_at_a_global_sequence,
            many_concurrent_appenders,
            racing_exact_appends_have_one_winner,
            reopen_keeps_everything,
            invalid_appends_write_nothing,
            replicated_commits_reproduce_log_and_views,
            replicated_gaps_and_divergence_write_nothing,
            replicated_commits_it_cannot_read_back_are_refused,
        );
    };
    (@tests $open:path; $($check:ident,)*) => {
        $(
            #[test]
            fn $check() {
                let dir = $crate::conformance::tempfile::tempdir().unwrap();
                $crate::conformance::$check(dir.path(), &|p| Box::new($open(p)));
            }
        )*
    };
}

/// Opens a log in a directory.
pub type Open<'a> = &'a dyn Fn(&Path) -> Box<dyn EventLog>;

/// Opens a replicated log in a directory.
pub type OpenReplicated<'a> = &'a dyn Fn(&Path) -> Box<dyn ReplicatedLog>;

fn marker_of(event: &Option<Event>) -> String {
    match event.as_ref().and_then(|e| e.payload.as_ref()) {
        Some(Payload::RepositoryClosed(c)) => c.reason.clone(),
        other => panic!("unexpected payload {other:?}"),
    }
}

fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

/// A stale expected version fails with a conflict naming both versions and
/// writes nothing.
pub fn conflicts_name_versions_and_write_nothing(dir: &Path, open: Open<'_>) {
    let log = open(dir);
    let s = stream("repo/ns/a");
    let first = log
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![marker("a1")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!((first.first_seq(), first.stream_version()), (1, 1));

    let err = log
        .append(
            &s,
            ExpectedVersion::Exact(0),
            vec![marker("lost")],
            Metadata::default(),
        )
        .unwrap_err();
    match &err {
        StorageError::Conflict {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(
                (stream.as_str(), *expected, *actual),
                ("repo/ns/a", ExpectedVersion::Exact(0), 1)
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "stream repo/ns/a: expected version 0, found version 1"
    );
    let err = log
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![marker("lost")],
            Metadata::default(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream repo/ns/a: expected no stream, found version 1"
    );

    assert_eq!(log.last_seq().unwrap(), 1);
    assert_eq!(log.stream_version(&s).unwrap(), 1);
    assert_eq!(log.read_all(1, 100).unwrap().len(), 1);

    let second = log
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![marker("a2"), marker("a3")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(
        (
            second.first_seq(),
            second.last_seq(),
            second.stream_version()
        ),
        (2, 3, 3)
    );
    let texts: Vec<String> = log
        .read_stream(&s, 1, 100)
        .unwrap()
        .iter()
        .map(|e| marker_of(&e.event))
        .collect();
    assert_eq!(texts, ["a1", "a2", "a3"]);
}

/// Interleaved appends to several streams keep each stream's versions 1..n
/// in append order; reads from the middle start where asked.
pub fn stream_versions_are_contiguous(dir: &Path, open: Open<'_>) {
    let log = open(dir);
    let streams = [stream("repo/ns/a"), stream("repo/ns/b"), stream("other/c")];
    let mut expected: HashMap<&StreamId, Vec<String>> = HashMap::new();
    for round in 0..10 {
        for (i, s) in streams.iter().enumerate() {
            let events: Vec<Event> = (0..=i)
                .map(|k| marker(format!("{s}-{round}-{k}")))
                .collect();
            let texts = events.iter().map(|e| marker_of(&Some(e.clone())));
            expected.entry(s).or_default().extend(texts);
            log.append(s, ExpectedVersion::Any, events, Metadata::default())
                .unwrap();
        }
    }
    for s in &streams {
        let read = log.read_stream(s, 0, usize::MAX).unwrap();
        let versions: Vec<u64> = read.iter().map(|e| e.stream_version).collect();
        let want: Vec<u64> = (1..=expected[s].len() as u64).collect();
        assert_eq!(versions, want, "{s}");
        let texts: Vec<String> = read.iter().map(|e| marker_of(&e.event)).collect();
        assert_eq!(&texts, &expected[s]);
        assert!(read.iter().all(|e| e.stream == s.as_str()));
        assert_eq!(log.stream_version(s).unwrap(), expected[s].len() as u64);

        let tail = log.read_stream(s, 5, 3).unwrap();
        assert_eq!(
            tail.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            [5, 6, 7]
        );
    }
    assert_eq!(log.stream_version(&stream("repo/ns/none")).unwrap(), 0);
    assert!(log
        .read_stream(&stream("repo/ns/none"), 1, 10)
        .unwrap()
        .is_empty());
    // A stream id that is a prefix of another shares no events with it.
    log.append(
        &stream("repo/ns/ab"),
        ExpectedVersion::NoStream,
        vec![marker("ab")],
        Metadata::default(),
    )
    .unwrap();
    assert_eq!(
        log.stream_version(&stream("repo/ns/a")).unwrap(),
        expected[&streams[0]].len() as u64
    );
}

/// Sequence numbers are 1..=n with no gap, and windows read exactly.
pub fn global_sequence_is_gap_free(dir: &Path, open: Open<'_>) {
    let log = open(dir);
    assert_eq!(log.last_seq().unwrap(), 0);
    assert!(log.read_all(1, 10).unwrap().is_empty());
    let mut appended = Vec::new();
    for i in 0..50u64 {
        let s = stream(&format!("repo/ns/s{}", i % 7));
        let events = (0..(i % 3 + 1))
            .map(|k| marker(format!("{i}-{k}")))
            .collect();
        appended.extend(
            log.append(&s, ExpectedVersion::Any, events, Metadata::default())
                .unwrap()
                .envelopes,
        );
    }
    let all = log.read_all(0, usize::MAX).unwrap();
    assert_eq!(
        all, appended,
        "read_all returns exactly what the appends returned"
    );
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(log.last_seq().unwrap(), all.len() as u64);
    let window = log.read_all(10, 5).unwrap();
    assert_eq!(
        window.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [10, 11, 12, 13, 14]
    );
    assert!(log.read_all(all.len() as u64 + 1, 10).unwrap().is_empty());
    // Event ids are unique UUID v7s.
    let mut ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len());
}

/// [`EventLog::read_stream_from_seq`] returns the stream's events from the
/// first one at or after the global position, at most `limit` of them.
pub fn stream_reads_resume_at_a_global_sequence(dir: &Path, open: Open<'_>) {
    let log = open(dir);
    check_stream_reads_from_seq(&*log);
}

/// The checks of [`stream_reads_resume_at_a_global_sequence`] on an open
/// log (also run against [`EventLog`]'s default method).
pub fn check_stream_reads_from_seq(log: &dyn EventLog) {
    let (a, b) = (stream("repo/ns/a"), stream("repo/ns/b"));
    for i in 0..20 {
        let s = if i % 3 == 0 { &a } else { &b };
        log.append(
            s,
            ExpectedVersion::Any,
            vec![marker(format!("{i}"))],
            Metadata::default(),
        )
        .unwrap();
    }
    // a holds seqs 1, 4, 7, 10, 13, 16, 19.
    let seqs = |from, limit| -> Vec<u64> {
        log.read_stream_from_seq(&a, from, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs(0, 100), [1, 4, 7, 10, 13, 16, 19]);
    assert_eq!(seqs(1, 100), [1, 4, 7, 10, 13, 16, 19]);
    assert_eq!(seqs(2, 3), [4, 7, 10]);
    assert_eq!(seqs(5, 2), [7, 10]);
    assert_eq!(seqs(7, 1), [7]);
    assert_eq!(seqs(19, 10), [19]);
    assert_eq!(seqs(20, 10), Vec::<u64>::new());
    let read = log.read_stream_from_seq(&a, 8, 2).unwrap();
    assert_eq!(read, log.read_stream(&a, 4, 2).unwrap());
    assert!(log
        .read_stream_from_seq(&stream("repo/ns/none"), 1, 10)
        .unwrap()
        .is_empty());
}

/// Many threads appending at once: every acknowledged event is there once,
/// streams stay contiguous and in each appender's order, seqs gap-free.
pub fn many_concurrent_appenders(dir: &Path, open: Open<'_>) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 150;
    let log: Arc<dyn EventLog> = Arc::from(open(dir));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            thread::spawn(move || {
                let own = stream(&format!("repo/ns/w{w}"));
                let shared = stream("repo/ns/shared");
                for i in 0..APPENDS {
                    let version = log
                        .append(
                            &own,
                            ExpectedVersion::Exact(i as u64),
                            vec![marker(format!("{w}:{i}"))],
                            Metadata::default(),
                        )
                        .unwrap()
                        .stream_version();
                    assert_eq!(version, i as u64 + 1);
                    log.append(
                        &shared,
                        ExpectedVersion::Any,
                        vec![marker(format!("{w}:{i}"))],
                        Metadata::default(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total = (WRITERS * APPENDS * 2) as u64;
    assert_eq!(log.last_seq().unwrap(), total);
    let all = log.read_all(1, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    for w in 0..WRITERS {
        let own = log
            .read_stream(&stream(&format!("repo/ns/w{w}")), 1, usize::MAX)
            .unwrap();
        let texts: Vec<String> = own.iter().map(|e| marker_of(&e.event)).collect();
        assert_eq!(
            texts,
            (0..APPENDS).map(|i| format!("{w}:{i}")).collect::<Vec<_>>()
        );
    }
    let shared = log
        .read_stream(&stream("repo/ns/shared"), 1, usize::MAX)
        .unwrap();
    assert_eq!(shared.len(), WRITERS * APPENDS);
    assert_eq!(
        shared.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=(WRITERS * APPENDS) as u64).collect::<Vec<_>>()
    );
    // Each writer's events on the shared stream keep that writer's order.
    for w in 0..WRITERS {
        let mine: Vec<String> = shared
            .iter()
            .map(|e| marker_of(&e.event))
            .filter(|t| t.starts_with(&format!("{w}:")))
            .collect();
        assert_eq!(
            mine,
            (0..APPENDS).map(|i| format!("{w}:{i}")).collect::<Vec<_>>()
        );
    }
}

/// Of many appends racing with the same expected version, exactly one wins.
pub fn racing_exact_appends_have_one_winner(dir: &Path, open: Open<'_>) {
    let log: Arc<dyn EventLog> = Arc::from(open(dir));
    let s = stream("repo/ns/race");
    let results: Vec<Result<u64, StorageError>> = (0..16)
        .map(|i| {
            let log = log.clone();
            let s = s.clone();
            thread::spawn(move || {
                log.append(
                    &s,
                    ExpectedVersion::Exact(0),
                    vec![marker(format!("{i}"))],
                    Metadata::default(),
                )
                .map(|a| a.stream_version())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let wins = results.iter().filter(|r| matches!(r, Ok(1))).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StorageError::Conflict { actual: 1, .. })))
        .count();
    assert_eq!((wins, conflicts), (1, 15));
    assert_eq!(log.last_seq().unwrap(), 1);
}

/// Closing and reopening keeps every event; numbering continues.
pub fn reopen_keeps_everything(dir: &Path, open: Open<'_>) {
    let s = stream("repo/ns/a");
    let before = {
        let log = open(dir);
        log.append(
            &s,
            ExpectedVersion::NoStream,
            vec![marker("1"), marker("2")],
            Metadata::command("alice"),
        )
        .unwrap();
        log.append(
            &stream("repo/ns/b"),
            ExpectedVersion::NoStream,
            vec![marker("3")],
            Metadata::default(),
        )
        .unwrap();
        log.read_all(1, usize::MAX).unwrap()
    };
    let log = open(dir);
    assert_eq!(log.read_all(1, usize::MAX).unwrap(), before);
    assert_eq!(log.last_seq().unwrap(), 3);
    assert_eq!(before[0].principal, "alice");
    let next = log
        .append(
            &s,
            ExpectedVersion::Exact(2),
            vec![marker("4")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!((next.first_seq(), next.stream_version()), (4, 3));
}

/// Empty appends and events without payload are refused before anything is
/// written.
pub fn invalid_appends_write_nothing(dir: &Path, open: Open<'_>) {
    let log = open(dir);
    let s = stream("repo/ns/a");
    let err = log
        .append(&s, ExpectedVersion::Any, vec![], Metadata::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid append: no events to append");
    let err = log
        .append(
            &s,
            ExpectedVersion::Any,
            vec![marker("ok"), Event { payload: None }],
            Metadata::default(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "invalid append: event 1 has no payload");
    assert_eq!(log.last_seq().unwrap(), 0);
    assert_eq!(log.stream_version(&s).unwrap(), 0);
}

/// A repository registration: an event the default views fold into rows.
fn registered(namespace: &str, name: &str) -> Event {
    use cairn_events::v1::{RepositoryRegistered, RepositorySpec};
    cairn_events::envelope::event(Payload::RepositoryRegistered(RepositoryRegistered {
        spec: Some(RepositorySpec {
            namespace: namespace.into(),
            name: name.into(),
            r#type: "git".into(),
            ..Default::default()
        }),
    }))
}

/// Appends a varied history to `log` (several streams, repository events
/// the views fold, command metadata) and returns each append's envelopes:
/// the commits a replica receives.
fn replicated_history(log: &dyn EventLog) -> Vec<Vec<Envelope>> {
    let mut commits = Vec::new();
    for i in 0..12u32 {
        let repo = format!("r{}", i % 3);
        let s = StreamId::repository("ns", &repo).unwrap();
        let events = match i % 4 {
            0 => vec![registered("ns", &repo)],
            1 => vec![marker(format!("m{i}")), marker(format!("n{i}"))],
            2 => vec![registered("ns", &format!("{repo}x"))],
            _ => vec![marker(format!("k{i}"))],
        };
        let s = if i % 4 == 3 {
            stream(&format!("other/{repo}"))
        } else {
            s
        };
        let metadata = Metadata::command(format!("user{i}"));
        commits.push(
            log.append(&s, ExpectedVersion::Any, events, metadata)
                .unwrap()
                .envelopes,
        );
    }
    commits
}

/// Commits written by one log and applied, as they are, to another leave
/// both with byte-identical column families (log, index, meta, views);
/// applying them again is a no-op that writes nothing; a commit overlapping
/// what is applied writes only its new part.
pub fn replicated_commits_reproduce_log_and_views(dir: &Path, open: OpenReplicated<'_>) {
    let a = open(&dir.join("a"));
    let b = open(&dir.join("b"));
    let commits = replicated_history(&*a);
    let last = commits.last().unwrap().last().unwrap().seq;
    let mut expected_first = 1;
    for commit in &commits {
        let first = commit[0].seq;
        assert_eq!(first, expected_first);
        let last = commit.last().unwrap().seq;
        assert_eq!(
            b.apply_replicated(commit.clone()).unwrap(),
            Replicated::Applied {
                first_seq: first,
                last_seq: last
            }
        );
        expected_first = last + 1;
    }
    let dump_a = a.state_dump().unwrap();
    let dump_b = b.state_dump().unwrap();
    assert!(
        dump_a
            .iter()
            .any(|(cf, rows)| cf.starts_with("view_") && !rows.is_empty()),
        "the history leaves view rows to compare"
    );
    assert_eq!(dump_a, dump_b, "replica differs from the original");
    assert_eq!(b.last_seq().unwrap(), last);
    assert_eq!(
        b.read_all(1, usize::MAX).unwrap(),
        a.read_all(1, usize::MAX).unwrap()
    );

    // Idempotent: every commit again, and all of them as one.
    for commit in &commits {
        assert_eq!(
            b.apply_replicated(commit.clone()).unwrap(),
            Replicated::AlreadyApplied { last_seq: last }
        );
    }
    let all: Vec<Envelope> = commits.iter().flatten().cloned().collect();
    assert_eq!(
        b.apply_replicated(all).unwrap(),
        Replicated::AlreadyApplied { last_seq: last }
    );
    assert_eq!(
        b.state_dump().unwrap(),
        dump_a,
        "a re-applied commit wrote something"
    );

    // An overlapping commit (last applied event + two new ones) writes the new part.
    let more = a
        .append(
            &stream("repo/ns/r0"),
            ExpectedVersion::Any,
            vec![marker("x1"), marker("x2")],
            Metadata::default(),
        )
        .unwrap()
        .envelopes;
    let mut overlapping = vec![commits.last().unwrap().last().unwrap().clone()];
    overlapping.extend(more);
    assert_eq!(
        b.apply_replicated(overlapping).unwrap(),
        Replicated::Applied {
            first_seq: last + 1,
            last_seq: last + 2
        }
    );
    assert_eq!(b.state_dump().unwrap(), a.state_dump().unwrap());
    // Appends continue on the replica where the original's numbering ended.
    let next = b
        .append(
            &stream("repo/ns/r0"),
            ExpectedVersion::Any,
            vec![marker("local")],
            Metadata::default(),
        )
        .unwrap();
    assert_eq!(next.first_seq(), last + 3);
}

/// A commit that skips sequence numbers or stream versions, or that
/// contradicts what is stored, fails naming the numbers and writes nothing.
pub fn replicated_gaps_and_divergence_write_nothing(dir: &Path, open: OpenReplicated<'_>) {
    let a = open(&dir.join("a"));
    let b = open(&dir.join("b"));
    let commits = replicated_history(&*a);
    b.apply_replicated(commits[0].clone()).unwrap();
    b.apply_replicated(commits[1].clone()).unwrap();
    let applied = b.last_seq().unwrap();
    assert_eq!(applied, 3);
    let before = b.state_dump().unwrap();

    // A missing commit: seq gap.
    let err = b.apply_replicated(commits[3].clone()).unwrap_err();
    match &err {
        StorageError::ReplicationGap {
            what,
            expected,
            found,
        } => assert_eq!(
            (what.as_str(), *expected, *found),
            ("seq", 4, commits[3][0].seq)
        ),
        other => panic!("expected a replication gap, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "replicated commit does not continue the log: seq: expected 4, found {}",
            commits[3][0].seq
        )
    );

    // The next seq, but a stream version that skips one.
    let mut skipping = commits[2].clone();
    skipping[0].stream_version += 1;
    let stream_name = skipping[0].stream.clone();
    let want = skipping[0].stream_version - 1;
    let err = b.apply_replicated(skipping.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "replicated commit does not continue the log: stream {stream_name} version: expected {want}, found {}",
            want + 1
        )
    );
    assert!(matches!(
        err,
        StorageError::ReplicationGap { expected, found, .. } if expected == want && found == want + 1
    ));

    // An event at an applied seq that differs from the stored one.
    let mut diverged = commits[1].clone();
    diverged[0].event_id = "someone-else".into();
    let err = b.apply_replicated(diverged).unwrap_err();
    assert!(
        matches!(err, StorageError::ReplicaDiverged { seq } if seq == commits[1][0].seq),
        "{err:?}"
    );

    // Malformed commits.
    let err = b.apply_replicated(Vec::new()).unwrap_err();
    assert_eq!(err.to_string(), "invalid replicated commit: no events");
    let mut holes = commits[2].clone();
    holes.extend(commits[4].clone());
    let err = b.apply_replicated(holes).unwrap_err();
    assert!(matches!(err, StorageError::InvalidReplicated(_)), "{err:?}");

    assert_eq!(
        b.state_dump().unwrap(),
        before,
        "a refused commit wrote something"
    );
    assert_eq!(b.last_seq().unwrap(), applied);
    // The right commit still applies after all that.
    assert!(matches!(
        b.apply_replicated(commits[2].clone()).unwrap(),
        Replicated::Applied { first_seq: 4, .. }
    ));
}

/// A replicated commit the log could not read back, or that is larger than
/// the log's limits, is refused with [`StorageError::InvalidReplicated`]
/// naming what is wrong, writes nothing, and never stops the writer:
/// a schema version `decode` refuses, an event without a payload, an event
/// larger than [`ReplicatedLog::event_max_bytes`], more envelopes than
/// [`ReplicatedLog::commit_max_events`], sequence numbers at `u64::MAX`
/// (whose successor does not exist).
pub fn replicated_commits_it_cannot_read_back_are_refused(dir: &Path, open: OpenReplicated<'_>) {
    let a = open(&dir.join("a"));
    let b = open(&dir.join("b"));
    let commits = replicated_history(&*a);
    b.apply_replicated(commits[0].clone()).unwrap();
    let applied = b.last_seq().unwrap();
    assert_eq!(applied, 1);
    let before = b.state_dump().unwrap();
    let next = commits[1].clone();
    let seq = next[0].seq;
    assert_eq!(seq, 2);
    let refused = |commit: Vec<Envelope>| match b.apply_replicated(commit) {
        Err(StorageError::InvalidReplicated(why)) => why,
        other => panic!("expected an invalid replicated commit, got {other:?}"),
    };

    // A schema version this build does not understand.
    let mut future = next.clone();
    future[0].schema_version = cairn_events::SCHEMA_VERSION + 1;
    assert_eq!(
        refused(future),
        format!(
            "event at seq {seq}: unsupported schema version {}, this build understands up to {}",
            cairn_events::SCHEMA_VERSION + 1,
            cairn_events::SCHEMA_VERSION
        )
    );
    // Version 0 (an unset field) is refused the same way.
    let mut unset = next.clone();
    unset[1].schema_version = 0;
    assert_eq!(
        refused(unset),
        format!(
            "event at seq {}: unsupported schema version 0, this build understands up to {}",
            seq + 1,
            cairn_events::SCHEMA_VERSION
        )
    );
    // No payload.
    let mut empty = next.clone();
    empty[0].event = Some(Event { payload: None });
    let why = refused(empty);
    assert!(
        why.starts_with(&format!("event at seq {seq}: ")) && why.contains("payload"),
        "{why}"
    );
    // An event larger than the log accepts.
    let max = b.event_max_bytes();
    let mut large = next.clone();
    large[0].event = Some(marker("x".repeat(max)));
    let size = prost::Message::encoded_len(large[0].event.as_ref().unwrap());
    assert!(size > max);
    assert_eq!(
        refused(large),
        format!("event at seq {seq} is {size} bytes, at most {max} allowed")
    );
    // Sequence number or stream version 0: both start at 1.
    let mut zero_seq = vec![next[0].clone()];
    zero_seq[0].seq = 0;
    assert_eq!(
        refused(zero_seq),
        format!(
            "event 0 has seq 0 and stream version {}; both start at 1",
            next[0].stream_version
        )
    );
    let mut zero_version = next.clone();
    zero_version[1].stream_version = 0;
    assert_eq!(
        refused(zero_version),
        format!(
            "event 1 has seq {} and stream version 0; both start at 1",
            seq + 1
        )
    );
    // A stream name the log would refuse on append.
    let mut bad_stream = next.clone();
    bad_stream[0].stream = "repo/ns/\u{7}".into();
    assert_eq!(
        refused(bad_stream),
        format!(
            "event at seq {seq}: invalid stream id \"repo/ns/\\u{{7}}\": \
             must not contain control characters"
        )
    );
    // Ids, principal and trace context travel in NATS headers (the event
    // id is the Nats-Msg-Id): the checks appends get, plus an event id.
    let mut no_id = next.clone();
    no_id[0].event_id = String::new();
    assert_eq!(
        refused(no_id),
        format!("event at seq {seq}: event id is empty")
    );
    let long = "x".repeat(crate::store::METADATA_MAX_BYTES + 1);
    type Field = fn(&mut Envelope) -> &mut String;
    let fields: [(&str, Field); 6] = [
        ("event id", |e| &mut e.event_id),
        ("correlation id", |e| &mut e.correlation_id),
        ("causation id", |e| &mut e.causation_id),
        ("principal", |e| &mut e.principal),
        ("traceparent", |e| {
            &mut e.trace.get_or_insert_with(Default::default).traceparent
        }),
        ("tracestate", |e| {
            &mut e.trace.get_or_insert_with(Default::default).tracestate
        }),
    ];
    for (name, field) in fields {
        let mut control = next.clone();
        *field(&mut control[1]) = "a\nb".into();
        assert_eq!(
            refused(control),
            format!(
                "event at seq {}: {name} contains control characters",
                seq + 1
            )
        );
        let mut oversized = next.clone();
        *field(&mut oversized[1]) = long.clone();
        assert_eq!(
            refused(oversized),
            format!(
                "event at seq {}: {name} is {} bytes, at most {} allowed",
                seq + 1,
                long.len(),
                crate::store::METADATA_MAX_BYTES
            )
        );
    }
    // More envelopes than one commit may hold (refused before any other
    // check, so they need not be valid).
    let limit = b.commit_max_events();
    let many: Vec<Envelope> = (0..=limit as u64)
        .map(|i| Envelope {
            seq: seq + i,
            ..next[0].clone()
        })
        .collect();
    assert_eq!(
        refused(many),
        format!(
            "{} events in one commit, at most {limit} allowed",
            limit + 1
        )
    );
    // Sequence numbers at the end of u64: no successor, no panic.
    let mut overflow = next.clone();
    overflow[0].seq = u64::MAX;
    overflow[1].seq = 0;
    assert_eq!(
        refused(overflow),
        format!(
            "seq 0 follows seq {}: a commit's events are consecutive",
            u64::MAX
        )
    );
    let mut last = vec![next[0].clone()];
    last[0].seq = u64::MAX;
    let err = b.apply_replicated(last).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::ReplicationGap {
                expected: 2,
                found: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );

    assert_eq!(
        b.state_dump().unwrap(),
        before,
        "a refused commit wrote something"
    );
    assert_eq!(b.last_seq().unwrap(), applied);
    // The writer still works: the right commit applies.
    assert_eq!(
        b.apply_replicated(next.clone()).unwrap(),
        Replicated::Applied {
            first_seq: seq,
            last_seq: next.last().unwrap().seq
        }
    );
}
