//! The Registry: opens and closes repositories.
//!
//! It owns the map from `namespace/name` to RepositoryActor. At start it
//! opens every repository registered in the views (state comes back from
//! the views, never from memory) and asks each to sync in the background,
//! so lists answer at once after a restart and statuses catch up. Two
//! registrations of one URL share one local mirror and concurrent fetches
//! ([`crate::repository::upstream::Fetches`]); the mirror is removed with
//! the last registration of its URL.

pub mod messages;

use std::{collections::HashMap, sync::Arc, time::Instant};

use actix::prelude::*;
use cairn_events::envelope::Metadata;
use cairn_storage::{views::RepositoriesView, StorageError, Store};
use tracing::{info, warn};

pub use messages::{
    DiscoveryCount, FetchCount, RegisterRepository, Shutdown, SyncRepository, UnregisterRepository,
};

use crate::{
    repository::{
        upstream::SyncEnv, Close, Register, RepositoryActor, RepositoryComponent, Sync, SyncReport,
    },
    ServiceError,
};

type Key = (String, String);

#[derive(Debug)]
struct Entry {
    actor: Addr<RepositoryActor>,
    url: String,
}

/// The Registry actor.
#[derive(Debug)]
pub struct Registry {
    env: Arc<SyncEnv>,
    repositories: HashMap<Key, Entry>,
    /// Loaded from the views, started with the actor (actors start on the
    /// arbiter, not on the blocking thread that loads them).
    loaded: Vec<RepositoryComponent>,
}

impl Registry {
    /// Loads every registered repository from the views. Blocking; call
    /// before starting the actor.
    pub fn load(env: Arc<SyncEnv>) -> Result<Self, StorageError> {
        let mut loaded = Vec::new();
        for row in RepositoriesView::list(&env.store, None)? {
            let spec = row.spec.unwrap_or_default();
            if let Some(component) =
                RepositoryComponent::load(&env.store, &spec.namespace, &spec.name)?
            {
                loaded.push(component);
            }
        }
        info!(repositories = loaded.len(), "registry loaded");
        Ok(Self {
            env,
            repositories: HashMap::new(),
            loaded,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.env.store
    }

    fn actor(&self, namespace: &str, name: &str) -> Result<Addr<RepositoryActor>, ServiceError> {
        self.repositories
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|e| e.actor.clone())
            .ok_or_else(|| {
                ServiceError::not_found(format!("repository {namespace}/{name} not found"))
            })
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        for component in std::mem::take(&mut self.loaded) {
            let spec = &component.spec;
            let key = (spec.namespace.clone(), spec.name.clone());
            let url = spec.git.as_ref().map(|g| g.url.clone()).unwrap_or_default();
            let actor = RepositoryActor::new(component, self.env.clone()).start();
            self.repositories.insert(
                key.clone(),
                Entry {
                    actor: actor.clone(),
                    url,
                },
            );
            // Catch up with the upstream in the background; lists are
            // served from the views meanwhile.
            let request = actor.send(Sync {
                trigger: "startup".into(),
                asked_at: Instant::now(),
                metadata: Metadata::command("cairn").normalized(),
            });
            actix::spawn(async move {
                if let Ok(Err(e)) = request.await {
                    warn!(repo = %format!("{}/{}", key.0, key.1), error = %e, "startup sync failed");
                }
            });
        }
    }
}

impl Handler<RegisterRepository> for Registry {
    type Result =
        ResponseActFuture<Self, Result<Option<Result<SyncReport, ServiceError>>, ServiceError>>;

    fn handle(&mut self, msg: RegisterRepository, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.spec.namespace.clone(), msg.spec.name.clone());
        if self.repositories.contains_key(&key) {
            let err = ServiceError {
                code: 409,
                message: format!("repository {}/{} is already registered", key.0, key.1),
            };
            return Box::pin(fut::ready(Err(err)));
        }
        let url = msg
            .spec
            .git
            .as_ref()
            .map(|g| g.url.clone())
            .unwrap_or_default();
        let component = match RepositoryComponent::new(msg.spec) {
            Ok(c) => c,
            Err(e) => return Box::pin(fut::ready(Err(e.into()))),
        };
        let actor = RepositoryActor::new(component, self.env.clone()).start();
        // Taken at once, so a concurrent registration of the same name gets 409.
        self.repositories.insert(
            key.clone(),
            Entry {
                actor: actor.clone(),
                url,
            },
        );
        let metadata = msg.metadata;
        let wait = msg.wait;
        Box::pin(
            async move {
                let registered = actor
                    .send(Register {
                        metadata: metadata.clone(),
                    })
                    .await
                    .map_err(ServiceError::from);
                if let Err(e) = registered.and_then(|r| r) {
                    return (false, Err(e));
                }
                let sync = Sync {
                    trigger: "register".into(),
                    asked_at: Instant::now(),
                    metadata,
                };
                if wait {
                    (
                        true,
                        actor.send(sync).await.map_err(ServiceError::from).map(Some),
                    )
                } else {
                    actix::spawn(async move {
                        let _ = actor.send(sync).await;
                    });
                    (true, Ok(None))
                }
            }
            .into_actor(self)
            .map(move |(registered, result), act, _| {
                if !registered {
                    // The registration did not commit: nothing is registered.
                    act.repositories.remove(&key);
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
            return Box::pin(fut::ready(Err(ServiceError::not_found(format!(
                "repository {}/{} not found",
                msg.namespace, msg.name
            )))));
        };
        let url = entry.url.clone();
        let last_of_url = !self.repositories.values().any(|e| e.url == url);
        let env = self.env.clone();
        let actor = entry.actor.clone();
        Box::pin(
            async move {
                actor
                    .send(Close {
                        metadata: msg.metadata,
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
            .into_actor(self)
            .map(move |result, act, _| {
                if result.is_err() {
                    // Not closed: keep serving it.
                    act.repositories.insert(key, entry);
                }
                result
            }),
        )
    }
}

impl Handler<SyncRepository> for Registry {
    type Result = ResponseFuture<Result<SyncReport, ServiceError>>;

    fn handle(&mut self, msg: SyncRepository, _ctx: &mut Self::Context) -> Self::Result {
        let actor = self.actor(&msg.namespace, &msg.name);
        Box::pin(async move {
            actor?
                .send(Sync {
                    trigger: msg.trigger,
                    asked_at: msg.asked_at,
                    metadata: msg.metadata,
                })
                .await?
        })
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

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        let actors: Vec<_> = self.repositories.drain().map(|(_, e)| e.actor).collect();
        Box::pin(
            async move {
                for actor in actors {
                    // Queued after any command in flight, so those finish.
                    let _ = actor.send(crate::repository::Stop).await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}
