//! The Registry: opens and closes repositories.
//!
//! It owns the map from `namespace/name` to RepositoryActor. At start it
//! opens every repository registered in the views (state comes back from
//! the views, never from memory) and asks each to sync in the background,
//! so lists answer at once after a restart and statuses catch up. Two
//! registrations of one URL share one local mirror and concurrent fetches
//! ([`crate::repository::upstream::Fetches`]); the mirror is removed with
//! the last registration of its URL.
//!
//! Each repository has a SyncManager ([`crate::schedule`]) next to its
//! RepositoryActor: syncs — at start-up, at registration, manual and
//! scheduled — go through it, so it always knows when the next one is due.
//! The manager reaches its repository through a `Recipient<RunSync>`.
//!
//! Every message carries the span of the command that caused it, and the
//! registry passes it on to the actors it asks.
//!
//! # Layout
//! - [`error`] — [`RegistryError`] (not found, already registered).
//! - [`messages`] — `RegisterRepository`, `UnregisterRepository`,
//!   `SyncRepository`, `UpdateRepository`, `RouteLifecycle`, `NextSyncOf`,
//!   the counters (`FetchCount`, `DiscoveryCount`, `RefsRead`), `Shutdown`.

pub mod error;
pub mod messages;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use actix::prelude::*;
use cairn_storage::{views::RepositoriesView, StorageError, Store};
use tracing::{info, warn, Instrument};

pub use error::RegistryError;
pub use messages::{
    DiscoveryCount, FetchCount, NextSyncOf, RefsRead, RegisterRepository, RouteLifecycle, Shutdown,
    SyncRepository, UnregisterRepository, UpdateRepository,
};

use crate::{
    repository::{
        upstream::SyncEnv, Close, LifecycleOutcome, Register, RepositoryActor, RepositoryComponent,
        UpdateSpec,
    },
    schedule::{NextDue, Replan, Scheduling, StopManager, SyncManager, SyncNow, SyncReport},
    writer::StopWriter,
    ServiceError,
};

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    actor: Addr<RepositoryActor>,
    manager: Addr<SyncManager>,
    url: String,
}

/// The Registry actor.
#[derive(Debug)]
pub struct Registry {
    env: Arc<SyncEnv>,
    scheduling: Scheduling,
    repositories: HashMap<Key, Entry>,
    /// Loaded from the views with their last sync time, started with the
    /// actor (actors start on the arbiter, not on the blocking thread that
    /// loads them).
    loaded: Vec<(RepositoryComponent, Option<SystemTime>)>,
}

impl Registry {
    /// Loads every registered repository from the views. Blocking; call
    /// before starting the actor.
    pub fn load(env: Arc<SyncEnv>, scheduling: Scheduling) -> Result<Self, StorageError> {
        let mut loaded = Vec::new();
        for row in RepositoriesView::list(&env.store, None)? {
            let last_sync_at = row
                .status
                .as_ref()
                .and_then(|s| s.last_sync_at.as_ref())
                .and_then(|t| {
                    Some(
                        SystemTime::UNIX_EPOCH
                            + Duration::new(u64::try_from(t.seconds).ok()?, t.nanos.max(0) as u32),
                    )
                });
            let spec = row.spec.unwrap_or_default();
            if let Some(component) =
                RepositoryComponent::load(&env.store, &spec.namespace, &spec.name)?
            {
                loaded.push((component, last_sync_at));
            }
        }
        info!(repositories = loaded.len(), "registry loaded");
        Ok(Self {
            env,
            scheduling,
            repositories: HashMap::new(),
            loaded,
        })
    }

    /// Starts a repository's actor and its SyncManager.
    fn open(
        &mut self,
        component: RepositoryComponent,
        last_sync_at: Option<SystemTime>,
        first: Option<&'static str>,
    ) -> Entry {
        let spec = component.spec.clone();
        let url = spec.git.as_ref().map(|g| g.url.clone()).unwrap_or_default();
        let actor = RepositoryActor::new(component, self.env.clone()).start();
        let manager = SyncManager::new(
            actor.clone().recipient(),
            format!("{}/{}", spec.namespace, spec.name),
            spec.sync,
            self.scheduling.clone(),
            last_sync_at,
            first,
        )
        .start();
        Entry {
            actor,
            manager,
            url,
        }
    }

    fn manager(&self, namespace: &str, name: &str) -> Result<Addr<SyncManager>, ServiceError> {
        self.repositories
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|e| e.manager.clone())
            .ok_or_else(|| RegistryError::not_found(namespace, name).into())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.env.store
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        for (component, last_sync_at) in std::mem::take(&mut self.loaded) {
            let key = (
                component.spec.namespace.clone(),
                component.spec.name.clone(),
            );
            // Catch up with the upstream in the background at once; lists
            // are served from the views meanwhile.
            let entry = self.open(component, last_sync_at, Some("startup"));
            self.repositories.insert(key, entry);
        }
    }
}

impl Handler<RegisterRepository> for Registry {
    type Result =
        ResponseActFuture<Self, Result<Option<Result<SyncReport, ServiceError>>, ServiceError>>;

    fn handle(&mut self, msg: RegisterRepository, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.spec.namespace.clone(), msg.spec.name.clone());
        if self.repositories.contains_key(&key) {
            let err = RegistryError::AlreadyRegistered {
                namespace: key.0,
                name: key.1,
            }
            .into();
            return Box::pin(fut::ready(Err(err)));
        }
        let component = match RepositoryComponent::new(msg.spec) {
            Ok(c) => c,
            Err(e) => return Box::pin(fut::ready(Err(e.into()))),
        };
        let entry = self.open(component, None, None);
        let (actor, manager) = (entry.actor.clone(), entry.manager.clone());
        // Taken at once, so a concurrent registration of the same name gets 409.
        self.repositories.insert(key.clone(), entry);
        let metadata = msg.metadata;
        let wait = msg.wait;
        let span = msg.span;
        let register_span = span.clone();
        Box::pin(
            async move {
                let registered = actor
                    .send(Register {
                        metadata: metadata.clone(),
                        span: span.clone(),
                    })
                    .await
                    .map_err(ServiceError::from);
                if let Err(e) = registered.and_then(|r| r) {
                    return (false, Err(e));
                }
                let sync = SyncNow {
                    trigger: "register".into(),
                    asked_at: Instant::now(),
                    metadata,
                    span,
                };
                if wait {
                    (
                        true,
                        manager
                            .send(sync)
                            .await
                            .map_err(ServiceError::from)
                            .map(Some),
                    )
                } else {
                    actix::spawn(async move {
                        let _ = manager.send(sync).await;
                    });
                    (true, Ok(None))
                }
            }
            .instrument(register_span)
            .into_actor(self)
            .map(move |(registered, result), act, _| {
                if !registered {
                    // The registration did not commit: nothing is registered.
                    if let Some(entry) = act.repositories.remove(&key) {
                        entry.manager.do_send(StopManager);
                        entry.actor.do_send(StopWriter);
                    }
                }
                result
            }),
        )
    }
}

impl Handler<UnregisterRepository> for Registry {
    type Result = ResponseActFuture<Self, Result<(), ServiceError>>;

    fn handle(&mut self, msg: UnregisterRepository, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.namespace.clone(), msg.name.clone());
        let Some(entry) = self.repositories.remove(&key) else {
            return Box::pin(fut::ready(Err(RegistryError::not_found(
                &msg.namespace,
                &msg.name,
            )
            .into())));
        };
        let url = entry.url.clone();
        let last_of_url = !self.repositories.values().any(|e| e.url == url);
        let env = self.env.clone();
        let actor = entry.actor.clone();
        let manager = entry.manager.clone();
        let span = msg.span;
        Box::pin(
            async move {
                actor
                    .send(Close {
                        metadata: msg.metadata,
                        span: tracing::Span::current(),
                    })
                    .await??;
                if last_of_url && !url.is_empty() {
                    let removed =
                        tokio::task::spawn_blocking(move || env.fetches.remove(&url)).await;
                    if let Ok(Err(e)) = removed {
                        warn!(error = %e, "cannot remove the local mirror");
                    }
                }
                Ok(())
            }
            .instrument(span)
            .into_actor(self)
            .map(move |result, act, _| {
                if result.is_err() {
                    // Not closed: keep serving it.
                    act.repositories.insert(key, entry);
                } else {
                    manager.do_send(StopManager);
                }
                result
            }),
        )
    }
}

impl Handler<SyncRepository> for Registry {
    type Result = ResponseFuture<Result<SyncReport, ServiceError>>;

    fn handle(&mut self, msg: SyncRepository, _ctx: &mut Self::Context) -> Self::Result {
        let manager = self.manager(&msg.namespace, &msg.name);
        Box::pin(async move {
            manager?
                .send(SyncNow {
                    trigger: msg.trigger,
                    asked_at: msg.asked_at,
                    metadata: msg.metadata,
                    span: msg.span,
                })
                .await?
        })
    }
}

impl Handler<RouteLifecycle> for Registry {
    type Result = ResponseFuture<Result<LifecycleOutcome, ServiceError>>;

    fn handle(&mut self, msg: RouteLifecycle, _ctx: &mut Self::Context) -> Self::Result {
        let actor = self
            .repositories
            .get(&(msg.namespace.clone(), msg.name.clone()))
            .map(|e| e.actor.clone());
        Box::pin(async move {
            let actor = actor.ok_or_else(|| RegistryError::not_found(&msg.namespace, &msg.name))?;
            actor.send(msg.lifecycle).await?
        })
    }
}

impl Handler<UpdateRepository> for Registry {
    type Result = ResponseFuture<Result<cairn_events::v1::RepositorySpec, ServiceError>>;

    fn handle(&mut self, msg: UpdateRepository, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.spec.namespace.clone(), msg.spec.name.clone());
        let entry = self
            .repositories
            .get(&key)
            .map(|e| (e.actor.clone(), e.manager.clone()));
        let span = msg.span;
        Box::pin(async move {
            let (actor, manager) = entry.ok_or_else(|| RegistryError::not_found(&key.0, &key.1))?;
            let spec = actor
                .send(UpdateSpec {
                    spec: msg.spec,
                    metadata: msg.metadata,
                    span: span.clone(),
                })
                .await??;
            manager
                .send(Replan {
                    sync: spec.sync.clone(),
                    span,
                })
                .await?;
            Ok(spec)
        })
    }
}

impl Handler<NextSyncOf> for Registry {
    type Result = ResponseFuture<Option<(SystemTime, &'static str)>>;

    fn handle(&mut self, msg: NextSyncOf, _ctx: &mut Self::Context) -> Self::Result {
        let manager = self.manager(&msg.namespace, &msg.name).ok();
        Box::pin(async move { manager?.send(NextDue).await.ok().flatten() })
    }
}

impl Handler<FetchCount> for Registry {
    type Result = u64;

    fn handle(&mut self, _msg: FetchCount, _ctx: &mut Self::Context) -> u64 {
        self.env.fetches.count()
    }
}

impl Handler<DiscoveryCount> for Registry {
    type Result = u64;

    fn handle(&mut self, _msg: DiscoveryCount, _ctx: &mut Self::Context) -> u64 {
        self.env
            .discoveries
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Handler<RefsRead> for Registry {
    type Result = u64;

    fn handle(&mut self, _msg: RefsRead, _ctx: &mut Self::Context) -> u64 {
        self.env
            .refs_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let entries: Vec<_> = self.repositories.drain().map(|(_, e)| e).collect();
        Box::pin(
            async move {
                // Managers first: no new sync starts.
                for entry in &entries {
                    let _ = entry.manager.send(StopManager).await;
                }
                for actor in entries.into_iter().map(|e| e.actor) {
                    // Queued after any command in flight, so those finish.
                    let _ = actor.send(StopWriter).await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}
