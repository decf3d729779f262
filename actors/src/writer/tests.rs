//! The shell with a toy domain on a real store: a counter whose events add
//! numbers (carried as `SyncStarted.trigger`, which no view folds for a
//! stream without a repository row).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use cairn_events::{
    envelope::event,
    v1::{event::Payload, SyncStarted},
};
use cairn_storage::{views::default_views, EventLog, Store, StoreConfig};

use super::*;

#[derive(Debug)]
struct Counter;

#[derive(Debug, Clone)]
struct Total {
    stream: StreamId,
    version: u64,
    total: u64,
}

#[derive(Debug)]
struct Env {
    store: Store,
}

/// How many tracked commands run now, and the most that ever ran at once
/// (shared between writers).
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a command waits for another to meet it.
const MEET_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Add {
    /// Add these numbers, one event each, cut as told.
    Numbers(Vec<u64>, Chunking),
    /// Refused by the decision: nothing appended.
    Refused,
    /// Panics in its prepare phase.
    Panics,
    /// Adds this number, counted by the gauge from its prepare phase until
    /// its event is appended and folded.
    Tracked(Arc<Gauge>, u64),
    /// Counted by the gauge like `Tracked`; in its prepare phase tells the
    /// other side it runs, then waits up to [`MEET_DEADLINE`] to hear the
    /// other side run too. Answers "met" or why not.
    Meet(Arc<Gauge>, mpsc::Sender<()>, mpsc::Receiver<()>),
    /// Answers the name of the span its prepare phase runs in, and its
    /// parent's.
    Spans,
    /// Appends each number pipelined, as if for commands of these
    /// principals (`None`: an event without payload, refused by the
    /// store); answers each outcome (`v<version>` or the error) and the
    /// total after.
    Pipelined(Vec<(Option<u64>, &'static str)>),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum CounterError {
    #[error("refused")]
    Refused,
    #[error("writer: {0}")]
    Writer(String),
}

impl From<WriterError> for CounterError {
    fn from(e: WriterError) -> Self {
        CounterError::Writer(ServiceError::from(e).to_string())
    }
}

fn number(e: &Event) -> u64 {
    match &e.payload {
        Some(Payload::SyncStarted(s)) => s.trigger.parse().unwrap(),
        _ => 0,
    }
}

impl StreamDomain for Counter {
    type State = Total;
    type Command = Add;
    type Event = Event;
    type Reply = String;
    type Error = CounterError;
    type Env = Env;
    const NAME: &'static str = "counter";

    fn store(env: &Env) -> &dyn cairn_storage::AsyncAppend {
        &env.store
    }
    fn stream(state: &Total) -> &StreamId {
        &state.stream
    }
    fn version(state: &Total) -> u64 {
        state.version
    }
    fn fold(state: &mut Total, event: &Event, version: u64) {
        state.version = version;
        state.total += number(event);
    }

    fn run(
        session: &mut Session<Self>,
        command: Add,
    ) -> BoxFuture<'_, Result<String, CounterError>> {
        Box::pin(async move {
            if let Add::Pipelined(appends) = command {
                let appends = appends
                    .into_iter()
                    .map(|(n, principal)| {
                        let e = match n {
                            Some(n) => event(Payload::SyncStarted(SyncStarted {
                                trigger: n.to_string(),
                            })),
                            None => Event { payload: None },
                        };
                        (vec![e], Metadata::command(principal).normalized())
                    })
                    .collect();
                let outcomes: Vec<String> = session
                    .append_pipelined(appends)
                    .await
                    .into_iter()
                    .map(|o| match o {
                        Ok(a) => format!("v{}", a.stream_version()),
                        Err(e) => ServiceError::from(e).to_string(),
                    })
                    .collect();
                return Ok(format!(
                    "{} total {}",
                    outcomes.join(", "),
                    session.state().total
                ));
            }
            let chunking = match &command {
                Add::Numbers(_, chunking) => *chunking,
                _ => Chunking::Whole,
            };
            let gauge = match &command {
                Add::Tracked(gauge, _) | Add::Meet(gauge, ..) => Some(gauge.clone()),
                _ => None,
            };
            let decided = session
                .decide(
                    "add",
                    chunking,
                    |_: &Env, _: &Total| {
                        Ok(match command {
                            Add::Numbers(numbers, _) => (numbers, String::new()),
                            Add::Refused => return Err(CounterError::Refused),
                            Add::Panics => panic!("a bug"),
                            Add::Tracked(gauge, n) => {
                                gauge.enter();
                                (vec![n], String::new())
                            }
                            Add::Meet(gauge, tell, hear) => {
                                gauge.enter();
                                let told = tell.send(());
                                let heard = hear.recv_timeout(MEET_DEADLINE);
                                let answer = match (told, heard) {
                                    (Ok(()), Ok(())) => "met".to_owned(),
                                    (told, heard) => format!("{told:?} {heard:?}"),
                                };
                                (Vec::new(), answer)
                            }
                            Add::Spans => (Vec::new(), span_names()),
                            Add::Pipelined(_) => (Vec::new(), String::new()),
                        })
                    },
                    |_, (numbers, answer)| {
                        let events = numbers
                            .into_iter()
                            .map(|n| {
                                event(Payload::SyncStarted(SyncStarted {
                                    trigger: n.to_string(),
                                }))
                            })
                            .collect();
                        Ok((events, answer))
                    },
                )
                .await;
            if let Some(gauge) = gauge {
                gauge.leave();
            }
            decided.map(|answer| {
                if answer.is_empty() {
                    session.state().total.to_string()
                } else {
                    answer
                }
            })
        })
    }
}

/// `"<current span> < <its parent> < …"`, from the registry.
fn span_names() -> String {
    use tracing_subscriber::registry::{LookupSpan, Registry};
    let Some(id) = tracing::Span::current().id() else {
        return "no span".into();
    };
    tracing::dispatcher::get_default(|d| {
        let registry = d.downcast_ref::<Registry>().expect("a registry");
        let span = registry.span(&id).expect("the span");
        span.scope()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(" < ")
    })
}

fn store(dir: &std::path::Path, append_max_events: usize) -> Store {
    let mut config = StoreConfig::new(dir);
    config.append_max_events = append_max_events;
    Store::open(config, default_views()).unwrap()
}

fn writer(store: &Store, stream: &str) -> Addr<StreamWriter<Counter>> {
    let env = Arc::new(Env {
        store: store.clone(),
    });
    let state = Total {
        stream: StreamId::new(stream).unwrap(),
        version: 0,
        total: 0,
    };
    StreamWriter::<Counter>::new(state, env).start()
}

async fn send(addr: &Addr<StreamWriter<Counter>>, command: Add) -> Result<String, CounterError> {
    addr.send(Execute {
        command,
        metadata: Metadata::command("test").normalized(),
        span: tracing::Span::none(),
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn given_a_state_when_a_command_decides_events_then_they_are_appended_at_its_version_and_folded(
) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let addr = writer(&store, "test/a");
    assert_eq!(
        send(&addr, Add::Numbers(vec![1, 2, 3], Chunking::Whole)).await,
        Ok("6".into())
    );
    assert_eq!(
        send(&addr, Add::Numbers(vec![10], Chunking::Whole)).await,
        Ok("16".into())
    );
    let stream = StreamId::new("test/a").unwrap();
    assert_eq!(store.stream_version(&stream).unwrap(), 4);
    let versions: Vec<u64> = store
        .read_stream(&stream, 1, 10)
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

#[actix_rt::test]
async fn chunked_appends_take_more_than_one_append_can_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 2);
    let addr = writer(&store, "test/a");
    // One append of five is refused, and nothing is written or folded.
    assert_eq!(
        send(&addr, Add::Numbers(vec![1, 1, 1, 1, 1], Chunking::Whole)).await,
        Err(CounterError::Writer(
            "400: 5 events in one append, at most 2 allowed".into()
        ))
    );
    // Cut in appends of two: all five, then the state has them all.
    assert_eq!(
        send(
            &addr,
            Add::Numbers(vec![1, 2, 3, 4, 5], Chunking::MaxEvents)
        )
        .await,
        Ok("15".into())
    );
    let stream = StreamId::new("test/a").unwrap();
    assert_eq!(store.stream_version(&stream).unwrap(), 5);
    assert_eq!(
        send(&addr, Add::Numbers(vec![1], Chunking::Whole)).await,
        Ok("16".into())
    );
}

#[actix_rt::test]
async fn a_refusal_or_a_panic_appends_nothing_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let addr = writer(&store, "test/a");
    assert_eq!(
        send(&addr, Add::Numbers(vec![2], Chunking::Whole)).await,
        Ok("2".into())
    );
    assert_eq!(send(&addr, Add::Refused).await, Err(CounterError::Refused));
    match send(&addr, Add::Panics).await {
        Err(CounterError::Writer(m)) => assert!(
            m.starts_with("500: add task failed: task ")
                && m.ends_with("panicked with message \"a bug\""),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store
            .stream_version(&StreamId::new("test/a").unwrap())
            .unwrap(),
        1
    );
    assert_eq!(
        send(&addr, Add::Numbers(vec![3], Chunking::Whole)).await,
        Ok("5".into())
    );
}

#[actix_rt::test]
async fn a_stale_version_is_a_conflict_naming_both_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let addr = writer(&store, "test/a");
    assert_eq!(
        send(&addr, Add::Numbers(vec![1], Chunking::Whole)).await,
        Ok("1".into())
    );
    // Someone else appends to the stream behind the writer's back.
    let stream = StreamId::new("test/a").unwrap();
    store
        .append_async(
            &stream,
            cairn_storage::ExpectedVersion::Exact(1),
            vec![event(Payload::SyncStarted(SyncStarted {
                trigger: "7".into(),
            }))],
            Metadata::command("other").normalized(),
        )
        .await
        .unwrap();
    assert_eq!(
        send(&addr, Add::Numbers(vec![5], Chunking::MaxEvents)).await,
        Err(CounterError::Writer(
            "409: stream test/a: expected version 1, found version 2".into()
        ))
    );
    assert_eq!(store.stream_version(&stream).unwrap(), 2);
}

#[actix_rt::test]
async fn commands_of_one_stream_run_one_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let addr = writer(&store, "test/a");
    // Many commands queued at once: never two running (prepare, decide,
    // append, fold) at the same time.
    let gauge = Arc::new(Gauge::default());
    let commands = (1..=32).map(|n| send(&addr, Add::Tracked(gauge.clone(), n)));
    let answers = futures::future::join_all(commands).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(gauge.max.load(Ordering::SeqCst), 1);
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
    // Each appended at the version the one before left.
    let stream = StreamId::new("test/a").unwrap();
    assert_eq!(store.stream_version(&stream).unwrap(), 32);
    assert_eq!(
        send(&addr, Add::Numbers(vec![], Chunking::Whole)).await,
        Ok((1..=32u64).sum::<u64>().to_string())
    );
}

#[actix_rt::test]
async fn writers_of_different_streams_run_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let (a, b) = (writer(&store, "test/a"), writer(&store, "test/b"));
    // Each tells the other it runs and waits to hear the other: both
    // answer "met" only when both run at once.
    let gauge = Arc::new(Gauge::default());
    let (to_a, a_hears) = mpsc::channel();
    let (to_b, b_hears) = mpsc::channel();
    let (first, second) = futures::join!(
        send(&a, Add::Meet(gauge.clone(), to_b, a_hears)),
        send(&b, Add::Meet(gauge.clone(), to_a, b_hears))
    );
    assert_eq!((first, second), (Ok("met".into()), Ok("met".into())));
    assert_eq!(gauge.max.load(Ordering::SeqCst), 2);
}

#[test]
fn a_command_runs_in_the_span_of_the_message_that_caused_it() {
    use tracing_subscriber::layer::SubscriberExt as _;
    // A registry with a layer that enables every span, as this thread's
    // default only (never the process's: other tests share it under
    // `cargo test`); the blocking threads get it from `off_arbiter`.
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    let answer = actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1000);
        let addr = writer(&store, "test/a");
        let command = tracing::info_span!("command", endpoint = "cairn.v1.test");
        addr.send(Execute {
            command: Add::Spans,
            metadata: Metadata::command("test").normalized(),
            span: command.clone(),
        })
        .await
        .unwrap()
    });
    assert_eq!(answer, Ok("writer < command".into()));
}

#[actix_rt::test]
async fn pipelined_appends_keep_their_own_metadata_and_stop_at_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), 1000);
    let addr = writer(&store, "test/a");
    let before = store.writer_stats();
    assert_eq!(
        send(
            &addr,
            Add::Pipelined(vec![(Some(1), "ann"), (Some(2), "bob"), (Some(3), "cy")])
        )
        .await,
        Ok("v1, v2, v3 total 6".into())
    );
    let after = store.writer_stats();
    assert_eq!(after.appends - before.appends, 3);
    let stream = StreamId::new("test/a").unwrap();
    let principals: Vec<String> = store
        .read_stream(&stream, 1, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.principal)
        .collect();
    assert_eq!(principals, ["ann", "bob", "cy"]);
    // A refused append: the one before it commits, none after it is tried.
    assert_eq!(
        send(
            &addr,
            Add::Pipelined(vec![(Some(10), "ann"), (None, "bob"), (Some(20), "cy")])
        )
        .await,
        Ok("v4, 400: event 0 has no payload total 16".into())
    );
    assert_eq!(store.stream_version(&stream).unwrap(), 4);
    assert_eq!(
        send(&addr, Add::Numbers(vec![1], Chunking::Whole)).await,
        Ok("17".into())
    );
}
