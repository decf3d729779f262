//! The RepositoryActor: the only writer of its repository's stream
//! `repo/<namespace>/<name>`.
//!
//! A thin shell: commands are handled one at a time (`AtomicResponse`, so a
//! sync's Git work, which runs in `spawn_blocking`, never interleaves with
//! another command), the decisions are made by [`component`], and every
//! append names the stream version the component expects.
//!
//! # Layout
//! - [`component`] — state and decisions (reconcile, close), unit-tested.
//! - [`upstream`] — fetch (shared per URL), discovery, blobs; blocking.
//! - [`command`] — a lifecycle command end to end: validate against the
//!   view, push, read the package back, type its events.
//! - [`messages`] — `Register`, `Sync`, `Command`, `UpdateSpec`, `Close`.
//!
//! Every sync takes a slot of the node-wide cap
//! ([`crate::schedule::SyncSlots`]) before it opens with `SyncStarted`, and
//! records the next sync time its SyncManager decides in its last event.

pub mod command;
pub mod component;
pub mod messages;
pub mod upstream;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use actix::prelude::*;
use cairn_events::{
    envelope::{event, Metadata},
    v1::{
        event::Payload, Event, RepositoryRegistered, RepositorySpecChanged, SyncFailed, SyncStarted,
    },
};
use tracing::{info, warn};

use cairn_storage::views::RepositoriesView;
use component::Changes;
pub use component::RepositoryComponent;
pub use messages::{Close, Command, Register, Stop, Sync, SyncReport, UpdateSpec};
use upstream::{read_upstream, Known, SyncEnv, UpstreamRead};

use crate::{origin::OriginError, ServiceError};

/// One registered repository.
#[derive(Debug)]
pub struct RepositoryActor {
    component: RepositoryComponent,
    env: Arc<SyncEnv>,
}

impl RepositoryActor {
    /// An actor for `component` (loaded from the views, or new).
    pub fn new(component: RepositoryComponent, env: Arc<SyncEnv>) -> Self {
        Self { component, env }
    }
}

impl Actor for RepositoryActor {
    type Context = Context<Self>;
}

/// The error a client sees for a failed sync.
pub fn origin_error(e: &OriginError) -> ServiceError {
    match e {
        OriginError::BranchMissing { .. } => ServiceError::not_found(e.to_string()),
        OriginError::InvalidUrl(_) => ServiceError::bad_field("git.url", e.to_string()),
        _ => ServiceError::unavailable(format!("upstream unavailable ({}): {e}", e.class())),
    }
}

/// Appends `events` at the component's version, in appends of at most
/// `store.append-max-events` (a large first sync can exceed one) queued
/// together, keeping the component's version current after each. The last event (a
/// `SyncSucceeded` or `RepositoryClosed`) comes last, so a reader sees a
/// sync as finished only once all of it is committed; a crash in between
/// leaves a partial reconciliation that the next sync completes.
async fn append(
    env: &SyncEnv,
    component: &mut RepositoryComponent,
    events: Vec<Event>,
    metadata: Metadata,
) -> Result<(), ServiceError> {
    if events.is_empty() {
        return Ok(());
    }
    let max = env.store.config().append_max_events.max(1);
    // Each chunk its own exact-size vector (splitting one vector off
    // another would leave every chunk with the capacity of the whole).
    let mut chunks = Vec::with_capacity(events.len().div_ceil(max));
    let mut events = events.into_iter();
    loop {
        let chunk: Vec<Event> = events.by_ref().take(max).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    // Queued together: the writer commits them back to back, each chunk
    // expecting the version the previous one leaves.
    for appended in env
        .store
        .append_chunks_async(&component.stream, component.version, chunks, metadata)
        .await
    {
        component.committed(appended?.stream_version());
    }
    Ok(())
}

impl Handler<Register> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let mut component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let events = vec![event(Payload::RepositoryRegistered(RepositoryRegistered {
                    spec: Some(component.spec.clone()),
                }))];
                let result = append(&env, &mut component, events, msg.metadata).await;
                (component, result)
            }
            .into_actor(self)
            .map(|(component, result), act, _| {
                act.component = component;
                result
            }),
        ))
    }
}

impl Handler<Sync> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<SyncReport, ServiceError>>;

    fn handle(&mut self, msg: Sync, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let mut component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let result = sync_once(&env, &mut component, msg).await;
                // The component comes back whatever happened: it has seen
                // every append that committed.
                (component, result)
            }
            .into_actor(self)
            .map(|(component, result), act, _| {
                act.component = component;
                result
            }),
        ))
    }
}

/// One sync: `SyncStarted`, read the upstream and diff it against the view,
/// then the reconciliation ending with `SyncSucceeded` (in bounded appends)
/// — or `SyncFailed`.
async fn sync_once(
    env: &Arc<SyncEnv>,
    component: &mut RepositoryComponent,
    msg: Sync,
) -> Result<SyncReport, ServiceError> {
    let key = component.stream.to_string();
    let _slot = env.slots.acquire().await;
    let started = Instant::now();
    let metadata = msg.metadata;
    let next = msg.next;
    let opened = vec![event(Payload::SyncStarted(SyncStarted {
        trigger: msg.trigger.clone(),
    }))];
    // Git and the diff against the view, off the arbiter — while the
    // writer commits `SyncStarted` (queued first, so it still opens the
    // sync in the log; its fsync overlaps the fetch instead of preceding it).
    let read_env = env.clone();
    let snapshot = component.clone();
    let asked_at = msg.asked_at;
    let read = tokio::task::spawn_blocking(move || read(&read_env, &snapshot, asked_at, started));
    let (opened, outcome) = futures::join!(append(env, component, opened, metadata.clone()), read);
    opened?;
    let outcome = outcome.map_err(|e| ServiceError::internal(format!("sync task failed: {e}")))?;
    match outcome {
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
            append(env, component, events, metadata).await?;
            drop(pins); // the references are committed now
            if refs.is_some() {
                component.last_refs = refs;
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
            warn!(repo = %key, class = e.class(), error = %e, "sync failed");
            let failed = vec![event(Payload::SyncFailed(SyncFailed {
                error_class: e.class().to_owned(),
                message: e.to_string(),
                retry_at: next.as_ref().map(|n| timestamp(n.decide(Some(e.class())))),
            }))];
            append(env, component, failed, metadata).await?;
            Err(origin_error(&e))
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

/// Reads the upstream and diffs it against the views. Blocking.
fn read(
    env: &SyncEnv,
    component: &RepositoryComponent,
    asked_at: Instant,
    started: Instant,
) -> Result<Read, OriginError> {
    let views =
        |e: cairn_storage::StorageError| OriginError::Git(format!("reading the views: {e}"));
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
    match read_upstream(env, spec, asked_at, &known)? {
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

impl Handler<Command> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<command::Outcome, ServiceError>>;

    fn handle(&mut self, msg: Command, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let mut component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let result = run_command(&env, &mut component, msg).await;
                (component, result)
            }
            .into_actor(self)
            .map(|(component, result), act, _| {
                act.component = component;
                result
            }),
        ))
    }
}

/// One lifecycle command: the Git work and the read-back off the arbiter,
/// then its events, then the target as the view has it.
async fn run_command(
    env: &Arc<SyncEnv>,
    component: &mut RepositoryComponent,
    msg: Command,
) -> Result<command::Outcome, ServiceError> {
    let started = Instant::now();
    let verb = msg.op.verb();
    let (work_env, snapshot, op) = (env.clone(), component.clone(), msg.op);
    let principal = msg.metadata.principal.clone();
    let executed = tokio::task::spawn_blocking(move || {
        command::execute(&work_env, &snapshot, &op, &principal)
    })
    .await
    .map_err(|e| ServiceError::internal(format!("{verb} task failed: {e}")))?;
    let command::Executed {
        events,
        name,
        deleted,
        pins,
    } = match executed {
        Ok(executed) => executed,
        Err(e) => {
            info!(repo = %component.stream, verb, error = %e, "command refused");
            return Err(e);
        }
    };
    let count = events.len();
    append(env, component, events, msg.metadata).await?;
    drop(pins); // the references are committed now
    info!(repo = %component.stream, verb, revision = %name, events = count,
        duration_ms = started.elapsed().as_millis() as u64, "command done");
    if deleted {
        return Ok(command::Outcome::Deleted(name));
    }
    let store = env.store.clone();
    let namespace = component.spec.namespace.clone();
    let row = tokio::task::spawn_blocking(move || {
        cairn_storage::views::PackageRevisionsView::get(&store, &namespace, &name)
            .map(|row| (row, name))
    })
    .await
    .map_err(|e| ServiceError::internal(format!("{verb} task failed: {e}")))??;
    match row {
        (Some(row), _) => Ok(command::Outcome::Revision(Box::new(row))),
        (None, name) => Err(ServiceError::internal(format!(
            "the upstream accepted {verb} of {name}, but it does not read back as a package revision"
        ))),
    }
}

impl Handler<UpdateSpec> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<cairn_events::v1::RepositorySpec, ServiceError>>;

    fn handle(&mut self, msg: UpdateSpec, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let mut component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let spec = msg.spec;
                let events = vec![event(Payload::RepositorySpecChanged(
                    RepositorySpecChanged {
                        spec: Some(spec.clone()),
                    },
                ))];
                let result = append(&env, &mut component, events, msg.metadata)
                    .await
                    .map(|()| spec);
                (component, result)
            }
            .into_actor(self)
            .map(|(mut component, result), act, _| {
                if let Ok(spec) = &result {
                    component.spec = spec.clone();
                    component.last_refs = None;
                }
                act.component = component;
                result
            }),
        ))
    }
}

impl Handler<Close> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let mut component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let result = async {
                    let snapshot = component.clone();
                    let store = env.store.clone();
                    let current = tokio::task::spawn_blocking(move || snapshot.current(&store))
                        .await
                        .map_err(|e| ServiceError::internal(format!("close task failed: {e}")))??;
                    let events = RepositoryComponent::close_events(&current, "unregistered");
                    drop(current);
                    append(&env, &mut component, events, msg.metadata).await?;
                    (env.release_memory)();
                    Ok(())
                }
                .await;
                (component, result)
            }
            .into_actor(self)
            .map(|(component, result), act, ctx| {
                act.component = component;
                if result.is_ok() {
                    ctx.stop();
                }
                result
            }),
        ))
    }
}
impl Handler<Stop> for RepositoryActor {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
