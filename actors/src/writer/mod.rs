//! The stream-writer shell: the single writer of one stream, for any
//! domain.
//!
//! A [`StreamWriter`] actor owns one stream and a small state folded from
//! it. It runs each command of its stream to the end before the next one
//! starts (`AtomicResponse`: a command's off-thread work never interleaves
//! with another command of the same stream), while writers of different
//! streams run in parallel. A command runs in a [`Session`] — a snapshot
//! of the state plus the command's metadata and span — and goes:
//!
//! 1. **prepare** (optional, off the arbiter): the reads and I/O the
//!    decision needs — view rows, a Git fetch or push;
//! 2. **decide** (pure, off the arbiter): `decide(state, input) ->
//!    Result<Vec<Event>, DomainError>`;
//! 3. **append** at the stream version the state expects — in one append,
//!    or in appends of at most `store.append-max-events` queued together
//!    when the domain asks ([`Chunking::MaxEvents`]) — through the
//!    [`cairn_storage::AsyncAppend`] the domain's [`StreamDomain::store`]
//!    lends (the node's store; a replicated appender in a cluster);
//! 4. **fold** each committed event into the state ([`StreamDomain::fold`]);
//!    the writer keeps the folded state whatever the command answers, so
//!    it has seen every append that committed;
//! 5. **reply**.
//!
//! [`Session::decide`] runs steps 1–4 for the common case. A command with
//! more steps (a sync opens with an event appended while its fetch runs,
//! and records a failure before answering it) composes the same
//! primitives: [`Session::append`] and [`off_arbiter`].
//!
//! A domain whose commands are many and small (the key-value sets) may
//! queue them itself and run the queued ones as one command: it decides
//! each, then [`Session::append_pipelined`] queues their appends to the
//! store together — one append per original command, each with that
//! command's metadata, at consecutive expected versions — so they share
//! group commits instead of waiting one commit each, and the domain answers
//! each original command from its own append.
//!
//! # Layout
//! - this module — [`StreamDomain`], [`StreamWriter`], [`Session`]
//!   (with [`Session::append_pipelined`]), [`Chunking`], [`off_arbiter`], [`Execute`], [`StopWriter`],
//!   [`WriterError`].
//! - `tests` — the shell on a real store with a toy domain: chunked
//!   appends, fold, serialisation per stream, parallel streams, spans.
//!
//! # Adding a domain
//! The repository ([`crate::repository::Repository`]) is the first user;
//! the key-value namespaces and the artifact streams plug in the same way:
//! 1. a module `actors/src/<domain>/` with the state (a plain struct:
//!    stream id, stream version, whatever the decisions need — not the
//!    whole history, which lives in views), its pure decisions with
//!    given/when/then unit tests, and a `thiserror` error enum with one
//!    `From<…> for ServiceError`;
//! 2. `impl StreamDomain for MyDomain` naming State, Command, Event, Reply,
//!    Error and Env, with `fold` and `run` (usually
//!    `session.decide(prepare, decide)` then a reply);
//! 3. `pub type MyActor = StreamWriter<MyDomain>;` started per stream by
//!    the domain's registry; endpoints send [`Execute`] (or the domain's
//!    own messages, whose handlers call [`StreamWriter::execute`]).
//!
//! Every message carries the span of the command that caused it; the shell
//! runs the command inside a child span (`writer`, at INFO like the
//! command's, so the tree holds at the default level) naming the stream,
//! and enters it again — with the subscriber — on the blocking threads
//! ([`off_arbiter`]), so a log of one command reads as one tree.

use std::{fmt, sync::Arc};

use actix::prelude::*;
use cairn_events::{envelope::Metadata, v1::Event, StreamId};
use cairn_storage::{AsyncAppend, StorageError};
use futures::future::BoxFuture;
use tracing::Instrument;

use crate::ServiceError;

/// Why the shell could not carry out its part of a command.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The append failed: a stale expected version (another writer
    /// appended first; answered 409 naming both versions), an invalid
    /// append (400), a closed store (503) or a broken one (500). Nothing of
    /// the failed append was written; appends before it stay committed and
    /// folded.
    #[error(transparent)]
    Append(#[from] StorageError),
    /// A phase run off the arbiter panicked or was cancelled: a bug,
    /// answered 500; the state keeps what committed before.
    #[error("{what} task failed: {message}")]
    Task {
        /// The phase ("sync", "approve", "close", …).
        what: String,
        /// The join error.
        message: String,
    },
}

impl From<WriterError> for ServiceError {
    fn from(e: WriterError) -> Self {
        match e {
            WriterError::Append(e) => e.into(),
            e @ WriterError::Task { .. } => ServiceError::internal(e.to_string()),
        }
    }
}

/// How [`Session::append`] cuts a command's events into appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// One append (refused beyond `store.append-max-events`).
    Whole,
    /// Appends of at most `store.append-max-events`, queued together: the
    /// store's writer commits them back to back, each expecting the version
    /// the previous one leaves. A reader sees the command's last event
    /// only once all before it committed; a crash in between leaves a
    /// prefix (a repository's next sync completes a partial one).
    MaxEvents,
}

/// A domain whose streams have one writer each: what its state is, how it
/// folds its events, and how it runs a command. See the module docs.
pub trait StreamDomain: Sized + Unpin + fmt::Debug + 'static {
    /// What the writer knows of its stream: small (it is cloned per
    /// command and per append), loaded from the views on start.
    type State: Clone + Send + Unpin + fmt::Debug + 'static;
    /// One command of the domain.
    type Command: Send + fmt::Debug + 'static;
    /// One event the domain decides (appended as a `cairn.v1.Event`).
    type Event: Into<Event> + Send + 'static;
    /// What a command answers when it succeeds.
    type Reply: Send + 'static;
    /// Why a command fails: the domain's error enum.
    type Error: From<WriterError> + Send + fmt::Debug + 'static;
    /// What the domain needs besides its state (the store, origins, …).
    type Env: Send + Sync + fmt::Debug + 'static;

    /// The domain's name in spans ("repository", "kv", …).
    const NAME: &'static str;

    /// The log the writer appends to: the node's [`cairn_storage::Store`]
    /// today (an env that also needs the concrete store for reads or
    /// subscriptions holds it and lends it here as the trait). The cluster
    /// work returns a JetStream-backed [`AsyncAppend`] instead; nothing
    /// else in the shell changes.
    fn store(env: &Self::Env) -> &dyn AsyncAppend;
    /// When the domain's appends are acknowledged: fsynced (the default),
    /// or once in the write-ahead log (the key-value cache's `batched`
    /// durability, whose owner fsyncs on its own schedule).
    fn durability(env: &Self::Env) -> cairn_storage::Durability {
        let _ = env;
        cairn_storage::Durability::Sync
    }
    /// The stream the state belongs to.
    fn stream(state: &Self::State) -> &StreamId;
    /// The stream version the state has seen (the next append expects it).
    fn version(state: &Self::State) -> u64;
    /// Folds one committed event into the state; `version` is the stream
    /// version the event got.
    fn fold(state: &mut Self::State, event: &Self::Event, version: u64);
    /// Runs `command` in `session` (a snapshot of the state the writer
    /// takes back afterwards, whatever the answer).
    fn run(
        session: &mut Session<Self>,
        command: Self::Command,
    ) -> BoxFuture<'_, Result<Self::Reply, Self::Error>>;
}

/// One command's view of its writer: the state (a snapshot the writer
/// takes back), the environment, the command's metadata and span.
#[derive(Debug)]
pub struct Session<D: StreamDomain> {
    env: Arc<D::Env>,
    state: D::State,
    metadata: Metadata,
    span: tracing::Span,
}

impl<D: StreamDomain> Session<D> {
    /// The environment.
    pub fn env(&self) -> &Arc<D::Env> {
        &self.env
    }

    /// The state, with every append of this command so far folded in.
    pub fn state(&self) -> &D::State {
        &self.state
    }

    /// The state, for what a command learns besides its events (kept by
    /// the writer afterwards; memory only).
    pub fn state_mut(&mut self) -> &mut D::State {
        &mut self.state
    }

    /// Who asked, and the command's ids (every append carries them).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The command's span (within the writer's).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Appends `events` at the state's version, cut as `chunking` says,
    /// folding each committed append into the state, and answers the
    /// committed appends (their envelopes carry `seq`: the key-value
    /// domain answers it as the entry's version). Nothing to append:
    /// nothing happens.
    pub async fn append(
        &mut self,
        events: Vec<D::Event>,
        chunking: Chunking,
    ) -> Result<Vec<cairn_storage::Appended>, WriterError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let store = D::store(&self.env);
        let max = match chunking {
            Chunking::Whole => usize::MAX,
            Chunking::MaxEvents => store.append_max_events().max(1),
        };
        // Each chunk its own exact-size vector (splitting one vector off
        // another would leave every chunk with the capacity of the whole),
        // with the state it leaves once committed.
        let mut chunks = Vec::with_capacity(events.len().div_ceil(max.min(events.len())));
        let mut states = Vec::with_capacity(chunks.capacity());
        let mut next = self.state.clone();
        let mut version = D::version(&self.state);
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<Event> = events
                .by_ref()
                .take(max)
                .map(|e| {
                    version += 1;
                    D::fold(&mut next, &e, version);
                    e.into()
                })
                .collect();
            chunks.push(chunk);
            states.push(next.clone());
        }
        let stream = D::stream(&self.state).clone();
        let expected = D::version(&self.state);
        // The append's span (queue wait and group commit: the writer
        // thread's work until the append is durable).
        let span = tracing::info_span!(
            "append",
            stream = %stream,
            chunks = chunks.len(),
            events = chunks.iter().map(Vec::len).sum::<usize>(),
        );
        let appended = tracing::Instrument::instrument(
            store.append_chunks_with(
                &stream,
                expected,
                chunks,
                self.metadata.clone(),
                D::durability(&self.env),
            ),
            span,
        )
        .await;
        let mut committed = Vec::with_capacity(states.len());
        for (appended, folded) in appended.into_iter().zip(states) {
            let appended = appended?;
            debug_assert_eq!(appended.stream_version(), D::version(&folded));
            tracing::debug!(stream = %stream, version = appended.stream_version(), "appended");
            self.state = folded;
            committed.push(appended);
        }
        Ok(committed)
    }

    /// Appends of several commands the domain runs as one (it drains its
    /// queued commands into one batch: the key-value sets), each with its
    /// own metadata, at the state's version, queued together so the store
    /// commits them in as few group commits as it can; each committed
    /// append is folded into the state. Answers the outcome of each append
    /// up to and including the first failure (nothing after it was
    /// written). Each append must fit `store.append-max-events`.
    pub async fn append_pipelined(
        &mut self,
        appends: Vec<(Vec<D::Event>, Metadata)>,
    ) -> Vec<Result<cairn_storage::Appended, WriterError>> {
        if appends.is_empty() {
            return Vec::new();
        }
        let store = D::store(&self.env);
        let mut states = Vec::with_capacity(appends.len());
        let mut next = self.state.clone();
        let mut version = D::version(&self.state);
        let appends: Vec<(Vec<Event>, Metadata)> = appends
            .into_iter()
            .map(|(events, metadata)| {
                let events = events
                    .into_iter()
                    .map(|e| {
                        version += 1;
                        D::fold(&mut next, &e, version);
                        e.into()
                    })
                    .collect();
                states.push(next.clone());
                (events, metadata)
            })
            .collect();
        let stream = D::stream(&self.state).clone();
        let expected = D::version(&self.state);
        let appended = store
            .append_pipelined(&stream, expected, appends, D::durability(&self.env))
            .await;
        let mut out = Vec::with_capacity(appended.len());
        for (appended, folded) in appended.into_iter().zip(states) {
            match appended {
                Ok(appended) => {
                    debug_assert_eq!(appended.stream_version(), D::version(&folded));
                    self.state = folded;
                    out.push(Ok(appended));
                }
                Err(e) => {
                    out.push(Err(e.into()));
                    break;
                }
            }
        }
        tracing::debug!(stream = %stream, appends = out.len(), "appended pipelined");
        out
    }

    /// The common command: `prepare` (reads, I/O) and the pure `decide`
    /// off the arbiter, on the state as it is now, then the events
    /// appended and folded. Answers what `decide` gave besides the events.
    pub async fn decide<I, T>(
        &mut self,
        what: &str,
        chunking: Chunking,
        prepare: impl FnOnce(&D::Env, &D::State) -> Result<I, D::Error> + Send + 'static,
        decide: impl FnOnce(&D::State, I) -> Result<(Vec<D::Event>, T), D::Error> + Send + 'static,
    ) -> Result<T, D::Error>
    where
        I: Send + 'static,
        T: Send + 'static,
    {
        let (env, state) = (self.env.clone(), self.state.clone());
        let (events, answer) = off_arbiter(what, move || {
            let input = prepare(&env, &state)?;
            decide(&state, input)
        })
        .await??;
        self.append(events, chunking).await?;
        Ok(answer)
    }
}

/// Runs blocking `work` (RocksDB, Git) on tokio's blocking pool, inside the
/// current span and under the current subscriber (a thread's default
/// subscriber is not the blocking thread's: without it, the work's events
/// would go to the global one); `what` names it if it panics.
pub fn off_arbiter<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T, WriterError>> + Send + 'static {
    let span = tracing::Span::current();
    let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    let what = what.to_owned();
    let task = tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || span.in_scope(work))
    });
    async move {
        task.await.map_err(|e| WriterError::Task {
            what,
            message: e.to_string(),
        })
    }
}

/// The writer of one stream of domain `D`.
#[derive(Debug)]
pub struct StreamWriter<D: StreamDomain> {
    state: D::State,
    env: Arc<D::Env>,
}

impl<D: StreamDomain> StreamWriter<D> {
    /// A writer for `state` (loaded from the views, or new).
    pub fn new(state: D::State, env: Arc<D::Env>) -> Self {
        Self { state, env }
    }

    /// The state as of the last command that finished.
    pub fn state(&self) -> &D::State {
        &self.state
    }

    /// Runs `command` in a span (child of `parent`, the span of the
    /// command that caused it) naming the domain and the stream; the
    /// writer takes the session's state back whatever the answer. A
    /// handler answers it wrapped in `AtomicResponse` (mapped as it needs),
    /// so it runs after every command before it finished.
    pub fn execute(
        &mut self,
        command: D::Command,
        metadata: Metadata,
        parent: &tracing::Span,
    ) -> ResponseActFuture<Self, Result<D::Reply, D::Error>> {
        // INFO, as the command's span: a span that is disabled at the
        // node's level would cut the tree (the domain's spans inside it
        // would become roots, losing the command's fields).
        let span = tracing::info_span!(
            parent: parent,
            "writer",
            domain = D::NAME,
            stream = %D::stream(&self.state),
            version = D::version(&self.state),
        );
        let mut session = Session::<D> {
            env: self.env.clone(),
            state: self.state.clone(),
            metadata,
            span: span.clone(),
        };
        Box::pin(
            async move {
                let result = D::run(&mut session, command).await;
                (session.state, result)
            }
            .instrument(span)
            .into_actor(self)
            .map(|(state, result), act, _| {
                act.state = state;
                result
            }),
        )
    }
}

impl<D: StreamDomain> Actor for StreamWriter<D> {
    type Context = Context<Self>;
}

/// A command for the writer of domain `D`: the generic message a new domain
/// can use instead of one message per command.
#[derive(Debug)]
pub struct Execute<D: StreamDomain> {
    /// The command.
    pub command: D::Command,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

impl<D: StreamDomain> Message for Execute<D> {
    type Result = Result<D::Reply, D::Error>;
}

impl<D: StreamDomain> Handler<Execute<D>> for StreamWriter<D> {
    type Result = AtomicResponse<Self, Result<D::Reply, D::Error>>;

    fn handle(&mut self, msg: Execute<D>, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(self.execute(msg.command, msg.metadata, &msg.span))
    }
}

/// Stops the writer (node shutdown, a closed stream); commands queued
/// before it finish first.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopWriter;

impl<D: StreamDomain> Handler<StopWriter> for StreamWriter<D> {
    type Result = ();

    fn handle(&mut self, _msg: StopWriter, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests;
