//! The conformance suite every [`EventLog`] implementation must pass
//! (model: quickwit's `metastore_test_suite!`).
//!
//! Use [`event_log_conformance!`](crate::event_log_conformance) with a
//! function that opens a log in a directory; each check becomes a `#[test]`.
//! Opening the same directory twice must give the same log (the reopen check).

use std::{collections::HashMap, path::Path, sync::Arc, thread};

use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, Event, RepositoryClosed},
    StreamId,
};

use crate::{EventLog, ExpectedVersion, StorageError};

/// Generates one `#[test]` per conformance check for the log opened by
/// `$open: fn(&Path) -> L`.
#[macro_export]
macro_rules! event_log_conformance {
    ($open:path) => {
        $crate::event_log_conformance!(@tests $open;
            conflicts_name_versions_and_write_nothing,
            stream_versions_are_contiguous,
            global_sequence_is_gap_free,
            many_concurrent_appenders,
            racing_exact_appends_have_one_winner,
            reopen_keeps_everything,
            invalid_appends_write_nothing,
        );
    };
    (@tests $open:path; $($check:ident,)*) => {
        $(
            #[test]
            fn $check() {
                let dir = ::tempfile::tempdir().unwrap();
                $crate::conformance::$check(dir.path(), &|p| Box::new($open(p)));
            }
        )*
    };
}

/// Opens a log in a directory.
pub type Open<'a> = &'a dyn Fn(&Path) -> Box<dyn EventLog>;

/// A small event whose `reason` identifies it.
pub fn marker(text: impl Into<String>) -> Event {
    event(Payload::RepositoryClosed(RepositoryClosed {
        reason: text.into(),
    }))
}

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
