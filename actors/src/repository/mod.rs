//! The RepositoryActor: the only writer of its repository's stream
//! `repo/<namespace>/<name>` — the first user of the stream-writer shell
//! ([`crate::writer`]): `RepositoryActor = StreamWriter<Repository>`.
//!
//! Its handlers are thin: each turns its message into a
//! [`RepositoryCommand`] run by the shell (one at a time per repository,
//! off the arbiter, appended at the expected stream version and folded
//! into the [`RepositoryComponent`]); [`Repository::run`] says how each
//! command goes:
//! - `Register`, `UpdateSpec`: the pure decisions of [`decide`].
//! - `Close`: read the revisions from the view, then
//!   [`RepositoryComponent::close_events`].
//! - a sync ([`RunSync`]): take a slot of the node-wide cap
//!   ([`crate::timing::SyncSlots`]), append `SyncStarted` while the
//!   upstream is fetched and its discovery opened off the arbiter (an I/O
//!   phase), then the reconciliation in chunks, each reserved from the
//!   node-wide memory budget ([`crate::timing::SyncBudget`]), ending with
//!   `SyncSucceeded` — or `SyncFailed`, answered as the error. The next
//!   sync time its SyncManager decides is recorded in its last event.
//! - a lifecycle command ([`ApplyLifecycle`]): validate (pure, over the view
//!   rows), write to Git, read back — off the arbiter — then its events.
//!
//! # Layout
//! - [`component`] — state and sync/close decisions (reconcile), and the
//!   fold of the stream's events; unit-tested.
//! - [`decide`] — the pure command decisions: lifecycle validation,
//!   typed lifecycle events, register and spec change; given/when/then
//!   tests of every lifecycle transition.
//! - [`op`] — a lifecycle command and what it leaves ([`LifecycleOp`],
//!   [`Source`], [`LifecycleOutcome`]); a leaf shared by `decide`,
//!   `command` and `messages` (re-exported by `command` too).
//! - [`naming`] — the Porch object name ([`naming::object_name`]); a leaf
//!   shared by `component`, `upstream`, `decide` and `command`
//!   (re-exported by `component`).
//! - [`command`] — a lifecycle command as the writer runs it: its I/O
//!   phase (read its view rows, push, read the package back), then the
//!   pure typing of its events.
//! - [`sync`] — a sync as the writer runs it (slot, `SyncStarted` while
//!   the upstream is read, the reconciliation's chunks pipelined within
//!   the budget, or `SyncFailed`).
//! - [`reconcile`] — a changed sync's reconciliation, one chunk at a time
//!   (changes compared with their own view rows, then deletions from
//!   names); blocking.
//! - [`upstream`] — fetch (shared per URL), opening the discovery, storing
//!   revisions' blobs ([`upstream::Resources`]); blocking.
//! - [`error`] — [`LifecycleError`], [`RepositoryError`] and their mapping
//!   into [`ServiceError`].
//! - [`messages`] — `Register`, `ApplyLifecycle`, `UpdateSpec`, `Close`.
//! - [`domain`] — the [`Repository`] marker (the writer shell's domain),
//!   a leaf: `command` and `sync` name it without importing this module,
//!   which runs them (its `StreamDomain` impl stays here).

pub mod command;
pub mod component;
pub mod decide;
pub mod domain;
pub mod error;
pub mod messages;
pub mod naming;
pub mod op;
pub mod reconcile;
pub mod sync;
pub mod upstream;

use std::{sync::Arc, time::Instant};

use actix::prelude::*;
use cairn_events::{
    v1::{Event, RepositorySpec},
    StreamId,
};
use futures::future::BoxFuture;

pub use component::RepositoryComponent;
pub use domain::Repository;
pub use error::{origin_error, LifecycleError, RepositoryError};
pub use messages::{ApplyLifecycle, Close, Register, UpdateSpec};
pub use op::{LifecycleOp, LifecycleOutcome, Source};
pub use sync::timestamp;
use upstream::SyncEnv;

pub use crate::schedule::{RunSync, SyncReport};
use crate::{
    schedule::NextSync,
    writer::{Chunking, Session, StreamDomain, StreamWriter},
    ServiceError,
};

/// One registered repository: the writer of its stream.
pub type RepositoryActor = StreamWriter<Repository>;

/// A repository command, as its writer runs it.
#[derive(Debug)]
pub enum RepositoryCommand {
    /// Record the registration.
    Register,
    /// Replace the spec; the next sync its plan gives, for the status.
    UpdateSpec(RepositorySpec, Option<pbjson_types::Timestamp>),
    /// Unregister.
    Close,
    /// Sync now.
    Sync {
        /// What asked.
        trigger: String,
        /// When it was asked.
        asked_at: Instant,
        /// Decides the next sync time recorded in the last event.
        next: Option<Arc<NextSync>>,
    },
    /// A lifecycle command.
    Lifecycle(LifecycleOp),
}

/// What a repository command answers.
#[derive(Debug)]
pub enum RepositoryReply {
    /// Registered.
    Registered,
    /// The spec now in force.
    Spec(Box<RepositorySpec>),
    /// Closed (the actor stops).
    Closed,
    /// What the sync did.
    Synced(SyncReport),
    /// What the lifecycle command left.
    Lifecycle(LifecycleOutcome),
}

impl StreamDomain for Repository {
    type State = RepositoryComponent;
    type Command = RepositoryCommand;
    type Event = Event;
    type Reply = RepositoryReply;
    type Error = RepositoryError;
    type Env = SyncEnv;

    const NAME: &'static str = "repository";

    fn store(env: &SyncEnv) -> &dyn cairn_storage::AsyncAppend {
        match &env.cluster {
            Some(cluster) => cluster,
            None => &env.store,
        }
    }

    fn stream(state: &RepositoryComponent) -> &StreamId {
        &state.stream
    }

    fn version(state: &RepositoryComponent) -> u64 {
        state.version
    }

    fn fold(state: &mut RepositoryComponent, event: &Event, version: u64) {
        state.fold(event, version);
    }

    fn run(
        session: &mut Session<Self>,
        command: RepositoryCommand,
    ) -> BoxFuture<'_, Result<RepositoryReply, RepositoryError>> {
        Box::pin(async move {
            match command {
                RepositoryCommand::Register => {
                    // A name used before continues its stream after the old
                    // registration's close (the history stays, for audit).
                    let store = session.env().store.clone();
                    let stream = session.state().stream.clone();
                    let closed_at = crate::writer::off_arbiter("register", move || {
                        closed_version(&store, &stream)
                    })
                    .await?
                    .map_err(RepositoryError::Views)?;
                    if let Some(version) = closed_at {
                        session.state_mut().version = version;
                    }
                    session
                        .decide(
                            "register",
                            Chunking::MaxEvents,
                            |_, _| Ok(()),
                            |state, ()| Ok((decide::registered(&state.spec), ())),
                        )
                        .await?;
                    Ok(RepositoryReply::Registered)
                }
                RepositoryCommand::UpdateSpec(spec, next_sync_at) => {
                    session
                        .decide(
                            "update",
                            Chunking::MaxEvents,
                            |_, _| Ok(()),
                            move |_, ()| Ok((decide::spec_changed(&spec, next_sync_at), ())),
                        )
                        .await?;
                    Ok(RepositoryReply::Spec(Box::new(
                        session.state().spec.clone(),
                    )))
                }
                RepositoryCommand::Close => {
                    session
                        .decide(
                            "close",
                            Chunking::MaxEvents,
                            |env: &SyncEnv, state: &RepositoryComponent| {
                                state.current(&env.store).map_err(RepositoryError::Views)
                            },
                            |_, current| {
                                Ok((
                                    RepositoryComponent::close_events(&current, "unregistered"),
                                    (),
                                ))
                            },
                        )
                        .await?;
                    (session.env().release_memory)();
                    Ok(RepositoryReply::Closed)
                }
                RepositoryCommand::Sync {
                    trigger,
                    asked_at,
                    next,
                } => sync::sync_once(session, trigger, asked_at, next)
                    .await
                    .map(RepositoryReply::Synced),
                RepositoryCommand::Lifecycle(op) => command::run(session, op)
                    .await
                    .map(RepositoryReply::Lifecycle),
            }
        })
    }
}

/// The version of `stream`'s last event when that event closed an earlier
/// registration (a new one appends after it); `None` for a stream never
/// written — or still open, whose append then fails as a conflict naming
/// both versions.
fn closed_version(
    store: &cairn_storage::Store,
    stream: &StreamId,
) -> Result<Option<u64>, cairn_storage::StorageError> {
    use cairn_storage::EventLog as _;
    let version = store.stream_version(stream)?;
    if version == 0 {
        return Ok(None);
    }
    let last = store.read_stream(stream, version, 1)?;
    let closed = last.first().is_some_and(|e| {
        matches!(
            e.event.as_ref().and_then(|e| e.payload.as_ref()),
            Some(cairn_events::v1::event::Payload::RepositoryClosed(_))
        )
    });
    Ok(closed.then_some(version))
}

/// Runs `command` in the writer and answers what `pick` takes from its
/// reply (any other reply is a bug: [`RepositoryError::UnexpectedReply`],
/// 500).
fn answer<T: 'static>(
    actor: &mut RepositoryActor,
    command: RepositoryCommand,
    metadata: cairn_events::envelope::Metadata,
    span: &tracing::Span,
    pick: fn(RepositoryReply) -> Option<T>,
) -> ResponseActFuture<RepositoryActor, Result<T, ServiceError>> {
    Box::pin(
        actor
            .execute(command, metadata, span)
            .map(move |result, _, _| {
                let reply = result?;
                pick(reply).ok_or_else(|| RepositoryError::UnexpectedReply.into())
            }),
    )
}

impl Handler<Register> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(answer(
            self,
            RepositoryCommand::Register,
            msg.metadata,
            &msg.span,
            |r| matches!(r, RepositoryReply::Registered).then_some(()),
        ))
    }
}

impl Handler<RunSync> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<SyncReport, ServiceError>>;

    fn handle(&mut self, msg: RunSync, _ctx: &mut Self::Context) -> Self::Result {
        let command = RepositoryCommand::Sync {
            trigger: msg.trigger,
            asked_at: msg.asked_at,
            next: msg.next,
        };
        AtomicResponse::new(answer(
            self,
            command,
            msg.metadata,
            &msg.span,
            |r| match r {
                RepositoryReply::Synced(report) => Some(report),
                _ => None,
            },
        ))
    }
}

impl Handler<ApplyLifecycle> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<LifecycleOutcome, ServiceError>>;

    fn handle(&mut self, msg: ApplyLifecycle, _ctx: &mut Self::Context) -> Self::Result {
        let command = RepositoryCommand::Lifecycle(msg.op);
        AtomicResponse::new(answer(
            self,
            command,
            msg.metadata,
            &msg.span,
            |r| match r {
                RepositoryReply::Lifecycle(outcome) => Some(outcome),
                _ => None,
            },
        ))
    }
}

impl Handler<UpdateSpec> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<RepositorySpec, ServiceError>>;

    fn handle(&mut self, msg: UpdateSpec, _ctx: &mut Self::Context) -> Self::Result {
        let command = RepositoryCommand::UpdateSpec(msg.spec, msg.next_sync_at);
        AtomicResponse::new(answer(
            self,
            command,
            msg.metadata,
            &msg.span,
            |r| match r {
                RepositoryReply::Spec(spec) => Some(*spec),
                _ => None,
            },
        ))
    }
}

impl Handler<Close> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        let closed = answer(
            self,
            RepositoryCommand::Close,
            msg.metadata,
            &msg.span,
            |r| matches!(r, RepositoryReply::Closed).then_some(()),
        );
        AtomicResponse::new(Box::pin(closed.map(|result, _, ctx| {
            if result.is_ok() {
                ctx.stop();
            }
            result
        })))
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::{
        envelope::Metadata,
        v1::{event::Payload, GitSpec, RepositorySpec, SyncFailed, SyncStarted},
    };
    use cairn_storage::{
        views::{PackageRevisionListView, PackageRevisionsView},
        EventLog, Store, StoreConfig,
    };

    use super::*;
    use crate::{
        origin::GitCache,
        repository::upstream::{Fetches, Secrets},
        timing::SyncSlots,
    };

    /// A store whose views cannot be read during a sync fails the sync as
    /// a node problem (500, class "internal"), never as "upstream
    /// unavailable" (503, class "other").
    #[actix_rt::test]
    async fn a_storage_failure_in_a_sync_is_internal_not_upstream() {
        let dir = tempfile::tempdir().unwrap();
        // No `repositories` view: reading the repository's status fails.
        let store = Store::open(
            StoreConfig::new(dir.path().join("db")),
            vec![
                Arc::new(PackageRevisionsView),
                Arc::new(PackageRevisionListView),
            ],
        )
        .unwrap();
        let env = Arc::new(SyncEnv {
            store: store.clone(),
            fetches: Fetches::new(GitCache::new(dir.path().join("git"))),
            secrets: Secrets::new(None),
            release_memory: || {},
            discoveries: Default::default(),
            slots: SyncSlots::new(1),
            budget: Default::default(),
            refs_read: Default::default(),
            write: Default::default(),
            cluster: None,
        });
        let spec = RepositorySpec {
            namespace: "ns".into(),
            name: "r".into(),
            r#type: "git".into(),
            git: Some(GitSpec {
                url: format!("file://{}", dir.path().join("upstream").display()),
                branch: "main".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let actor = RepositoryActor::new(RepositoryComponent::new(spec).unwrap(), env).start();
        let answer = actor
            .send(RunSync {
                trigger: "manual".into(),
                asked_at: Instant::now(),
                metadata: Metadata::command("test").normalized(),
                next: None,
                span: tracing::Span::none(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer,
            Err(ServiceError::internal(
                "reading the views: unknown view \"repositories\""
            ))
        );
        let stream = StreamId::repository("ns", "r").unwrap();
        let recorded: Vec<Payload> = store
            .read_stream(&stream, 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event.unwrap().payload.unwrap())
            .collect();
        assert_eq!(
            recorded,
            [
                Payload::SyncStarted(SyncStarted {
                    trigger: "manual".into()
                }),
                Payload::SyncFailed(SyncFailed {
                    error_class: "internal".into(),
                    message: "reading the views: unknown view \"repositories\"".into(),
                    retry_at: None,
                    reply_code: 500,
                    reply_message: "reading the views: unknown view \"repositories\"".into(),
                }),
            ]
        );
    }

    /// A blob store that cannot store what a sync read fails the sync as a
    /// node problem (500, class "internal"), never as "upstream
    /// unavailable" (503, class "other").
    #[actix_rt::test]
    async fn a_blob_store_failure_in_a_sync_is_internal_not_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dir.path().join("upstream.git");
        crate::test_git::upstream_with_one_package(&upstream);
        // Every blob a file blob, and a plain file where the blob
        // directory goes: every put fails (even as root).
        let mut config = StoreConfig::new(dir.path().join("db"));
        config.blob_inline_max_bytes = 0;
        let store = Store::open(config.clone(), cairn_storage::views::default_views()).unwrap();
        let _ = std::fs::remove_dir_all(config.blob_dir());
        std::fs::write(config.blob_dir(), b"not a directory").unwrap();
        let env = Arc::new(SyncEnv {
            store: store.clone(),
            fetches: Fetches::new(GitCache::new(dir.path().join("git"))),
            secrets: Secrets::new(None),
            release_memory: || {},
            discoveries: Default::default(),
            slots: SyncSlots::new(1),
            budget: Default::default(),
            refs_read: Default::default(),
            write: Default::default(),
            cluster: None,
        });
        let spec = RepositorySpec {
            namespace: "ns".into(),
            name: "r".into(),
            r#type: "git".into(),
            git: Some(GitSpec {
                url: format!("file://{}", upstream.display()),
                branch: "main".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let actor = RepositoryActor::new(RepositoryComponent::new(spec).unwrap(), env).start();
        let answer = actor
            .send(RunSync {
                trigger: "manual".into(),
                asked_at: Instant::now(),
                metadata: Metadata::command("test").normalized(),
                next: None,
                span: tracing::Span::none(),
            })
            .await
            .unwrap();
        let message = format!(
            "storing Kptfile: creating {}: {}",
            config.blob_dir().join("tmp").display(),
            std::io::Error::from_raw_os_error(20 /* ENOTDIR */)
        );
        assert_eq!(answer, Err(ServiceError::internal(message.clone())));
        let stream = StreamId::repository("ns", "r").unwrap();
        let recorded: Vec<Payload> = store
            .read_stream(&stream, 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event.unwrap().payload.unwrap())
            .collect();
        assert_eq!(
            recorded,
            [
                Payload::SyncStarted(SyncStarted {
                    trigger: "manual".into()
                }),
                Payload::SyncFailed(SyncFailed {
                    error_class: "internal".into(),
                    message: message.clone(),
                    retry_at: None,
                    reply_code: 500,
                    reply_message: message,
                }),
            ]
        );
    }
}
