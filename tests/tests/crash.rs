//! Crash safety: a child appends in a loop and reports each acknowledged
//! event; it is killed with SIGKILL at a random moment, many times. After
//! each kill the store reopens with every acknowledged event present, the
//! log invariants hold, and rebuilding the views gives byte-identical views.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use cairn_events::StreamId;
use cairn_storage::{views::default_views, EventLog, Store, StoreConfig};
use cairn_tests::{read_line_matching, ChildGuard, TestDir};
use rand::Rng;

const KILLS: u64 = 25;

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = TestDir::new();
    let path = dir.path().join("store");
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut rng = rand::rng();
    for run in 0..KILLS {
        // Killed on drop: a failing run leaves no appender behind.
        let mut child = ChildGuard::spawn(
            Command::new(env!("CARGO_BIN_EXE_cairn-crash-appender"))
                .arg(&path)
                .arg(run.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (_, lines) =
            read_line_matching(stdout, Duration::from_secs(30), |l| l == "ready").unwrap();
        // A random moment: after a random number of acknowledgements.
        let wait_for = rng.random_range(1..400);
        let mut seen = 0;
        while seen < wait_for {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .expect("appender stalled");
            let mut parts = line.split(' ');
            assert_eq!(parts.next(), Some("acked"), "{line}");
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            let id = parts.next().unwrap().to_owned();
            assert!(
                acked.insert(seq, id).is_none(),
                "seq {seq} acknowledged twice"
            );
            seen += 1;
        }
        child.signal(nix::sys::signal::Signal::SIGKILL);
        child.0.wait().unwrap();
        // Acks printed before the kill landed are acknowledged too.
        // (A line cut short by the kill carries no complete ack: skip it.)
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            let parts: Vec<&str> = line.split(' ').collect();
            if let ["acked", seq, id] = parts[..] {
                if id.len() == 36 {
                    acked.insert(seq.parse().unwrap(), id.to_owned());
                }
            }
        }

        let store =
            Store::open(StoreConfig::new(&path), default_views()).expect("reopen after SIGKILL");
        let all = store.read_all(1, usize::MAX).unwrap();
        // Gap-free global sequence.
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=all.len() as u64).collect::<Vec<_>>()
        );
        assert_eq!(store.last_seq().unwrap(), all.len() as u64);
        // Every acknowledged event is there, with the id it was acked with.
        for (seq, id) in &acked {
            let env = all
                .get(*seq as usize - 1)
                .unwrap_or_else(|| panic!("run {run}: acked seq {seq} lost"));
            assert_eq!(
                &env.event_id, id,
                "run {run}: seq {seq} holds another event"
            );
        }
        // Contiguous stream versions.
        let mut streams: Vec<&str> = all.iter().map(|e| e.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        for s in streams {
            let events = store
                .read_stream(&StreamId::new(s).unwrap(), 1, usize::MAX)
                .unwrap();
            assert_eq!(
                events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
                (1..=events.len() as u64).collect::<Vec<_>>(),
                "{s}"
            );
        }
        // Views after recovery == views rebuilt from the log, byte for byte.
        let live: Vec<_> = store
            .view_names()
            .iter()
            .map(|v| store.view_dump(v).unwrap())
            .collect();
        assert_eq!(live[0].checkpoint, all.len() as u64);
        store.rebuild(&[], None).unwrap();
        let rebuilt: Vec<_> = store
            .view_names()
            .iter()
            .map(|v| store.view_dump(v).unwrap())
            .collect();
        assert_eq!(live, rebuilt, "run {run}: rebuilt views differ");
        assert!(
            live[0].rows.iter().any(|(key, _)| key == b"crash/anchor"),
            "run {run}: the repositories view lost the anchor"
        );
    }
    assert!(
        acked.len() as u64 >= KILLS,
        "the appender acknowledged too little to mean anything"
    );
}
