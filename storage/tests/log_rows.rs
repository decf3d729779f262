//! The log read with its stored rows: [`Store::read_log_events`] agrees
//! with `read_all` (same events, same gaps skipped, same corruption
//! reported) and hands out each row byte for byte — the envelope's
//! encoding, on every path that writes the log (appends, replicated and
//! sequenced commits); and [`Store::recent_log_rows`] serves the rows
//! just committed from memory, or nothing when it does not hold what is
//! asked (not turned on, pushed out, compacted, reopened), so the caller
//! reads RocksDB.

use std::{path::Path, sync::Arc};

use cairn_events::{
    envelope::{self, Metadata},
    v1::Envelope,
    StreamId,
};
use cairn_storage::{
    conformance::compaction::LastPerStream, sample::marker, store::RECENT_LOG_MAX_EVENTS,
    views::default_views, Column, EventLog, ExpectedVersion, ReplicatedLog, SequencedCommit, Store,
    StoreConfig,
};

fn open(path: &Path) -> Store {
    Store::open(StoreConfig::new(path), default_views()).unwrap()
}

/// Appends `count` events to `stream`, at most 1000 per append.
fn append(store: &Store, stream: &str, count: usize) -> Vec<Envelope> {
    let stream = StreamId::new(stream).unwrap();
    let mut out = Vec::new();
    let mut left = count;
    while left > 0 {
        let n = left.min(1000);
        let events = (0..n).map(|i| marker(format!("{stream} {i}"))).collect();
        let appended = store
            .append(
                &stream,
                ExpectedVersion::Any,
                events,
                Metadata::command("tester"),
            )
            .unwrap();
        out.extend(appended.envelopes);
        left -= n;
    }
    out
}

/// The `log` column family's rows, as RocksDB holds them: (seq, bytes).
fn raw_log(store: &Store) -> Vec<(u64, Vec<u8>)> {
    let dump = store.state_dump().unwrap();
    let (_, rows) = dump
        .into_iter()
        .find(|(name, _)| name == Column::Log.name())
        .unwrap();
    rows.into_iter()
        .map(|(key, value)| (u64::from_be_bytes(key.try_into().unwrap()), value))
        .collect()
}

/// Asserts that `read_log_events` and `read_all` agree from every `from`
/// and at every `limit` tried, and that each row is the stored one and the
/// encoding of its envelope.
fn assert_reads_agree(store: &Store) {
    let raw = raw_log(store);
    let last = store.last_seq().unwrap();
    for from in [0, 1, 2, last / 2, last, last + 1] {
        for limit in [0, 1, 3, usize::MAX] {
            let events = store.read_log_events(from, limit).unwrap();
            let envelopes: Vec<Envelope> = events.iter().map(|e| e.envelope.clone()).collect();
            assert_eq!(
                envelopes,
                store.read_all(from, limit).unwrap(),
                "from {from}, limit {limit}"
            );
            for event in &events {
                let seq = event.envelope.seq;
                let stored = &raw.iter().find(|(s, _)| *s == seq).unwrap().1;
                assert_eq!(&event.bytes[..], &stored[..], "seq {seq}: the stored row");
                assert_eq!(
                    &event.bytes[..],
                    &envelope::encode(&event.envelope)[..],
                    "seq {seq}: the row is the envelope's encoding"
                );
            }
        }
    }
}

#[test]
fn read_log_events_agrees_with_read_all_on_appended_replicated_and_sequenced_logs() {
    let dir = tempfile::tempdir().unwrap();
    let primary = open(&dir.path().join("primary"));
    append(&primary, "repo/ns/a", 3);
    append(&primary, "test/b", 2);
    append(&primary, "repo/ns/a", 4);
    assert_eq!(primary.last_seq().unwrap(), 9);
    assert_reads_agree(&primary);

    // A replica applying the primary's commits writes the same rows.
    let replica = open(&dir.path().join("replica"));
    let all = primary.read_all(1, usize::MAX).unwrap();
    replica.apply_replicated(all[..4].to_vec()).unwrap();
    replica.apply_replicated(all[4..].to_vec()).unwrap();
    assert_reads_agree(&replica);
    assert_eq!(raw_log(&replica), raw_log(&primary));

    // So does a node numbering the commits of a replicated order.
    let sequenced = open(&dir.path().join("sequenced"));
    let commits = vec![
        SequencedCommit {
            position: 1,
            envelopes: all[..5].iter().cloned().map(unnumbered).collect(),
            ..Default::default()
        },
        SequencedCommit {
            position: 2,
            envelopes: all[5..].iter().cloned().map(unnumbered).collect(),
            ..Default::default()
        },
    ];
    futures::executor::block_on(sequenced.apply_sequenced_async(commits)).unwrap();
    assert_reads_agree(&sequenced);
    assert_eq!(raw_log(&sequenced), raw_log(&primary));
}

/// An envelope as a replicated order carries it: `seq` left 0.
fn unnumbered(mut env: Envelope) -> Envelope {
    env.seq = 0;
    env
}

/// Compacts every stream under `kv/` to its last event.
const KV_CLASS: LastPerStream = LastPerStream("kv/");

#[test]
fn read_log_events_skips_compacted_seqs_and_reports_other_gaps_as_read_all_does() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        append(&store, "test/a", 2); // 1, 2
        append(&store, "kv/x", 3); // 3, 4, 5: 3 and 4 compacted away
        append(&store, "test/a", 2); // 6, 7
        store
            .compact(Arc::new(KV_CLASS), std::time::SystemTime::now())
            .unwrap();
        let seqs: Vec<u64> = store
            .read_log_events(1, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.envelope.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 5, 6, 7]);
        assert_reads_agree(&store);
    }
    // Seq 9 removed behind the store's back: past what compaction covers
    // (seq 7), so a gap neither read accepts.
    {
        let store = open(dir.path());
        append(&store, "test/a", 3); // 8, 9, 10
    }
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), &cfs).unwrap();
        let log = db.cf_handle(Column::Log.name()).unwrap();
        db.delete_cf(log, 9u64.to_be_bytes()).unwrap();
    }
    let store = open(dir.path());
    let want = "corrupt store: log gap: expected seq 9, found Some(10)";
    assert_eq!(store.read_all(1, 10).unwrap_err().to_string(), want);
    assert_eq!(store.read_log_events(1, 10).unwrap_err().to_string(), want);
    // Up to the gap, both read.
    assert_eq!(store.read_log_events(5, 4).unwrap().len(), 4);
    assert_eq!(store.read_all(5, 4).unwrap().len(), 4);
}

/// (seq, bytes) of rows, to compare memory with RocksDB.
fn rows_of(rows: &[cairn_storage::LogRow]) -> Vec<(u64, Vec<u8>)> {
    rows.iter().map(|r| (r.seq, r.bytes.to_vec())).collect()
}

fn read_rows(store: &Store, from: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
    store
        .read_log_events(from, limit)
        .unwrap()
        .iter()
        .map(|e| (e.envelope.seq, e.bytes.to_vec()))
        .collect()
}

#[test]
fn recent_log_rows_serve_the_last_commits_and_nothing_they_do_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        append(&store, "test/a", 2);
        assert_eq!(store.recent_log_rows(1, 10), None, "not turned on");
        store.retain_recent_log_rows();
        assert_eq!(store.recent_log_rows(1, 10), None, "committed before");
        append(&store, "test/a", 3); // 3..=5
        append(&store, "kv/x", 2); // 6, 7
        let recent = store.recent_log_rows(3, 10).unwrap();
        assert_eq!(rows_of(&recent), read_rows(&store, 3, 10));
        assert_eq!(rows_of(&recent).len(), 5);
        let recent = store.recent_log_rows(4, 2).unwrap();
        assert_eq!(rows_of(&recent), read_rows(&store, 4, 2));
        assert_eq!(store.recent_log_rows(2, 10), None, "before the first held");
        assert_eq!(store.recent_log_rows(8, 10), None, "not committed yet");
        let stats = store.recent_log_stats();
        assert_eq!((stats.served_events, stats.events), (7, 5));

        // Compaction may remove rows it holds: it holds none after.
        store
            .compact(Arc::new(KV_CLASS), std::time::SystemTime::now())
            .unwrap();
        assert_eq!(store.recent_log_rows(3, 10), None);
        assert_eq!(
            store.recent_log_rows(6, 10),
            None,
            "seq 6 is compacted away"
        );
        append(&store, "test/a", 1); // 8
        assert_eq!(
            rows_of(&store.recent_log_rows(8, 10).unwrap()),
            read_rows(&store, 8, 10)
        );

        // More rows than it holds: the oldest are pushed out.
        append(&store, "test/a", RECENT_LOG_MAX_EVENTS + 10); // 9..
        let last = store.last_seq().unwrap();
        let first_held = last - RECENT_LOG_MAX_EVENTS as u64 + 1;
        assert_eq!(store.recent_log_rows(8, 10), None);
        assert_eq!(store.recent_log_rows(first_held - 1, 10), None);
        assert_eq!(
            rows_of(&store.recent_log_rows(first_held, usize::MAX).unwrap()),
            read_rows(&store, first_held, usize::MAX)
        );
    }
    // A reopened store starts empty, even once turned on again.
    let store = open(dir.path());
    store.retain_recent_log_rows();
    let last = store.last_seq().unwrap();
    assert_eq!(store.recent_log_rows(last, 10), None);
}

#[test]
fn recent_log_rows_hold_replicated_commits_too() {
    let dir = tempfile::tempdir().unwrap();
    let primary = open(&dir.path().join("primary"));
    append(&primary, "test/a", 6);
    let all = primary.read_all(1, usize::MAX).unwrap();
    let replica = open(&dir.path().join("replica"));
    replica.retain_recent_log_rows();
    replica.apply_replicated(all[..2].to_vec()).unwrap();
    // A commit whose first events the replica holds already: only the
    // fresh ones are written, and kept.
    replica.apply_replicated(all[1..].to_vec()).unwrap();
    assert_eq!(
        rows_of(&replica.recent_log_rows(1, usize::MAX).unwrap()),
        read_rows(&primary, 1, usize::MAX)
    );
}
