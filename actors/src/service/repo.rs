//! `cairn.v1.repo.*`: register, unregister, get, list, sync, update.
//!
//! A repository in replies:
//! `{"namespace","name","type","git":{"url","branch","directory","create_branch","secret_ref"},
//! "sync":{"schedule","run_once_at"},"deployment","status":{"ready","reason","message",
//! "error_class","commit","package_count","last_sync_at","next_sync_at"}}` — the status derived
//! from the repository's sync events (`reason` is `Reconciling` until the first sync finished,
//! then `Ready` or `Error`; `next_sync_at` is when its SyncManager syncs next, or retries).

use std::time::Instant;

use cairn_events::v1::{self as pb, GitSpec, RepositoryRow, RepositorySpec, RequestRow, SyncSpec};
use cairn_storage::views::RepositoriesView;
use futures::future::BoxFuture;

use super::idempotency::Replayed;
use prost::Message as _;
use serde_json::{json, Value};

use super::{
    codec::{Body, Format},
    context::{blocking, metadata, Incoming, ServiceContext},
    fields::Fields,
    validate,
};
use crate::{
    origin,
    registry::{
        RegisterRepository, RegistryError, SyncRepository, UnregisterRepository, UpdateRepository,
    },
    repository::upstream::parse_timestamp,
    schedule::{plan::parse_schedule, Schedule, SyncReport},
    ServiceError,
};
use cairn_events::revision::timestamp_json;

/// The JSON form of a repository row.
pub fn repository_json(row: &RepositoryRow) -> Value {
    let spec = row.spec.clone().unwrap_or_default();
    let git = spec.git.unwrap_or_default();
    let status = row.status.clone().unwrap_or_default();
    let sync = spec.sync.unwrap_or_default();
    json!({
        "namespace": spec.namespace,
        "name": spec.name,
        "type": spec.r#type,
        "git": {
            "url": git.url,
            "branch": git.branch,
            "directory": git.directory,
            "create_branch": git.create_branch,
            "secret_ref": git.secret_ref,
        },
        "sync": {
            "schedule": sync.schedule,
            "run_once_at": timestamp_json(sync.run_once_at.as_ref()),
        },
        "deployment": spec.deployment,
        "status": {
            "ready": status.ready,
            "reason": status.reason,
            "message": status.message,
            "error_class": status.error_class,
            "commit": status.commit,
            "package_count": status.package_count,
            "last_sync_at": timestamp_json(status.last_sync_at.as_ref()),
            "next_sync_at": timestamp_json(status.next_sync_at.as_ref()),
        },
    })
}

/// Parses and validates a `repo.register` request: the spec with defaults
/// filled in, and whether to wait for the first sync.
pub fn parse_register(
    payload: &[u8],
) -> Result<(RepositorySpec, bool, Option<String>), ServiceError> {
    let f = Fields::parse(
        payload,
        &[
            "namespace",
            "name",
            "type",
            "git",
            "deployment",
            "wait",
            "principal",
            "sync",
        ],
    )?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = f.required("name")?;
    validate::dns_label("name", &name)?;
    let kind = f.string("type")?.unwrap_or_else(|| "git".to_owned());
    if kind != "git" {
        return Err(ServiceError::bad_field(
            "type",
            format!("unsupported repository type {kind:?}, expected \"git\""),
        ));
    }
    let git = f
        .object(
            "git",
            &[
                "url",
                "branch",
                "directory",
                "create_branch",
                "secret_ref",
                "author",
                "email",
            ],
        )?
        .ok_or_else(|| ServiceError::bad_field("git", "required for type \"git\""))?;
    let url = git.required("url")?;
    origin::validate_url(&url).map_err(|e| ServiceError::bad_field("git.url", e))?;
    if url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(ServiceError::bad_field(
            "git.url",
            "must not embed credentials; use git.secret_ref",
        ));
    }
    let branch = git.string("branch")?.unwrap_or_else(|| "main".to_owned());
    validate::branch("git.branch", &branch)?;
    let directory = validate::directory(
        "git.directory",
        &git.string("directory")?.unwrap_or_default(),
    )?;
    let secret_ref = git.string("secret_ref")?.unwrap_or_default();
    if !secret_ref.is_empty() {
        validate::dns_label("git.secret_ref", &secret_ref)?;
    }
    let author = git.string("author")?.unwrap_or_default();
    validate::signature("git.author", &author)?;
    let email = git.string("email")?.unwrap_or_default();
    validate::signature("git.email", &email)?;
    let spec = RepositorySpec {
        namespace,
        name,
        r#type: kind,
        git: Some(GitSpec {
            url,
            branch,
            directory,
            create_branch: git.bool("create_branch")?.unwrap_or(false),
            author,
            email,
            secret_ref,
        }),
        sync: parse_sync(&f)?,
        deployment: f.bool("deployment")?.unwrap_or(false),
    };
    Ok((
        spec,
        f.bool("wait")?.unwrap_or(true),
        f.string("principal")?,
    ))
}

/// The `"sync":{"schedule"?,"run_once_at"?}` object of a request: a
/// 5-field cron expression (its syntax checked here, its times by
/// [`check_schedule`]) and an RFC 3339 time.
fn parse_sync(f: &Fields) -> Result<Option<SyncSpec>, ServiceError> {
    let Some(sync) = f.object("sync", &["schedule", "run_once_at"])? else {
        return Ok(None);
    };
    let schedule = sync.string("schedule")?.unwrap_or_default();
    if !schedule.is_empty() {
        parse_schedule(&schedule).map_err(|e| ServiceError::bad_field("sync.schedule", e))?;
    }
    let run_once_at = match sync.string("run_once_at")? {
        Some(text) if !text.is_empty() => Some(parse_timestamp(&text).ok_or_else(|| {
            ServiceError::bad_field(
                "sync.run_once_at",
                format!("{text:?} is not an RFC 3339 time like 2026-01-02T03:04:05Z"),
            )
        })?),
        _ => None,
    };
    Ok(
        (!schedule.is_empty() || run_once_at.is_some()).then_some(SyncSpec {
            schedule,
            run_once_at,
        }),
    )
}

/// Refuses a `sync.schedule` with no time within the horizon from now
/// (`schedule::cron`): a 400 naming `sync.schedule`. Finding its next time
/// is CPU work (bounded by the horizon), so it runs off the arbiter, like
/// store reads.
async fn check_schedule(
    context: &ServiceContext,
    sync: Option<&SyncSpec>,
) -> Result<(), ServiceError> {
    let Some(schedule) = sync.map(|s| s.schedule.clone()).filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    let now = context.config.clock.now();
    blocking(move || {
        Schedule::checked(&schedule, now)
            .map(drop)
            .map_err(|e| ServiceError::bad_field("sync.schedule", e))
    })
    .await
}

/// Parses a request naming a repository: `namespace`, `name`, `principal`
/// and the endpoint's `extra` fields.
fn key_fields(payload: &[u8], extra: &[&str]) -> Result<(Fields, String, String), ServiceError> {
    let allowed: Vec<&str> = ["namespace", "name", "principal"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let f = Fields::parse(payload, &allowed)?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = f.required("name")?;
    validate::dns_label("name", &name)?;
    Ok((f, namespace, name))
}

fn parse_key(payload: &[u8]) -> Result<(String, String, Option<String>), ServiceError> {
    let (f, namespace, name) = key_fields(payload, &[])?;
    Ok((namespace, name, f.string("principal")?))
}

async fn current(
    context: &ServiceContext,
    namespace: String,
    name: String,
) -> Result<RepositoryRow, ServiceError> {
    let store = context.store.clone();
    blocking(move || {
        RepositoriesView::get(&store, &namespace, &name)?
            .ok_or_else(|| RegistryError::not_found(&namespace, &name).into())
    })
    .await
}

fn report_json(report: &SyncReport) -> Value {
    json!({"added": report.added, "modified": report.modified, "deleted": report.deleted, "package_count": report.package_count})
}

fn report_proto(report: &SyncReport) -> pb::SyncReport {
    pb::SyncReport {
        added: report.added,
        modified: report.modified,
        deleted: report.deleted,
        package_count: report.package_count,
    }
}

/// A repository reply, with the outcome of the sync the request ran.
fn repository_body(
    format: Format,
    row: &RepositoryRow,
    sync: Option<&Result<SyncReport, ServiceError>>,
) -> Body {
    Body::of(
        format,
        || {
            let mut reply = repository_json(row);
            match sync {
                Some(Ok(report)) => reply["sync"] = report_json(report),
                Some(Err(e)) => {
                    reply["sync"] = json!({"error": {"code": e.code, "message": e.message}})
                }
                None => {}
            }
            reply
        },
        || {
            pb::RepositoryReply {
                repository: Some(row.clone()),
                sync: sync.and_then(|s| s.as_ref().ok()).map(report_proto),
                sync_error: sync.and_then(|s| s.as_ref().err()).map(|e| pb::ErrorReply {
                    code: u32::from(e.code),
                    message: e.message.clone(),
                }),
            }
            .encode_to_vec()
        },
    )
}

/// `cairn.v1.repo.register`.
pub async fn handle_register(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (spec, wait, principal) = parse_register(body)?;
    check_schedule(&context, spec.sync.as_ref()).await?;
    let (namespace, name) = (spec.namespace.clone(), spec.name.clone());
    super::context::record_stream(&namespace, &name);
    let metadata = metadata(&request, principal);
    let sync = context
        .registry
        .send(RegisterRepository {
            spec,
            wait,
            metadata,
            span: tracing::Span::current(),
        })
        .await??;
    let row = current(&context, namespace, name).await?;
    Ok(repository_body(format, &row, sync.as_ref()))
}

/// `cairn.v1.repo.unregister`.
pub async fn handle_unregister(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (namespace, name, principal) = parse_key(body)?;
    super::context::record_stream(&namespace, &name);
    let metadata = metadata(&request, principal);
    context
        .registry
        .send(UnregisterRepository {
            namespace: namespace.clone(),
            name: name.clone(),
            metadata,
            span: tracing::Span::current(),
        })
        .await??;
    Ok(unregistered_body(format, &namespace, &name))
}

/// The replay of an applied `repo.register` (see
/// [`super::idempotency`]): the repository as it is now, with the outcome
/// of the first sync its events recorded (`SyncSucceeded`'s counts, or
/// `SyncFailed`'s error — so a retry sees the failure the first attempt
/// answered); without one when that sync has not finished.
pub fn replay_register(
    context: ServiceContext,
    request: Incoming,
    row: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (spec, _, _) = parse_register(&request.body)?;
        let sync = recorded_sync(&context, &row).await?;
        let current = current(&context, spec.namespace, spec.name).await?;
        Ok(Replayed::Answer(repository_body(
            request.format,
            &current,
            sync.as_ref(),
        )))
    })
}

/// The replay of an applied `repo.sync`: what the sync answered (its
/// counts, or its recorded failure as the same error); a sync that did not
/// finish (cut short by a crash) runs again. Without `wait`, the
/// repository as it is now.
pub fn replay_sync(
    context: ServiceContext,
    request: Incoming,
    row: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (f, namespace, name) = key_fields(&request.body, &["wait"])?;
        let wait = f.bool("wait")?.unwrap_or(true);
        let sync = recorded_sync(&context, &row).await?;
        let current = current(&context, namespace, name).await?;
        match (wait, sync) {
            (false, _) => Ok(Replayed::Answer(repository_body(
                request.format,
                &current,
                None,
            ))),
            (true, None) => Ok(Replayed::RunAgain),
            (true, Some(Err(e))) => Err(e),
            (true, Some(Ok(report))) => Ok(Replayed::Answer(repository_body(
                request.format,
                &current,
                Some(&Ok(report)),
            ))),
        }
    })
}

/// The replay of an applied `repo.update`: the repository, as it is now.
pub fn replay_update(
    context: ServiceContext,
    request: Incoming,
    _: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (_, namespace, name) = key_fields(&request.body, &["sync"])?;
        let row = current(&context, namespace, name).await?;
        Ok(Replayed::Answer(repository_body(
            request.format,
            &row,
            None,
        )))
    })
}

/// The replay of an applied `repo.unregister`: what it unregistered — or,
/// when the repository is still registered (an unregister of more than
/// `store.append-max-events` revisions cut short between its appends),
/// the unregister again.
pub fn replay_unregister(
    context: ServiceContext,
    request: Incoming,
    _: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (namespace, name, _) = parse_key(&request.body)?;
        let store = context.store.clone();
        let (ns, n) = (namespace.clone(), name.clone());
        let registered =
            blocking(move || Ok(RepositoriesView::get(&store, &ns, &n)?.is_some())).await?;
        if registered {
            return Ok(Replayed::RunAgain);
        }
        Ok(Replayed::Answer(unregistered_body(
            request.format,
            &namespace,
            &name,
        )))
    })
}

/// The outcome of the sync a keyed command ran, from its last event:
/// `SyncSucceeded` → its counts, `SyncFailed` → the error it answered;
/// `None` when the command's last event is not a sync's end.
async fn recorded_sync(
    context: &ServiceContext,
    row: &RequestRow,
) -> Result<Option<Result<SyncReport, ServiceError>>, ServiceError> {
    use cairn_events::v1::event::Payload;
    let last = super::idempotency::last_event(context, row).await?;
    Ok(match last.and_then(|e| e.event).and_then(|e| e.payload) {
        Some(Payload::SyncSucceeded(s)) => Some(Ok(SyncReport {
            added: s.added,
            modified: s.modified,
            deleted: s.deleted,
            package_count: s.package_count,
        })),
        Some(Payload::SyncFailed(f)) => {
            Some(Err(crate::repository::error::recorded_sync_error(&f)))
        }
        _ => None,
    })
}

fn unregistered_body(format: Format, namespace: &str, name: &str) -> Body {
    let key = format!("{namespace}/{name}");
    Body::of(
        format,
        || json!({ "unregistered": key }),
        || {
            pb::Unregistered {
                unregistered: key.clone(),
            }
            .encode_to_vec()
        },
    )
}

/// `cairn.v1.repo.get`.
pub async fn handle_get(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (namespace, name, _) = parse_key(body)?;
    let row = current(&context, namespace, name).await?;
    Ok(repository_body(format, &row, None))
}

/// `cairn.v1.repo.list` `{"namespace"?}`.
pub async fn handle_list(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let f = Fields::parse(body, &["namespace"])?;
    let namespace = f.string("namespace")?;
    if let Some(ns) = &namespace {
        validate::dns_label("namespace", ns)?;
    }
    let store = context.store.clone();
    let rows = blocking(move || Ok(RepositoriesView::list(&store, namespace.as_deref())?)).await?;
    Ok(Body::of(
        format,
        || json!({ "items": rows.iter().map(repository_json).collect::<Vec<_>>() }),
        || {
            pb::RepositoryList {
                items: rows.clone(),
            }
            .encode_to_vec()
        },
    ))
}

/// `cairn.v1.repo.sync` `{"namespace","name","wait"?}`: fetch and reconcile
/// now (through the repository's SyncManager, so the next scheduled time
/// follows from it). With `wait` (the default) answers the repository and
/// what the sync did; without, answers the repository at once and syncs in
/// the background (follow it on `cairn.events.<ns>.<name>.>` or a watch).
pub async fn handle_sync(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (f, namespace, name) = key_fields(body, &["wait"])?;
    let wait = f.bool("wait")?.unwrap_or(true);
    super::context::record_stream(&namespace, &name);
    let metadata = metadata(&request, f.string("principal")?);
    let sync = context.registry.send(SyncRepository {
        namespace: namespace.clone(),
        name: name.clone(),
        trigger: "manual".into(),
        asked_at: Instant::now(),
        metadata,
        span: tracing::Span::current(),
    });
    if !wait {
        // Read first: an unknown repository is a 404 to the client, not a
        // failure of a background sync nobody sees.
        let row = current(&context, namespace, name).await?;
        tokio::spawn(async move {
            if let Ok(Err(e)) = sync.await {
                tracing::debug!(error = %e, "background sync failed");
            }
        });
        return Ok(repository_body(format, &row, None));
    }
    let report = sync.await??;
    let row = current(&context, namespace, name).await?;
    Ok(repository_body(format, &row, Some(&Ok(report))))
}

/// `cairn.v1.repo.update` `{"namespace","name","sync":{"schedule"?,"run_once_at"?}}`:
/// replaces the repository's sync spec (`RepositorySpecChanged`; no or an
/// empty `sync` goes back to the node's interval) and plans its syncs
/// again; answers the repository.
pub async fn handle_update(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (f, namespace, name) = key_fields(body, &["sync"])?;
    let sync = parse_sync(&f)?;
    check_schedule(&context, sync.as_ref()).await?;
    super::context::record_stream(&namespace, &name);
    let metadata = metadata(&request, f.string("principal")?);
    let mut spec = current(&context, namespace.clone(), name.clone())
        .await?
        .spec
        .unwrap_or_default();
    spec.sync = sync;
    context
        .registry
        .send(UpdateRepository {
            spec,
            metadata,
            span: tracing::Span::current(),
        })
        .await??;
    let row = current(&context, namespace, name).await?;
    Ok(repository_body(format, &row, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_register(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn register_requests_are_validated_by_field() {
        let (spec, wait, _) =
            parse_register(br#"{"namespace":"ns","name":"r","git":{"url":"file:///srv/r.git","directory":"/catalog/"}}"#).unwrap();
        let git = spec.git.unwrap();
        assert_eq!(
            (
                git.branch.as_str(),
                git.directory.as_str(),
                wait,
                spec.r#type.as_str()
            ),
            ("main", "catalog", true, "git")
        );
        assert_eq!(
            err(r#"{"name":"r","git":{"url":"file:///x"}}"#),
            "namespace: required"
        );
        assert!(
            err(r#"{"namespace":"NS","name":"r","git":{"url":"file:///x"}}"#)
                .starts_with("namespace: \"NS\" is not a valid name")
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","type":"oci","git":{"url":"file:///x"}}"#),
            "type: unsupported repository type \"oci\", expected \"git\""
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{}}"#),
            "git.url: required"
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r"}"#),
            "git: required for type \"git\""
        );
        assert!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"ftp://x/y"}}"#)
                .starts_with("git.url: ")
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"https://u:p@h/r.git"}}"#),
            "git.url: must not embed credentials; use git.secret_ref"
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"file:///x","directory":"../up"}}"#),
            "git.directory: \"../up\" must not contain \"..\""
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"file:///x","brunch":"m"}}"#),
            "git.brunch: unknown field, expected one of: url, branch, directory, create_branch, secret_ref, author, email"
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"file:///x"},"wait":"yes"}"#),
            "wait: must be true or false, got \"yes\""
        );
        let (spec, _, _) = parse_register(
            br#"{"namespace":"ns","name":"r","git":{"url":"file:///x"},"sync":{"schedule":"*/5 * * * *","run_once_at":"2026-11-21T10:00:00Z"}}"#,
        )
        .unwrap();
        let sync = spec.sync.unwrap();
        assert_eq!(sync.schedule, "*/5 * * * *");
        assert_eq!(sync.run_once_at.unwrap().seconds, 1_795_255_200);
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"file:///x"},"sync":{"schedule":"* * *"}}"#),
            "sync.schedule: \"* * *\" has 3 fields; expected 5 (minute hour day-of-month month day-of-week)"
        );
        assert_eq!(
            err(
                r#"{"namespace":"ns","name":"r","git":{"url":"file:///x"},"sync":{"run_once_at":"tomorrow"}}"#
            ),
            "sync.run_once_at: \"tomorrow\" is not an RFC 3339 time like 2026-01-02T03:04:05Z"
        );
        assert_eq!(
            err(r#"{"namespace":"ns","name":"r","git":{"url":"file:///x"},"sync":{"every":"5m"}}"#),
            "sync.every: unknown field, expected one of: schedule, run_once_at"
        );
    }
}
