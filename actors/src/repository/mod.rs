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
//! - [`messages`] — `Register`, `Sync`, `Close`.

pub mod component;
pub mod messages;
pub mod upstream;

use std::{sync::Arc, time::Instant};

use actix::prelude::*;
use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, Event, RepositoryRegistered, SyncFailed, SyncStarted},
};
use cairn_storage::ExpectedVersion;
use tracing::{info, warn};

pub use component::RepositoryComponent;
pub use messages::{Close, Register, Stop, Sync, SyncReport};
use upstream::{read_upstream, SyncEnv};

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

async fn append(
    env: &SyncEnv,
    component: &RepositoryComponent,
    events: Vec<Event>,
    metadata: Metadata,
) -> Result<u64, ServiceError> {
    let appended = env
        .store
        .append_async(
            &component.stream,
            ExpectedVersion::Exact(component.version),
            events,
            metadata,
        )
        .await?;
    Ok(appended.stream_version())
}

impl Handler<Register> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let events = vec![event(Payload::RepositoryRegistered(RepositoryRegistered {
                    spec: Some(component.spec.clone()),
                }))];
                let version = append(&env, &component, events.clone(), msg.metadata).await?;
                Ok((events, version))
            }
            .into_actor(self)
            .map(|result: Result<(Vec<Event>, u64), ServiceError>, act, _| {
                let (events, version) = result?;
                act.component.committed(&events, version);
                Ok(())
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

/// One sync: `SyncStarted`, read the upstream, then the reconciliation and
/// `SyncSucceeded` in one append — or `SyncFailed`.
async fn sync_once(
    env: &Arc<SyncEnv>,
    component: &mut RepositoryComponent,
    msg: Sync,
) -> Result<SyncReport, ServiceError> {
    let key = component.stream.to_string();
    let started = Instant::now();
    let metadata = msg.metadata;
    let opened = vec![event(Payload::SyncStarted(SyncStarted {
        trigger: msg.trigger.clone(),
    }))];
    let version = append(env, component, opened.clone(), metadata.clone()).await?;
    component.committed(&opened, version);

    let spec = component.spec.clone();
    let read_env = env.clone();
    let asked_at = msg.asked_at;
    let upstream = tokio::task::spawn_blocking(move || read_upstream(&read_env, &spec, asked_at))
        .await
        .map_err(|e| ServiceError::internal(format!("sync task failed: {e}")))?;
    match upstream {
        Ok(upstream) => {
            let duration_ms = started.elapsed().as_millis() as u64;
            let (events, changes) =
                component.sync_events(&upstream.revisions, &upstream.commit, duration_ms);
            let version = append(env, component, events.clone(), metadata).await?;
            drop(upstream.pins); // the references are committed now
            component.committed(&events, version);
            info!(repo = %key, added = changes.added, modified = changes.modified, deleted = changes.deleted, duration_ms, "sync finished");
            Ok(SyncReport {
                added: changes.added,
                modified: changes.modified,
                deleted: changes.deleted,
                package_count: component.revisions.len() as u32,
            })
        }
        Err(e) => {
            warn!(repo = %key, class = e.class(), error = %e, "sync failed");
            let failed = vec![event(Payload::SyncFailed(SyncFailed {
                error_class: e.class().to_owned(),
                message: e.to_string(),
                retry_at: None,
            }))];
            let version = append(env, component, failed.clone(), metadata).await?;
            component.committed(&failed, version);
            Err(origin_error(&e))
        }
    }
}

impl Handler<Close> for RepositoryActor {
    type Result = AtomicResponse<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: Close, _ctx: &mut Self::Context) -> Self::Result {
        let env = self.env.clone();
        let component = self.component.clone();
        AtomicResponse::new(Box::pin(
            async move {
                let events = component.close_events("unregistered");
                let version = append(&env, &component, events.clone(), msg.metadata).await?;
                Ok((events, version))
            }
            .into_actor(self)
            .map(
                |result: Result<(Vec<Event>, u64), ServiceError>, act, ctx| {
                    let (events, version) = result?;
                    act.component.committed(&events, version);
                    ctx.stop();
                    Ok(())
                },
            ),
        ))
    }
}

impl Handler<Stop> for RepositoryActor {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
