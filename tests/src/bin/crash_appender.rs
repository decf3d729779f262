//! Child process for the crash test: opens a store and appends in a loop
//! from several threads, printing `acked <seq> <event id>` for every event
//! of every acknowledged append, until it is killed.
//!
//! Usage: `cairn-crash-appender <store dir> <run number>`

use std::{io::Write, path::PathBuf, sync::Arc};

use cairn_events::{envelope::Metadata, StreamId};
use cairn_storage::{views::default_views, EventLog, ExpectedVersion, Store, StoreConfig};
use cairn_tests::events;

const WRITERS: usize = 4;
const REPOS: usize = 6;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("store dir"));
    let run: u64 = args
        .next()
        .and_then(|r| r.parse().ok())
        .expect("run number");
    let store = Store::open(StoreConfig::new(path), default_views()).expect("open store");
    // One repository that is never closed, so the view is never empty.
    let anchor = StreamId::repository("crash", "anchor").expect("stream");
    match store.append(
        &anchor,
        ExpectedVersion::NoStream,
        vec![events::registered("crash", "anchor")],
        Metadata::default(),
    ) {
        Ok(_) | Err(cairn_storage::StorageError::Conflict { .. }) => {}
        Err(e) => panic!("anchor append failed: {e}"),
    }
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    println!("ready");
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let repo = format!("r{}", (w + i as usize) % REPOS);
                    let stream = StreamId::repository("crash", &repo).expect("stream");
                    // Cycle through register → change → close so the
                    // repositories view keeps changing.
                    let version = store.stream_version(&stream).expect("version");
                    let (event, expected) = match version % 3 {
                        0 => (
                            events::registered("crash", &repo),
                            ExpectedVersion::Exact(version),
                        ),
                        1 => (
                            events::spec_changed("crash", &repo, &format!("b{run}-{i}")),
                            ExpectedVersion::Exact(version),
                        ),
                        _ => (
                            events::closed(&format!("run {run} writer {w} #{i}")),
                            ExpectedVersion::Exact(version),
                        ),
                    };
                    let batch = if i % 5 == 0 {
                        vec![event, events::closed("extra")]
                    } else {
                        vec![event]
                    };
                    match store.append(
                        &stream,
                        expected,
                        batch,
                        Metadata::command(format!("writer-{w}")),
                    ) {
                        Ok(appended) => {
                            let mut out = stdout.lock().expect("stdout");
                            for env in appended.envelopes {
                                writeln!(out, "acked {} {}", env.seq, env.event_id).expect("write");
                            }
                            out.flush().expect("flush");
                        }
                        // Another writer moved the stream first: try again.
                        Err(cairn_storage::StorageError::Conflict { .. }) => {}
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
