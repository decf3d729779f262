//! `cairn.v1.pkgrev.*` writes: the lifecycle commands.
//!
//! - `create` `{"namespace","repository","path"?,"package","workspace",
//!   "resources"?,"binary"?,"clone_from"?}`
//! - `update` `{"namespace","name","resources","binary"?,"resource_version"}`
//! - `propose`, `reject`, `approve`, `propose-delete`, `withdraw-delete`,
//!   `delete` `{"namespace","name"}`
//!
//! Each may carry `"principal"` (used when the NATS connection names no
//! user, see [`super::metadata`]). Each answers the package revision after
//! the command (as `pkgrev.get` does, without its `lock`), `delete` answers
//! `{"deleted": name}`.
//! `resources` maps file paths (relative to the package) to UTF-8 content,
//! `binary` to base64 content. `clone_from` names a revision of the
//! namespace: one of the same package is copied (a new revision of an
//! existing package, task `edit`), any other is cloned (its `Kptfile`
//! renamed and locked to it, task `clone`); see [`source_of`]. Requests
//! are checked here (400 naming the field, nothing written), then handed
//! to the repository's actor, which
//! checks them against the view and writes them (see
//! [`crate::repository::command`], validated by
//! [`crate::repository::decide::validate`]).

use cairn_events::{
    revision::revision_json,
    v1::{self as pb, RequestRow},
};
use cairn_storage::{
    views::{PackageRevisionsView, RepositoriesView},
    Store,
};
use futures::future::BoxFuture;

use super::pkgrev::{get_row, revision_name};
use prost::Message as _;
use serde_json::json;

use super::{
    codec::{Body, Format},
    context::{blocking, metadata, Incoming, ServiceContext},
    fields::Fields,
    idempotency::Replayed,
    validate,
};
use crate::{
    origin::{
        kptfile,
        write::{check_file_tree, check_resource_path, Files},
    },
    registry::RouteLifecycle,
    repository::{
        command::{LifecycleOp, LifecycleOutcome, Source},
        naming::object_name,
        ApplyLifecycle,
    },
    ServiceError,
};

/// The fields of `pkgrev.create`.
pub const CREATE_FIELDS: &[&str] = &[
    "namespace",
    "repository",
    "path",
    "package",
    "workspace",
    "resources",
    "binary",
    "clone_from",
    "principal",
];

/// The fields of `pkgrev.update`.
pub const UPDATE_FIELDS: &[&str] = &[
    "namespace",
    "name",
    "resources",
    "binary",
    "resource_version",
    "principal",
];

/// Checks one segment of a package path, a package or a workspace name:
/// 1 to 253 characters of letters, digits, `.`, `_` and `-`, not starting
/// with `.` or `-`, not ending with `.` or `.lock` (it becomes part of Git
/// ref names and of the object name).
pub fn segment(field: &str, value: &str) -> Result<(), ServiceError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !value.starts_with(['.', '-'])
        && !value.ends_with('.')
        && !value.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_field(
            field,
            format!("{value:?} is not a valid name (letters, digits, '.', '_' and '-', 1-253 characters, not starting with '.' or '-', not ending with '.' or \".lock\")"),
        ))
    }
}

/// Checks a workspace name: a [`segment`] that is also what a Kubernetes
/// object name may hold (it ends the revision's object name, as in Porch):
/// lowercase letters, digits, `.` and `-`, starting and ending with a
/// letter or digit. `V_1` is refused; `v1`, `v1.2`, `fix-1` are names.
pub fn workspace(field: &str, value: &str) -> Result<(), ServiceError> {
    // The segment rules first, with their message (what `V_1` passes).
    segment(field, value)?;
    let kubernetes = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !kubernetes {
        return Err(ServiceError::bad_field(
            field,
            format!("{value:?} is not a valid workspace name (lowercase letters, digits, '.' and '-', 1-253 characters, starting and ending with a letter or digit)"),
        ));
    }
    Ok(())
}

/// A package path: segments checked by [`segment`], `/`-separated; leading
/// and trailing `/` dropped; empty for a package at the top.
pub fn package_path(field: &str, value: &str) -> Result<String, ServiceError> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for part in trimmed.split('/') {
        segment(field, part).map_err(|_| {
            ServiceError::bad_field(
                field,
                format!("{value:?} is not a valid package path (segment {part:?})"),
            )
        })?;
    }
    Ok(trimmed.to_owned())
}

/// The `principal` of a command: it authors the commit (see
/// [`validate::signature`]).
fn principal(f: &Fields) -> Result<Option<String>, ServiceError> {
    let principal = f.string("principal")?;
    if let Some(p) = &principal {
        validate::signature("principal", p)?;
    }
    Ok(principal)
}

/// The files of `resources` (UTF-8) and `binary` (base64), when either is
/// present: each path checked, each file at most `max` bytes.
pub fn parse_files(f: &Fields, max: usize) -> Result<Option<Files>, ServiceError> {
    let text = f.string_map("resources")?;
    let binary = f.string_map("binary")?;
    if text.is_none() && binary.is_none() {
        return Ok(None);
    }
    let mut files = Files::new();
    for (path, content) in text.unwrap_or_default() {
        files.insert(path, content.into_bytes());
    }
    for (path, encoded) in binary.unwrap_or_default() {
        use base64::Engine as _;
        let content = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| {
                ServiceError::bad_field(&format!("binary[{path:?}]"), format!("not base64: {e}"))
            })?;
        if files.insert(path.clone(), content).is_some() {
            return Err(ServiceError::bad_field(
                &format!("binary[{path:?}]"),
                "also given in resources",
            ));
        }
    }
    for (path, content) in &files {
        let field = format!("resources[{path:?}]");
        check_resource_path(path).map_err(|why| ServiceError::bad_field(&field, why))?;
        if content.len() > max {
            return Err(ServiceError::bad_field(
                &field,
                format!(
                    "{} bytes, more than the limit of {max} (service.resource-max-bytes)",
                    content.len()
                ),
            ));
        }
    }
    check_file_tree(&files)
        .map_err(|(path, why)| ServiceError::bad_field(&format!("resources[{path:?}]"), why))?;
    Ok(Some(files))
}

/// What `clone_from` starts a new draft of `repository`/`path`/`package`
/// from, read from `store`: a revision of the **same** package (same
/// repository, path and package) is copied — its files verbatim, Porch's
/// `edit` task; any other revision is cloned — its files, the `Kptfile`
/// renamed for the new package and locked to the source
/// ([`crate::origin::kptfile::with_upstream`]; the lock's `repo`, `directory` and
/// `ref` from the source's repository, [`crate::origin::kptfile::lock_of`]).
/// 400 naming `clone_from` when there is no such revision or its `Kptfile`
/// cannot be rewritten. Whether the source may be cloned or copied (no
/// placeholder, published) is the repository's check
/// ([`crate::repository::decide::validate`]).
fn source_of(
    store: &Store,
    namespace: &str,
    target: (&str, &str, &str),
    from: String,
) -> Result<Source, ServiceError> {
    let field = "clone_from";
    let row = PackageRevisionsView::get(store, namespace, &from)?.ok_or_else(|| {
        ServiceError::bad_field(
            field,
            format!("package revision {namespace}/{from} not found"),
        )
    })?;
    let revision = row.revision.unwrap_or_default();
    let mut files = Files::new();
    for (path, digest) in &revision.resources {
        let content = super::pkgrev::resource(store, path, digest)?;
        files.insert(path.clone(), content);
    }
    let (repository, path, package) = target;
    if (
        row.repository.as_str(),
        revision.path.as_str(),
        revision.package.as_str(),
    ) == (repository, path, package)
    {
        return Ok(Source::Copy { from, files });
    }
    let spec = RepositoriesView::get(store, namespace, &row.repository)?
        .and_then(|r| r.spec)
        .ok_or_else(|| {
            ServiceError::bad_field(
                field,
                format!(
                    "the repository {namespace}/{} of {from} is not registered",
                    row.repository
                ),
            )
        })?;
    let lock = kptfile::lock_of(&spec.git.unwrap_or_default(), &revision);
    let kptfile = files.get_mut("Kptfile").ok_or_else(|| {
        ServiceError::bad_field(field, format!("package revision {from} has no Kptfile"))
    })?;
    *kptfile = kptfile::with_upstream(kptfile, package, &lock.git.unwrap_or_default())
        .map_err(|e| ServiceError::bad_field(field, format!("package revision {from}: {e}")))?;
    Ok(Source::Clone { from, files })
}

/// The reply for what a command left.
fn outcome_body(format: Format, outcome: LifecycleOutcome) -> Body {
    match outcome {
        LifecycleOutcome::Revision(row) => {
            Body::of(format, || revision_json(&row), || row.encode_to_vec())
        }
        LifecycleOutcome::Deleted(name) => Body::of(
            format,
            || json!({ "deleted": name }),
            || {
                pb::PkgRevDeleted {
                    deleted: name.clone(),
                }
                .encode_to_vec()
            },
        ),
    }
}

/// Hands `op` to the actor of `namespace/repository`.
async fn run(
    context: &ServiceContext,
    request: &Incoming,
    namespace: String,
    repository: String,
    op: LifecycleOp,
    principal: Option<String>,
) -> Result<Body, ServiceError> {
    super::context::record_stream(&namespace, &repository);
    // One command per revision at a time on a node, as Porch's per-package
    // try-lock: a second one is a 409 at once rather than a queue behind
    // the first (whose outcome would make it fail anyway). A retry with the
    // first one's `Cairn-Request-Id` never gets here while it runs: it
    // waits for it and replays it.
    let target = format!("{namespace}/{}", op.target(&repository));
    let Some(_busy) = context.revisions_busy.try_lock(&target) else {
        return Err(ServiceError::conflict(format!(
            "another request is already in progress on package revision {target:?}"
        )));
    };
    let lifecycle = ApplyLifecycle {
        op,
        metadata: metadata(request, principal),
        span: tracing::Span::current(),
    };
    let outcome = context
        .registry
        .send(RouteLifecycle {
            namespace,
            name: repository,
            lifecycle,
        })
        .await??;
    Ok(outcome_body(request.format, outcome))
}

/// The repository of revision `namespace/name` (404 when there is none).
async fn repository_of(
    context: &ServiceContext,
    namespace: &str,
    name: &str,
) -> Result<String, ServiceError> {
    let store = context.store.clone();
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    blocking(move || get_row(&store, &namespace, &name).map(|row| row.repository)).await
}

/// `cairn.v1.pkgrev.create`.
pub async fn handle_create(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, CREATE_FIELDS)?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let repository = f.required("repository")?;
    validate::dns_label("repository", &repository)?;
    let path = package_path("path", &f.string("path")?.unwrap_or_default())?;
    let package = f.required("package")?;
    segment("package", &package)?;
    let workspace = f.required("workspace")?;
    self::workspace("workspace", &workspace)?;
    let files = parse_files(&f, context.config.resource_max_bytes)?;
    let clone_from = f.string("clone_from")?.filter(|c| !c.is_empty());
    let source = match (files, clone_from) {
        (Some(_), Some(_)) => {
            return Err(ServiceError::bad_field(
                "clone_from",
                "cannot be combined with resources",
            ))
        }
        (None, Some(from)) => {
            let store = context.store.clone();
            let ns = namespace.clone();
            let target = (repository.clone(), path.clone(), package.clone());
            blocking(move || {
                let (repository, path, package) = &target;
                source_of(&store, &ns, (repository, path, package), from)
            })
            .await?
        }
        (Some(files), None) => Source::Files(files),
        (None, None) => Source::Init,
    };
    let op = LifecycleOp::Create {
        path,
        package,
        workspace,
        source,
    };
    let principal = principal(&f)?;
    run(&context, &request, namespace, repository, op, principal).await
}

/// `cairn.v1.pkgrev.update`.
pub async fn handle_update(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, UPDATE_FIELDS)?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = revision_name(&f, "name")?;
    let files = parse_files(&f, context.config.resource_max_bytes)?
        .ok_or_else(|| ServiceError::bad_field("resources", "required"))?;
    if !files.contains_key("Kptfile") {
        return Err(ServiceError::bad_field(
            "resources",
            "must hold a Kptfile (a package is a directory with one)",
        ));
    }
    let resource_version = f
        .u64("resource_version")?
        .ok_or_else(|| ServiceError::bad_field("resource_version", "required"))?;
    let repository = repository_of(&context, &namespace, &name).await?;
    let op = LifecycleOp::Update {
        name,
        files,
        resource_version,
    };
    let principal = principal(&f)?;
    run(&context, &request, namespace, repository, op, principal).await
}

/// `cairn.v1.pkgrev.propose|reject|approve|propose-delete|withdraw-delete|delete`:
/// `op` of the revision the request names.
pub async fn handle_key(
    context: ServiceContext,
    request: Incoming,
    op: fn(String) -> LifecycleOp,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["namespace", "name", "principal"])?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = revision_name(&f, "name")?;
    let repository = repository_of(&context, &namespace, &name).await?;
    let principal = principal(&f)?;
    run(
        &context,
        &request,
        namespace,
        repository,
        op(name),
        principal,
    )
    .await
}

/// The replay of an applied `pkgrev.create` (see
/// [`super::idempotency`]): the revision it created, as it is now.
pub fn replay_create(
    context: ServiceContext,
    request: Incoming,
    _: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let f = Fields::parse(&request.body, CREATE_FIELDS)?;
        let namespace = f.required("namespace")?;
        let path = package_path("path", &f.string("path")?.unwrap_or_default())?;
        let name = object_name(
            &f.required("repository")?,
            &path,
            &f.required("package")?,
            &f.required("workspace")?,
        );
        revision_now(&context, request.format, namespace, name).await
    })
}

/// The replay of an applied `pkgrev.update|propose|reject|approve|
/// propose-delete|withdraw-delete`: the revision, as it is now.
pub fn replay_revision(
    context: ServiceContext,
    request: Incoming,
    _: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (namespace, name) = namespace_and_name(&request.body)?;
        revision_now(&context, request.format, namespace, name).await
    })
}

/// The replay of an applied `pkgrev.delete`: what it deleted.
pub fn replay_delete(
    _: ServiceContext,
    request: Incoming,
    _: RequestRow,
) -> BoxFuture<'static, Result<Replayed, ServiceError>> {
    Box::pin(async move {
        let (_, name) = namespace_and_name(&request.body)?;
        Ok(Replayed::Answer(outcome_body(
            request.format,
            LifecycleOutcome::Deleted(name),
        )))
    })
}

/// `namespace` and `name` of a request naming one revision (`update`'s
/// fields are a superset of the others').
fn namespace_and_name(body: &[u8]) -> Result<(String, String), ServiceError> {
    let f = Fields::parse(body, UPDATE_FIELDS)?;
    Ok((f.required("namespace")?, revision_name(&f, "name")?))
}

async fn revision_now(
    context: &ServiceContext,
    format: Format,
    namespace: String,
    name: String,
) -> Result<Replayed, ServiceError> {
    let store = context.store.clone();
    let row = blocking(move || get_row(&store, &namespace, &name)).await?;
    Ok(Replayed::Answer(outcome_body(
        format,
        LifecycleOutcome::Revision(Box::new(row)),
    )))
}

/// `cairn.v1.pkgrev.propose`.
pub async fn handle_propose(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::Propose).await
}

/// `cairn.v1.pkgrev.reject`.
pub async fn handle_reject(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::Reject).await
}

/// `cairn.v1.pkgrev.approve`.
pub async fn handle_approve(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::Approve).await
}

/// `cairn.v1.pkgrev.propose-delete`.
pub async fn handle_propose_delete(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::ProposeDelete).await
}

/// `cairn.v1.pkgrev.withdraw-delete`.
pub async fn handle_withdraw_delete(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::WithdrawDelete).await
}

/// `cairn.v1.pkgrev.delete`.
pub async fn handle_delete(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    handle_key(context, request, LifecycleOp::Delete).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert_eq!(segment("package", "my-pkg_1.0"), Ok(()));
        for bad in ["", ".hidden", "-x", "a b", "a/b", "x.lock", "x.", "a\0"] {
            let err = segment("package", bad).unwrap_err();
            assert!(err.message.starts_with("package: "), "{bad:?}: {err}");
        }
        for good in ["v1", "v1.2", "fix-1", "a..b"] {
            assert_eq!(workspace("workspace", good), Ok(()), "{good}");
        }
        for bad in ["V_1", "V1", "v_1", "-v1", "v1-", ".v1", "", "v1.lock"] {
            let err = workspace("workspace", bad).unwrap_err();
            assert!(err.message.starts_with("workspace: "), "{bad:?}: {err}");
        }
        assert_eq!(package_path("path", "/a/b/").unwrap(), "a/b");
        assert_eq!(package_path("path", "").unwrap(), "");
        assert_eq!(
            package_path("path", "a/../b").unwrap_err().message,
            "path: \"a/../b\" is not a valid package path (segment \"..\")"
        );
    }

    #[test]
    fn files_are_checked_by_path_and_size() {
        let parse = |body: &str, max| {
            parse_files(&Fields::parse(body.as_bytes(), UPDATE_FIELDS).unwrap(), max)
        };
        let files = parse(
            r#"{"resources":{"Kptfile":"k"},"binary":{"b.bin":"AAE="}}"#,
            10,
        )
        .unwrap()
        .unwrap();
        assert_eq!(files["b.bin"], vec![0, 1]);
        assert_eq!(parse("{}", 10).unwrap(), None);
        for (body, message) in [
            (r#"{"resources":{"../x":"k"}}"#, "resources[\"../x\"]: \"../x\" must not contain \"..\""),
            (r#"{"resources":{"/etc/x":"k"}}"#, "resources[\"/etc/x\"]: \"/etc/x\" is absolute"),
            (r#"{"resources":{"a\u0000b":"k"}}"#, "resources[\"a\\0b\"]: \"a\\0b\" holds a NUL or control character"),
            (r#"{"resources":{"big":"12345678901"}}"#, "resources[\"big\"]: 11 bytes, more than the limit of 10 (service.resource-max-bytes)"),
            (r#"{"binary":{"x":"%%"}}"#, "binary[\"x\"]: not base64: Invalid symbol 37, offset 0."),
            (r#"{"resources":{"x":"a"},"binary":{"x":"AA=="}}"#, "binary[\"x\"]: also given in resources"),
        ] {
            assert_eq!(parse(body, 10).unwrap_err().message, message, "{body}");
        }
    }
}
