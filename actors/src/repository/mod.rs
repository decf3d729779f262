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
//!   upstream is read and diffed against the view off the arbiter (an I/O
//!   phase), then the reconciliation ending with `SyncSucceeded` in
//!   bounded appends — or `SyncFailed`, answered as the error. The next
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
//! - [`command`] — a lifecycle command's I/O: read its view rows, push,
//!   read the package back ([`command::LifecycleOp`],
//!   [`command::LifecycleOutcome`]).
//! - [`upstream`] — fetch (shared per URL), discovery, blobs; blocking.
//! - [`lifecycle`] — lifecycle commands as Git commits and ref changes.
//! - [`error`] — [`LifecycleError`], [`RepositoryError`] and their mapping
//!   into [`ServiceError`].
//! - [`messages`] — `Register`, `ApplyLifecycle`, `UpdateSpec`, `Close`.

pub mod command;
pub mod component;
pub mod decide;
pub mod error;
pub mod lifecycle;
pub mod messages;
pub mod upstream;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use actix::prelude::*;
use cairn_events::{
    envelope::event,
    v1::{event::Payload, Event, RepositorySpec, SyncFailed, SyncStarted},
    StreamId,
};
use cairn_storage::{views::RepositoriesView, Store};
use futures::future::BoxFuture;
use tracing::{info, warn};

use component::Changes;
pub use command::{LifecycleOp, LifecycleOutcome};
pub use component::RepositoryComponent;
pub use error::{origin_error, LifecycleError, RepositoryError};
pub use messages::{ApplyLifecycle, Close, Register, UpdateSpec};
use upstream::{read_upstream, Known, SyncEnv, UpstreamRead};

pub use crate::schedule::{RunSync, SyncReport};
use crate::{
    schedule::NextSync,
    writer::{off_arbiter, Chunking, Session, StreamDomain, StreamWriter},
    ServiceError,
};

/// The repository domain of the writer shell.
#[derive(Debug, Clone, Copy)]
pub struct Repository;

/// One registered repository: the writer of its stream.
pub type RepositoryActor = StreamWriter<Repository>;

/// A repository command, as its writer runs it.
#[derive(Debug)]
pub enum RepositoryCommand {
    /// Record the registration.
    Register,
    /// Replace the spec.
    UpdateSpec(RepositorySpec),
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

    fn store(env: &SyncEnv) -> &Store {
        &env.store
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
                RepositoryCommand::UpdateSpec(spec) => {
                    session
                        .decide(
                            "update",
                            Chunking::MaxEvents,
                            |_, _| Ok(()),
                            move |_, ()| Ok((decide::spec_changed(&spec), ())),
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
                                Ok((RepositoryComponent::close_events(&current, "unregistered"), ()))
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
                } => sync_once(session, trigger, asked_at, next)
                    .await
                    .map(RepositoryReply::Synced),
                RepositoryCommand::Lifecycle(op) => run_lifecycle(session, op)
                    .await
                    .map(RepositoryReply::Lifecycle),
            }
        })
    }
}

/// Runs `command` in the writer and answers what `pick` takes from its
/// reply (any other reply is a bug: 500).
fn answer<T: 'static>(
    actor: &mut RepositoryActor,
    command: RepositoryCommand,
    metadata: cairn_events::envelope::Metadata,
    span: &tracing::Span,
    pick: fn(RepositoryReply) -> Option<T>,
) -> ResponseActFuture<RepositoryActor, Result<T, ServiceError>> {
    Box::pin(actor.execute(command, metadata, span).map(move |result, _, _| {
        let reply = result?;
        pick(reply).ok_or_else(|| ServiceError::internal("unexpected reply from the repository"))
    }))
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
        AtomicResponse::new(answer(self, command, msg.metadata, &msg.span, |r| match r {
            RepositoryReply::Synced(report) => Some(report),
            _ => None,
        }))
    }
}

impl Handler<ApplyLifecycle> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<LifecycleOutcome, ServiceError>>;

    fn handle(&mut self, msg: ApplyLifecycle, _ctx: &mut Self::Context) -> Self::Result {
        let command = RepositoryCommand::Lifecycle(msg.op);
        AtomicResponse::new(answer(self, command, msg.metadata, &msg.span, |r| match r {
            RepositoryReply::Lifecycle(outcome) => Some(outcome),
            _ => None,
        }))
    }
}

impl Handler<UpdateSpec> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<RepositorySpec, ServiceError>>;

    fn handle(&mut self, msg: UpdateSpec, _ctx: &mut Self::Context) -> Self::Result {
        let command = RepositoryCommand::UpdateSpec(msg.spec);
        AtomicResponse::new(answer(self, command, msg.metadata, &msg.span, |r| match r {
            RepositoryReply::Spec(spec) => Some(*spec),
            _ => None,
        }))
    }
}

impl Handler<Close> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        let closed = answer(self, RepositoryCommand::Close, msg.metadata, &msg.span, |r| {
            matches!(r, RepositoryReply::Closed).then_some(())
        });
        AtomicResponse::new(Box::pin(closed.map(|result, _, ctx| {
            if result.is_ok() {
                ctx.stop();
            }
            result
        })))
    }
}

/// One sync: a slot, `SyncStarted`, read the upstream and diff it against
/// the view, then the reconciliation ending with `SyncSucceeded` (in
/// bounded appends) — or `SyncFailed`. (Not [`Session::decide`]: its
/// opening event commits while its I/O phase runs, and a failure is
/// recorded before it is answered.)
#[tracing::instrument(skip_all, fields(trigger = %trigger))]
async fn sync_once(
    session: &mut Session<Repository>,
    trigger: String,
    asked_at: Instant,
    next: Option<Arc<NextSync>>,
) -> Result<SyncReport, RepositoryError> {
    let env = session.env().clone();
    let key = session.state().stream.to_string();
    let _slot = env.slots.acquire().await;
    let started = Instant::now();
    let opened = vec![event(Payload::SyncStarted(SyncStarted { trigger }))];
    // Git and the diff against the view, off the arbiter — while the
    // writer commits `SyncStarted` (queued first, so it still opens the
    // sync in the log; its fsync overlaps the fetch instead of preceding it).
    let (read_env, snapshot) = (env.clone(), session.state().clone());
    let read = off_arbiter("sync", move || read(&read_env, &snapshot, asked_at, started));
    let (opened, outcome) = futures::join!(session.append(opened, Chunking::MaxEvents), read);
    opened?;
    match outcome? {
        Ok(Read {
            mut events,
            changes,
            package_count,
            pins,
            refs,
        }) => {
            let read_ms = started.elapsed().as_millis() as u64;
            let next_sync_at = next.as_ref().map(|n| n.decide(None));
            if let (
                Some(at),
                Some(Event {
                    payload: Some(Payload::SyncSucceeded(done)),
                }),
            ) = (next_sync_at, events.last_mut())
            {
                done.next_sync_at = Some(timestamp(at));
            }
            session.append(events, Chunking::MaxEvents).await?;
            drop(pins); // the references are committed now
            if refs.is_some() {
                session.state_mut().last_refs = refs;
            }
            if changes.added + changes.modified + changes.deleted > 0 {
                (env.release_memory)();
            }
            info!(repo = %key, added = changes.added, modified = changes.modified, deleted = changes.deleted,
                read_ms, duration_ms = started.elapsed().as_millis() as u64, "sync finished");
            Ok(SyncReport {
                added: changes.added,
                modified: changes.modified,
                deleted: changes.deleted,
                package_count: package_count as u32,
            })
        }
        Err(e) => {
            // An upstream failure keeps its class; a failure inside the
            // node (the store) is recorded as "internal", never as an
            // upstream one.
            let class = e.sync_class();
            warn!(repo = %key, class, error = %e, "sync failed");
            let failed = vec![event(Payload::SyncFailed(SyncFailed {
                error_class: class.to_owned(),
                message: e.to_string(),
                retry_at: next.as_ref().map(|n| timestamp(n.decide(Some(class)))),
            }))];
            session.append(failed, Chunking::MaxEvents).await?;
            Err(e)
        }
    }
}

/// What a sync read: its events up to `SyncSucceeded`, their counts, the
/// package revisions after it, the blobs to keep until the events commit,
/// and the refs it read (with their digest) when they changed.
struct Read {
    events: Vec<Event>,
    changes: Changes,
    package_count: usize,
    pins: Vec<cairn_storage::BlobPin>,
    refs: Option<(String, Arc<BTreeMap<String, git2::Oid>>)>,
}

/// Reads the upstream and diffs it against the views. Blocking. A store
/// failure is [`RepositoryError::Views`], an upstream one
/// [`RepositoryError::Upstream`].
fn read(
    env: &SyncEnv,
    component: &RepositoryComponent,
    asked_at: Instant,
    started: Instant,
) -> Result<Read, RepositoryError> {
    let views = RepositoryError::Views;
    let spec = &component.spec;
    let last = RepositoriesView::get(&env.store, &spec.namespace, &spec.name)
        .map_err(views)?
        .and_then(|row| row.status)
        .unwrap_or_default();
    // The refs this actor last synced, when the view still records their
    // digest (a sync elsewhere, or a spec change, would have replaced it).
    let known = Known {
        refs: component
            .last_refs
            .as_ref()
            .filter(|(digest, _)| *digest == last.refs_digest)
            .map(|(_, refs)| refs.clone()),
        digest: last.refs_digest.clone(),
    };
    match read_upstream(env, spec, asked_at, &known).map_err(RepositoryError::Upstream)? {
        UpstreamRead::Unchanged => Ok(Read {
            events: RepositoryComponent::unchanged_events(
                &last,
                started.elapsed().as_millis() as u64,
            ),
            changes: Changes::default(),
            package_count: last.package_count as usize,
            pins: Vec::new(),
            refs: None,
        }),
        UpstreamRead::Changed(upstream) => {
            let current = component.current(&env.store).map_err(views)?;
            let directory = spec.git.as_ref().map_or("", |g| g.directory.as_str());
            let (events, changes, package_count) = RepositoryComponent::scoped_sync_events(
                current,
                upstream.revisions,
                &upstream.scope,
                directory,
                &upstream.commit,
                &upstream.refs_digest,
                started.elapsed().as_millis() as u64,
            );
            Ok(Read {
                events,
                changes,
                package_count,
                pins: upstream.pins,
                refs: Some((upstream.refs_digest, upstream.refs)),
            })
        }
    }
}

/// A protobuf timestamp of `at`.
pub fn timestamp(at: SystemTime) -> pbjson_types::Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// One lifecycle command: validation (pure, over its view rows), the Git
/// work and the read-back off the arbiter (the I/O phase); the pure typing
/// of the read-back's events ([`decide::typed`]); their append; then the
/// target as the view has it.
#[tracing::instrument(skip_all, fields(verb = op.verb()))]
async fn run_lifecycle(
    session: &mut Session<Repository>,
    op: LifecycleOp,
) -> Result<LifecycleOutcome, RepositoryError> {
    let started = Instant::now();
    let verb = op.verb();
    let principal = session.metadata().principal.clone();
    let stream = session.state().stream.clone();
    // Shared by both phases (its files can be large: not copied).
    let op = Arc::new(op);
    let prepared = op.clone();
    let decided = session
        .decide(
            verb,
            Chunking::MaxEvents,
            move |env: &SyncEnv, state: &RepositoryComponent| {
                command::execute(env, state, &prepared, &principal)
            },
            move |_, executed: command::Executed| {
                let events = decide::typed(executed.events, &executed.name, &op, op.cloned_from());
                let count = events.len();
                Ok((events, (executed.name, executed.deleted, executed.pins, count)))
            },
        )
        .await;
    let (name, deleted, pins, count) = match decided {
        Ok(decided) => decided,
        Err(e) => {
            if !matches!(e, RepositoryError::Writer(_)) {
                info!(repo = %stream, verb, error = %e, "command refused");
            }
            return Err(e);
        }
    };
    drop(pins); // the references are committed now
    info!(repo = %stream, verb, revision = %name, events = count,
        duration_ms = started.elapsed().as_millis() as u64, "command done");
    if deleted {
        return Ok(LifecycleOutcome::Deleted(name));
    }
    let store = session.env().store.clone();
    let namespace = session.state().spec.namespace.clone();
    let (row, name) = off_arbiter(verb, move || {
        cairn_storage::views::PackageRevisionsView::get(&store, &namespace, &name)
            .map(|row| (row, name))
    })
    .await?
    .map_err(RepositoryError::Views)?;
    match row {
        Some(row) => Ok(LifecycleOutcome::Revision(Box::new(row))),
        None => Err(RepositoryError::Lost { verb, name }),
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::{
        envelope::Metadata,
        v1::{GitSpec, RepositorySpec},
    };
    use cairn_storage::{
        views::{PackageRevisionListView, PackageRevisionsView},
        EventLog, StoreConfig,
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
            refs_read: Default::default(),
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
                }),
            ]
        );
    }
}
