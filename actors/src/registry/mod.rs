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
//! Every message carries the span of the command that caused it; the
//! registry handles it in a span of its own (`registry.register`,
//! `registry.sync`, …, a child of the command's, naming the repository)
//! and passes that on to the actors it asks.
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
    DiscoveryCount, DisownStream, FetchCount, NextSyncOf, OwnStream, RefsRead, RegisterRepository,
    RouteLifecycle, Shutdown, SyncRepository, UnregisterRepository, UpdateRepository,
};

use crate::{
    repository::{
        upstream::SyncEnv, Close, LifecycleOutcome, Register, RepositoryActor, RepositoryComponent,
        UpdateSpec,
    },
    schedule::{
        NextDue, PlanFor, Replan, Scheduling, StopManager, SyncManager, SyncNow, SyncReport,
    },
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
    /// Commands running now, per repository (a stream handed over waits
    /// for its own to finish).
    busy: Arc<Busy>,
    /// Repositories being handed over to another node: new commands are
    /// refused (503, the forwarder routes them again).
    leaving: std::collections::HashSet<Key>,
    /// In a cluster: a registered repository this node does not have open
    /// is another node's (503, routed again), not a 404.
    cluster: bool,
}

/// Commands running per repository.
#[derive(Debug, Default)]
struct Busy {
    running: std::sync::Mutex<HashMap<Key, usize>>,
    idle: tokio::sync::Notify,
}

/// One running command of a repository; the count drops with it.
#[derive(Debug)]
struct Running {
    busy: Arc<Busy>,
    key: Key,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.busy.running.lock().expect("busy lock");
        if let Some(n) = running.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.key);
            }
        }
        drop(running);
        self.busy.idle.notify_waiters();
    }
}

/// Longest a handed-over repository waits for its running commands.
const HANDOVER_DRAIN_MAX: Duration = Duration::from_secs(60);

impl Registry {
    /// Loads every registered repository from the views. Blocking; call
    /// before starting the actor.
    pub fn load(env: Arc<SyncEnv>, scheduling: Scheduling) -> Result<Self, StorageError> {
        let mut loaded = Vec::new();
        for row in RepositoriesView::list(&env.store, None)? {
            let spec = row.spec.unwrap_or_default();
            if let Some(found) = load_one(&env.store, &spec.namespace, &spec.name)? {
                loaded.push(found);
            }
        }
        info!(repositories = loaded.len(), "registry loaded");
        Ok(Self {
            env,
            scheduling,
            repositories: HashMap::new(),
            loaded,
            busy: Arc::default(),
            leaving: Default::default(),
            cluster: false,
        })
    }

    /// A registry for a cluster node: it opens nothing at start, only the
    /// repositories whose streams this node comes to own ([`OwnStream`]).
    pub fn for_cluster(env: Arc<SyncEnv>, scheduling: Scheduling) -> Self {
        Self {
            env,
            scheduling,
            repositories: HashMap::new(),
            loaded: Vec::new(),
            busy: Arc::default(),
            leaving: Default::default(),
            cluster: true,
        }
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

    /// Counts a command of `key` as running, unless the repository is
    /// being handed over (503: the forwarder routes it again).
    fn begin(&self, key: &Key) -> Result<Running, ServiceError> {
        if self.leaving.contains(key) {
            return Err(ServiceError::unavailable(format!(
                "this node does not own stream repo/{}/{} any more: it is handing it over to another node; retry",
                key.0, key.1
            )));
        }
        *self
            .busy
            .running
            .lock()
            .expect("busy lock")
            .entry(key.clone())
            .or_default() += 1;
        Ok(Running {
            busy: self.busy.clone(),
            key: key.clone(),
        })
    }

    fn manager(&self, namespace: &str, name: &str) -> Result<Addr<SyncManager>, ServiceError> {
        self.repositories
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|e| e.manager.clone())
            .ok_or_else(|| self.missing(&(namespace.to_owned(), name.to_owned())))
    }

    /// Why `key` has no actor here: not registered (404) or, in a cluster,
    /// another node's — it just moved (503, routed again).
    fn missing(&self, key: &Key) -> ServiceError {
        let registered = self.cluster
            && RepositoriesView::get(&self.env.store, &key.0, &key.1)
                .ok()
                .flatten()
                .is_some();
        if registered {
            ServiceError::unavailable(format!(
                "this node does not own stream repo/{}/{} (it moved); retry",
                key.0, key.1
            ))
        } else {
            RegistryError::not_found(&key.0, &key.1).into()
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.env.store
    }
}

/// Repository `namespace/name` as registered in the views, with its last
/// sync time; `None` when it is not registered.
fn load_one(
    store: &Store,
    namespace: &str,
    name: &str,
) -> Result<Option<(RepositoryComponent, Option<SystemTime>)>, StorageError> {
    let Some(row) = RepositoriesView::get(store, namespace, name)? else {
        return Ok(None);
    };
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
    Ok(RepositoryComponent::load(store, namespace, name)?.map(|c| (c, last_sync_at)))
}

impl Handler<OwnStream> for Registry {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, msg: OwnStream, _ctx: &mut Self::Context) -> Self::Result {
        let Some((namespace, name)) = msg
            .stream
            .as_repository()
            .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
        else {
            return Box::pin(fut::ready(Ok(())));
        };
        let key = (namespace.clone(), name.clone());
        if self.repositories.contains_key(&key) {
            return Box::pin(fut::ready(Ok(())));
        }
        let store = self.env.store.clone();
        Box::pin(
            async move {
                tokio::task::spawn_blocking(move || load_one(&store, &namespace, &name))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            .into_actor(self)
            .map(move |loaded, act, _| {
                if let Some((component, last_sync_at)) = loaded? {
                    if !act.repositories.contains_key(&key) {
                        info!(repo = %format_args!("{}/{}", key.0, key.1), "repository taken over");
                        let entry = act.open(component, last_sync_at, Some("takeover"));
                        act.repositories.insert(key, entry);
                    }
                }
                Ok(())
            }),
        )
    }
}

impl Handler<DisownStream> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: DisownStream, _ctx: &mut Self::Context) -> Self::Result {
        let Some(key) = msg
            .stream
            .as_repository()
            .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
        else {
            return Box::pin(fut::ready(()));
        };
        // New commands are refused from now; the running ones finish
        // (bounded), then the manager and the writer stop.
        self.leaving.insert(key.clone());
        let busy = self.busy.clone();
        let waited = key.clone();
        Box::pin(
            async move {
                let drained = tokio::time::timeout(HANDOVER_DRAIN_MAX, async {
                    loop {
                        let idle = busy.idle.notified();
                        if !busy.running.lock().expect("busy lock").contains_key(&waited) {
                            return;
                        }
                        idle.await;
                    }
                })
                .await;
                if drained.is_err() {
                    warn!(repo = %format_args!("{}/{}", waited.0, waited.1), "handing over with commands still running");
                }
            }
            .into_actor(self)
            .then(move |(), act, _| {
                act.leaving.remove(&key);
                let entry = act.repositories.remove(&key);
                async move {
                    if let Some(entry) = entry {
                        let _ = entry.manager.send(StopManager).await;
                        // Queued after any command in flight, so those finish.
                        let _ = entry.actor.send(StopWriter).await;
                    }
                }
                .into_actor(act)
            }),
        )
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
        let running = match self.begin(&key) {
            Ok(running) => running,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
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
        let span = tracing::info_span!(parent: &msg.span, "registry.register", repo = %format_args!("{}/{}", key.0, key.1));
        let register_span = span.clone();
        Box::pin(
            async move {
                let _running = running;
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
        let running = match self.begin(&key) {
            Ok(running) => running,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
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
        let span = tracing::info_span!(parent: &msg.span, "registry.unregister", repo = %format_args!("{}/{}", key.0, key.1));
        let close_span = span.clone();
        Box::pin(
            async move {
                let _running = running;
                actor
                    .send(Close {
                        metadata: msg.metadata,
                        span: close_span,
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
        let key = (msg.namespace, msg.name);
        let running = self.begin(&key);
        let span = tracing::info_span!(parent: &msg.span, "registry.sync", repo = %format_args!("{}/{}", key.0, key.1));
        Box::pin(
            async move {
                let _running = running?;
                manager?
                    .send(SyncNow {
                        trigger: msg.trigger,
                        asked_at: msg.asked_at,
                        metadata: msg.metadata,
                        span: tracing::Span::current(),
                    })
                    .await?
            }
            .instrument(span),
        )
    }
}

impl Handler<RouteLifecycle> for Registry {
    type Result = ResponseFuture<Result<LifecycleOutcome, ServiceError>>;

    fn handle(&mut self, msg: RouteLifecycle, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.namespace, msg.name);
        let actor = self
            .repositories
            .get(&key)
            .map(|e| e.actor.clone())
            .ok_or_else(|| self.missing(&key));
        let running = self.begin(&key);
        let mut lifecycle = msg.lifecycle;
        let span = tracing::info_span!(parent: &lifecycle.span, "registry.route", repo = %format_args!("{}/{}", key.0, key.1), verb = lifecycle.op.verb());
        lifecycle.span = span.clone();
        Box::pin(
            async move {
                let _running = running?;
                let actor = actor?;
                actor.send(lifecycle).await?
            }
            .instrument(span),
        )
    }
}

impl Handler<UpdateRepository> for Registry {
    type Result = ResponseFuture<Result<cairn_events::v1::RepositorySpec, ServiceError>>;

    fn handle(&mut self, msg: UpdateRepository, _ctx: &mut Self::Context) -> Self::Result {
        let key = (msg.spec.namespace.clone(), msg.spec.name.clone());
        let entry = self
            .repositories
            .get(&key)
            .map(|e| (e.actor.clone(), e.manager.clone()))
            .ok_or_else(|| self.missing(&key));
        let running = self.begin(&key);
        let span = tracing::info_span!(parent: &msg.span, "registry.update", repo = %format_args!("{}/{}", key.0, key.1));
        let update_span = span.clone();
        Box::pin(
            async move {
                let _running = running?;
                let (actor, manager) = entry?;
                // The next time under the new spec is decided first and
                // recorded with it, then armed as is: the status a client
                // reads and the timer agree (as after a sync).
                let next = manager
                    .send(PlanFor {
                        sync: msg.spec.sync.clone(),
                    })
                    .await?;
                let spec = actor
                    .send(UpdateSpec {
                        spec: msg.spec,
                        next_sync_at: Some(crate::repository::sync::timestamp(next.at)),
                        metadata: msg.metadata,
                        span: span.clone(),
                    })
                    .await??;
                manager
                    .send(Replan {
                        sync: spec.sync.clone(),
                        next: Some(next),
                        span,
                    })
                    .await?;
                Ok(spec)
            }
            .instrument(update_span),
        )
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_events::v1::{GitSpec, RepositorySpec};
    use cairn_storage::{views::default_views, StoreConfig};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::{
        origin::GitCache,
        repository::{
            upstream::{Fetches, Secrets},
            ApplyLifecycle, LifecycleOp, Source,
        },
        schedule::{SyncPolicy, SystemClock},
        service::{codec::Format, command_span, metadata, record_stream, Incoming},
        test_spans::Capture,
        timing::SyncSlots,
    };

    /// The metadata of a command of `endpoint` on `ns/r` by `principal`,
    /// recorded on its span as the service does.
    fn command(endpoint: &'static str) -> (tracing::Span, cairn_events::envelope::Metadata) {
        let span = command_span(endpoint);
        let metadata = span.in_scope(|| {
            record_stream("ns", "r");
            let request = Incoming {
                format: Format::Json,
                body: Vec::new(),
                payload: bytes::Bytes::new(),
                headers: None,
                request: None,
            };
            metadata(&request, Some("alice".into()))
        });
        (span, metadata)
    }

    /// At INFO (the node's default level), a command's span records its
    /// endpoint, stream, principal and correlation id, and every span its
    /// messages cause — the registry's (register, route, sync, update,
    /// unregister), the manager's (sync, replan), the writer's, the sync's
    /// and the lifecycle command's — is its descendant.
    #[test]
    fn a_commands_spans_form_one_tree_at_info() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(capture.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let upstream_dir = dir.path().join("upstream.git");
        crate::test_git::upstream_with_one_package(&upstream_dir);
        let (register, register_metadata) = command("repo.register");
        let (create, create_metadata) = command("pkgrev.create");
        let (sync, sync_metadata) = command("repo.sync");
        let (update, update_metadata) = command("repo.update");
        let (unregister, unregister_metadata) = command("repo.unregister");
        actix_rt::System::new().block_on(async {
            let store =
                Store::open(StoreConfig::new(dir.path().join("db")), default_views()).unwrap();
            let env = Arc::new(SyncEnv {
                store,
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
            let scheduling = Scheduling {
                policy: Arc::new(SyncPolicy::default()),
                clock: Arc::new(SystemClock),
            };
            let registry = Registry::load(env, scheduling).unwrap().start();
            let spec = RepositorySpec {
                namespace: "ns".into(),
                name: "r".into(),
                r#type: "git".into(),
                git: Some(GitSpec {
                    url: format!("file://{}", upstream_dir.display()),
                    branch: "main".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let registered = registry
                .send(RegisterRepository {
                    spec: spec.clone(),
                    wait: true,
                    metadata: register_metadata.clone(),
                    span: register.clone(),
                })
                .await
                .unwrap();
            assert_eq!(
                registered.unwrap().unwrap().unwrap(),
                SyncReport {
                    added: 2,
                    modified: 0,
                    deleted: 0,
                    package_count: 2
                }
            );
            let created = registry
                .send(RouteLifecycle {
                    namespace: "ns".into(),
                    name: "r".into(),
                    lifecycle: ApplyLifecycle {
                        op: LifecycleOp::Create {
                            path: String::new(),
                            package: "new".into(),
                            workspace: "ws".into(),
                            source: Source::Init,
                        },
                        metadata: create_metadata.clone(),
                        span: create.clone(),
                    },
                })
                .await
                .unwrap();
            assert!(
                matches!(created, Ok(LifecycleOutcome::Revision(_))),
                "{created:?}"
            );
            let synced = registry
                .send(SyncRepository {
                    namespace: "ns".into(),
                    name: "r".into(),
                    trigger: "manual".into(),
                    asked_at: Instant::now(),
                    metadata: sync_metadata,
                    span: sync.clone(),
                })
                .await
                .unwrap();
            assert_eq!(
                synced.unwrap(),
                SyncReport {
                    added: 0,
                    modified: 0,
                    deleted: 0,
                    package_count: 3
                }
            );
            let deployment = RepositorySpec {
                deployment: true,
                ..spec
            };
            let updated = registry
                .send(UpdateRepository {
                    spec: deployment.clone(),
                    metadata: update_metadata,
                    span: update.clone(),
                })
                .await
                .unwrap();
            assert_eq!(updated.unwrap(), deployment);
            registry
                .send(UnregisterRepository {
                    namespace: "ns".into(),
                    name: "r".into(),
                    metadata: unregister_metadata,
                    span: unregister.clone(),
                })
                .await
                .unwrap()
                .unwrap();
            registry.send(Shutdown).await.unwrap();
        });
        let fields = capture.fields_of("command", "repo.register");
        assert_eq!(
            fields,
            [BTreeMap::from([
                ("endpoint".to_owned(), "repo.register".to_owned()),
                ("stream".to_owned(), "repo/ns/r".to_owned()),
                ("principal".to_owned(), "alice".to_owned()),
                (
                    "correlation_id".to_owned(),
                    register_metadata.correlation_id.clone()
                ),
            ])]
        );
        let mut chains = capture.chains();
        chains.sort();
        assert_eq!(
            chains,
            [
                "append < run < writer < registry.route < command",
                "append < sync.store < sync_once < writer < schedule.sync < registry.register < command",
                "append < sync_once < writer < schedule.sync < registry.register < command",
                "append < sync_once < writer < schedule.sync < registry.register < command",
                "append < sync_once < writer < schedule.sync < registry.sync < command",
                "append < sync_once < writer < schedule.sync < registry.sync < command",
                "append < writer < registry.register < command",
                "append < writer < registry.unregister < command",
                "append < writer < registry.update < command",
                "command",
                "command",
                "command",
                "command",
                "command",
                "git.push < run < writer < registry.route < command",
                "registry.register < command",
                "registry.route < command",
                "registry.sync < command",
                "registry.unregister < command",
                "registry.update < command",
                "run < writer < registry.route < command",
                "schedule.replan < registry.update < command",
                "schedule.sync < registry.register < command",
                "schedule.sync < registry.sync < command",
                "sync.discovery < sync_once < writer < schedule.sync < registry.register < command",
                "sync.discovery < sync_once < writer < schedule.sync < registry.sync < command",
                "sync.fetch < sync_once < writer < schedule.sync < registry.register < command",
                "sync.fetch < sync_once < writer < schedule.sync < registry.sync < command",
                "sync.store < sync_once < writer < schedule.sync < registry.register < command",
                "sync.store < sync_once < writer < schedule.sync < registry.sync < command",
                "sync_once < writer < schedule.sync < registry.register < command",
                "sync_once < writer < schedule.sync < registry.sync < command",
                "writer < registry.register < command",
                "writer < registry.route < command",
                "writer < registry.unregister < command",
                "writer < registry.update < command",
                "writer < schedule.sync < registry.register < command",
                "writer < schedule.sync < registry.sync < command",
            ]
        );
    }
}
