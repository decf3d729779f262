//! Lifecycle commands on one repository: validated against the views,
//! written to the upstream first, recorded as events only once the
//! upstream accepted them.
//!
//! A command runs inside its RepositoryActor's writer shell (`run`; so
//! commands and syncs of one repository are serialised, and different
//! repositories run in parallel); steps 1–3 are its I/O phase
//! ([`execute`], off the arbiter), the typing of step 3 its pure decision:
//! 1. **validate**: the view rows it concerns are read ([`view_rows`]) and
//!    checked by the pure [`super::decide::validate`]: the target revision
//!    exists in the view, its lifecycle allows the command,
//!    `resource_version` matches, a new workspace is unique in its package,
//!    only a copy makes a new revision of an existing package, a new
//!    package does not nest, a clone's or copy's source is a published
//!    revision (its row read here too), and a deleted revision is no
//!    other revision's upstream ([`referenced_by`]);
//! 2. **write** ([`execute`]): build the commit in the local mirror
//!    ([`crate::origin::lifecycle`]; author, committer and principal
//!    trailer by Porch's rule, [`Identity::of`]), push all ref updates
//!    together, never forced; an approval or a placeholder's deletion
//!    (the two commands that commit on the registered branch) that finds
//!    the branch moved on fetches, re-applies on the new head and retries
//!    (at most [`MOVED_ATTEMPTS`] times), as Porch's `pushAndCleanup`
//!    does; a push that failed transiently
//!    ([`OriginError::is_transient`]: Porch's retryable errors, e.g. a
//!    `pre-receive hook declined`) is tried again, after a fetch and a
//!    rebuild, up to `git.push-attempts` times in all, waiting
//!    [`crate::origin::write::WriteConfig::retry_delay`] between tries (Porch
//!    `PushRetryWithTransientError`); the mirror's refs are then set to
//!    what the upstream accepted;
//! 3. **read back**: discover the package again in the mirror, exactly as a
//!    sync reads it, and reconcile it against the view. The event of the
//!    command's target is typed after the command
//!    ([`super::decide::typed`]: `DraftCreated`,
//!    `PackageRevisionPublished`, …); whatever else moved with it (the
//!    placeholder on the registered branch, the previous `latest`) is a
//!    `PackageRevisionModified`. The writer appends them with the command's
//!    metadata (principal, correlation id), then `run` answers the target
//!    as the view has it.
//!
//! A push that fails records nothing. Before it, every ref it sets is
//! checked ([`crate::origin::names::check_ref`]; a `create`'s names were
//! checked by [`super::decide::new_names`] already): a ref Git or the
//! mirror cannot take is refused with nothing pushed.
//!
//! Once the upstream accepted a push, the write happened: whatever fails
//! after it — setting the mirror's refs, reading back, storing blobs,
//! appending — is [`RepositoryError::Unrecorded`], a 500 naming the refs
//! pushed (`pushed refs/heads/drafts/… at <commit> to the upstream, but
//! recording it failed: …; the next sync of the repository will record
//! it`), never a 503 "unavailable"; nothing is recorded, and the next sync
//! reads the pushed refs like any other upstream change (its fetch makes
//! the mirror the upstream's again). A failure reading the reply's row
//! after the append is [`RepositoryError::Recorded`]. A crash between an
//! accepted push and the append leaves the upstream ahead of the log the
//! same way.

use std::collections::{BTreeMap, HashSet};

use cairn_events::{
    revision::Lifecycle,
    v1::{Event, PackageRevision, RepositorySpec},
};
use cairn_storage::{
    views::{
        package_revision_list::Scope as ListScope, PackageRevisionListView, PackageRevisionsView,
    },
    BlobPin, StorageError, ViewRead,
};
use git2::{Oid, Repository};
use std::ops::ControlFlow;
use std::{sync::Arc, time::Instant};

use tracing::{debug, info};

pub use super::op::{LifecycleOp, LifecycleOutcome, Source};
use super::{
    component::RepositoryComponent,
    decide::{validate, Validated, ViewRows},
    domain::Repository as RepositoryDomain,
    error::RepositoryError,
    upstream::{store_revisions, ReadError, SyncEnv},
};
use crate::{
    origin::{
        self,
        lifecycle::{self, PackageRefs},
        names::check_ref,
        write::{push_changes, Author, Files, Identity, RefChange},
        OriginError,
    },
    writer::{off_arbiter, Chunking, Session},
};

/// How many times an approval, or a placeholder's deletion, is tried when
/// the registered branch keeps moving under it.
pub const MOVED_ATTEMPTS: u32 = 5;

/// The `Kptfile` of a new package.
pub fn default_kptfile(package: &str) -> Vec<u8> {
    format!(
        "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {package}\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\ninfo:\n  description: {package}\n"
    )
    .into_bytes()
}

/// What [`execute`] produced: the read-back's events (`Added`, `Modified`,
/// `Deleted`; none when the upstream already was as asked; the pure
/// [`super::decide::typed`] types the target's after the command), the
/// target's name and whether it is gone, and the blobs to keep until the
/// events commit.
#[derive(Debug)]
pub struct Executed {
    /// The read-back's events, in order, not yet typed.
    pub events: Vec<Event>,
    /// The target's object name.
    pub name: String,
    /// Whether the command deleted it.
    pub deleted: bool,
    /// Blobs the events refer to.
    pub pins: Vec<BlobPin>,
    /// The ref updates the upstream accepted (see [`pushed_refs`]), for an
    /// error after the push.
    pub pushed: String,
}

/// The view rows `op` is validated against (see [`ViewRows`]). Blocking.
pub fn view_rows(
    store: &dyn ViewRead,
    spec: &RepositorySpec,
    op: &LifecycleOp,
) -> Result<ViewRows, StorageError> {
    let name = op.target(&spec.name);
    let target = PackageRevisionsView::get(store, &spec.namespace, &name)?;
    let source = match op.source().and_then(Source::from) {
        Some(from) => PackageRevisionsView::get(store, &spec.namespace, from)?,
        None => None,
    };
    let referenced_by = match op {
        LifecycleOp::Delete(name) => referenced_by(store, &spec.namespace, name)?,
        _ => None,
    };
    let mut packages = Vec::new();
    if matches!(op, LifecycleOp::Create { .. }) && target.is_none() {
        let scope = ListScope {
            namespace: Some(&spec.namespace),
            repository: Some(&spec.name),
            package: None,
            path: None,
        };
        PackageRevisionListView::scan::<StorageError>(store, &scope, None, |row| {
            let package = origin::package_path("", row.path, row.package);
            if packages.last() != Some(&package) {
                packages.push(package);
            }
            Ok(ControlFlow::Continue(()))
        })?;
    }
    Ok(ViewRows {
        target,
        packages,
        source,
        referenced_by,
    })
}

/// The first package revision of `namespace` (in any repository; not a
/// placeholder) whose tasks name revision `name` as their upstream
/// ([`super::decide::names_upstream`]), as Porch's
/// `FindAllUpstreamReferencesInRepositories` finds it: one scan of the
/// namespace's listing, whose rows hold each revision's JSON form; a row
/// whose JSON does not hold the name at all is skipped unparsed. Blocking.
///
/// The scan runs inside the actor of the revision's repository; a
/// downstream created in another repository at the same moment can race
/// it (so can Porch's).
fn referenced_by(
    store: &dyn ViewRead,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, StorageError> {
    #[derive(serde::Deserialize)]
    struct Listed {
        revision: i64,
        #[serde(default)]
        tasks: Vec<serde_json::Value>,
    }
    let scope = ListScope {
        namespace: Some(namespace),
        repository: None,
        package: None,
        path: None,
    };
    let needle = name.as_bytes();
    let mut found = None;
    PackageRevisionListView::scan::<StorageError>(store, &scope, None, |row| {
        if row.name == name || !row.json.windows(needle.len()).any(|w| w == needle) {
            return Ok(ControlFlow::Continue(()));
        }
        let listed: Listed = serde_json::from_slice(row.json)
            .map_err(|e| StorageError::Corrupt(format!("the listing of {}: {e}", row.name)))?;
        if listed.revision != -1
            && listed
                .tasks
                .iter()
                .any(|task| super::decide::names_upstream(task, name))
        {
            found = Some(row.name.to_owned());
            return Ok(ControlFlow::Break(()));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(found)
}

/// Validates `op` against the view, writes it to the upstream and reads the
/// package back: the events to record. `principal` authors the commits
/// (when not anonymous and the repository names no author; see
/// [`Identity::of`]) and is named in their trailer. Blocking.
pub fn execute(
    env: &SyncEnv,
    component: &RepositoryComponent,
    op: &LifecycleOp,
    principal: &str,
) -> Result<Executed, RepositoryError> {
    let started = std::time::Instant::now();
    let spec = &component.spec;
    let git = spec.git.clone().unwrap_or_default();
    let store: &dyn ViewRead = &env.store;
    // 1. Validate against the view.
    let rows = view_rows(store, spec, op).map_err(RepositoryError::Views)?;
    let Validated {
        name,
        path,
        package,
        workspace: _,
        current,
    } = validate(spec, op, rows)?;
    let refs = PackageRefs::new(&git.directory, &path, &package, &git.branch);
    let identity = Identity::of(
        &Author::new(&git.author, &git.email),
        principal,
        &env.write.committer,
    );
    let credentials = env
        .secrets
        .resolve(&git.secret_ref)
        .map_err(RepositoryError::Write)?;

    let validated = started.elapsed();
    // 2. Write to the upstream, holding the mirror.
    let changes = env
        .fetches
        .write(&git.url, credentials.as_ref(), |mirror, refetch| {
            let mut repo = Repository::open_bare(mirror).map_err(OriginError::from)?;
            // The registered branch moved (re-applied on its new head) /
            // the push failed transiently (tried again as it is): each
            // bounded, so the loop is too.
            let (mut moved, mut failed) = (0, 0);
            let rebuilds = rebuilds_on_moved(op, current.as_ref());
            loop {
                let attempt = moved + failed + 1;
                let t = std::time::Instant::now();
                let changes = changes_of(&repo, op, &refs, current.as_ref(), &identity)?;
                for change in &changes {
                    if let RefChange::Set { name, .. } = change {
                        check_ref(name)?;
                    }
                }
                let built = t.elapsed();
                let pushed = push_changes(&repo, &git.url, credentials.as_ref(), &changes);
                debug!(attempt, build_ms = built.as_secs_f64() * 1e3, push_ms = (t.elapsed() - built).as_secs_f64() * 1e3, "pushed");
                match pushed {
                    Ok(()) => {
                        // Written: a failure from here on is not the push's.
                        let after = set_local_refs(&repo, &changes)
                            .and_then(|()| next_revision(&repo, &refs))
                            .map(|next| next - 1);
                        return Ok((changes, after));
                    }
                    Err(OriginError::Moved(why)) if rebuilds && moved + 1 < MOVED_ATTEMPTS => {
                        moved += 1;
                        info!(revision = %name, verb = op.verb(), attempt, %why, "upstream moved; fetching and re-applying");
                    }
                    Err(e) if e.is_transient() && failed + 1 < env.write.push_attempts => {
                        failed += 1;
                        let delay = env.write.retry_delay(failed, &e);
                        info!(revision = %name, verb = op.verb(), attempt, error = %e,
                            delay_ms = delay.as_millis() as u64, "push failed transiently; retrying");
                        std::thread::sleep(delay);
                    }
                    Err(e) => return Err(e),
                }
                refetch()?;
                // (a fresh handle: libgit2 caches the refs it read)
                repo = Repository::open_bare(mirror).map_err(OriginError::from)?;
            }
        })
        .map_err(RepositoryError::Write)?;
    let (changes, after) = changes;
    let pushed = pushed_refs(&changes);
    let unrecorded = |source| RepositoryError::Unrecorded {
        pushed: pushed.clone(),
        source: Box::new(source),
    };
    let highest = after.map_err(|e| unrecorded(RepositoryError::Mirror(e)))?;

    let written = started.elapsed();
    // 3. Read back what the write can have changed, and reconcile it
    // against the view's side of the same revisions.
    let read = refs_to_read(&changes, &refs, current.as_ref());
    let target = Target {
        name: &name,
        path: &path,
        package: &package,
        refs: &refs,
        highest,
    };
    let (events, pins) = read_back(env, spec, op, &target, &read).map_err(unrecorded)?;
    debug!(
        revision = %name,
        verb = op.verb(),
        validate_ms = validated.as_secs_f64() * 1e3,
        write_ms = (written - validated).as_secs_f64() * 1e3,
        read_back_ms = (started.elapsed() - written).as_secs_f64() * 1e3,
        "command executed"
    );
    Ok(Executed {
        deleted: matches!(op, LifecycleOp::Delete(_)),
        events,
        name,
        pins,
        pushed,
    })
}

/// What a lifecycle command wrote, for its read-back.
struct Target<'a> {
    /// Its target's object name.
    name: &'a str,
    /// The target's package path and name.
    path: &'a str,
    package: &'a str,
    /// The package's refs.
    refs: &'a PackageRefs,
    /// The package's highest published revision after the write.
    highest: i64,
}

/// Reads back the refs `read` the write of `op` can have changed from the
/// mirror, stores their resources, and reconciles them against the view's
/// side of the same revisions: the events (not yet typed) and the blobs
/// they refer to.
fn read_back(
    env: &SyncEnv,
    spec: &RepositorySpec,
    op: &LifecycleOp,
    target: &Target<'_>,
    read: &HashSet<String>,
) -> Result<(Vec<Event>, Vec<BlobPin>), RepositoryError> {
    let git = spec.git.clone().unwrap_or_default();
    let store: &dyn ViewRead = &env.store;
    let mirror = env.fetches.cache().mirror_path(&git.url);
    let name = target.name;
    let read_back = |e: &dyn std::fmt::Display| RepositoryError::ReadBack {
        name: name.to_owned(),
        message: e.to_string(),
    };
    let discovery = origin::discover_refs(
        &mirror,
        &git.branch,
        &git.directory,
        &target.refs.full,
        read,
    )
    .map_err(|e| read_back(&e))?;
    let (mut discovered, pins) = store_revisions(&env.store, &mirror, spec, discovery.revisions)
        .map_err(|e| match e {
            ReadError::Origin(e) => read_back(&e),
            // The store's failure, not the upstream's: as in a sync.
            e @ ReadError::Store { .. } => e.into(),
        })?;
    let gone = matches!(op, LifecycleOp::Delete(_)).then_some(name);
    latest_moved(
        store,
        spec,
        target.path,
        target.package,
        target.highest,
        gone,
        &mut discovered,
    )
    .map_err(RepositoryError::Views)?;
    let mut before = BTreeMap::new();
    for n in discovered.keys().map(String::as_str).chain([name]) {
        if let Some(r) = PackageRevisionsView::get(store, &spec.namespace, n)
            .map_err(RepositoryError::Views)?
            .and_then(|row| row.revision)
        {
            before.insert(n.to_owned(), r);
        }
    }
    let (events, _) = RepositoryComponent::reconcile(&before, discovered);
    Ok((events, pins))
}

/// The ref updates of a push, as an error message names them:
/// `<ref> at <commit>` for each set, `<ref> (deleted)` for each deletion.
fn pushed_refs(changes: &[RefChange]) -> String {
    changes
        .iter()
        .map(|change| match change {
            RefChange::Set { name, to } => format!("{name} at {to}"),
            RefChange::Delete { name } => format!("{name} (deleted)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The refs whose revisions `changes` can have changed (the placeholder is
/// always read back): tags, drafts and proposals it sets, and the tag a
/// deletion marker it sets or removes belongs to.
fn refs_to_read(
    changes: &[RefChange],
    refs: &PackageRefs,
    current: Option<&PackageRevision>,
) -> HashSet<String> {
    let mut read = HashSet::new();
    for change in changes {
        let (RefChange::Set { name, .. } | RefChange::Delete { name }) = change;
        let set = matches!(change, RefChange::Set { .. });
        if set && origin::package_of_ref(name).is_some() && !name.contains("/deletionProposed/") {
            read.insert(name.clone());
        }
    }
    if let Some(r) = current.filter(|r| r.revision > 0) {
        read.insert(refs.tag(r.revision));
    }
    read
}

/// Adds to `discovered` each revision of the package whose `latest` flag
/// the write moved without changing it otherwise (the previous latest when
/// a higher revision was published, the next one down when the latest was
/// deleted): `highest` is the package's highest published revision now,
/// `gone` the revision the write deleted.
fn latest_moved(
    store: &dyn ViewRead,
    spec: &RepositorySpec,
    path: &str,
    package: &str,
    highest: i64,
    gone: Option<&str>,
    discovered: &mut BTreeMap<String, PackageRevision>,
) -> Result<(), StorageError> {
    let scope = ListScope {
        namespace: Some(&spec.namespace),
        repository: Some(&spec.name),
        package: Some(package),
        path: Some(path),
    };
    let mut moved = Vec::new();
    PackageRevisionListView::scan::<StorageError>(store, &scope, None, |row| {
        if discovered.contains_key(row.name) || gone == Some(row.name) {
            return Ok(ControlFlow::Continue(()));
        }
        let head = row.listing()?;
        let published = Lifecycle::parse(&head.lifecycle).is_some_and(Lifecycle::is_published);
        let latest = published && head.revision > 0 && head.revision == highest;
        if head.latest != latest {
            moved.push((row.name.to_owned(), latest));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    for (name, latest) in moved {
        if let Some(mut r) =
            PackageRevisionsView::get(store, &spec.namespace, &name)?.and_then(|row| row.revision)
        {
            r.latest = latest;
            discovered.insert(name, r);
        }
    }
    Ok(())
}

/// Whether `op` on `current` commits on the registered branch's head, so
/// that a push refused because the branch moved is built again on its new
/// head and retried: an approval, and the deletion of a placeholder
/// (Porch's `TestApproveOnManuallyMovedMain`,
/// `TestDeleteOnManuallyMovedMainBranch`). Any other command's refs are
/// its own; one that moved is 409.
fn rebuilds_on_moved(op: &LifecycleOp, current: Option<&PackageRevision>) -> bool {
    match op {
        LifecycleOp::Approve(_) => true,
        LifecycleOp::Delete(_) => current.is_some_and(|r| r.revision == -1),
        _ => false,
    }
}

/// Porch's default task of a new package (`CreatePackageRevision` with no
/// task): `init` with the description `<package path> description`, the
/// path relative to the registered directory.
fn init_task(path: &str, package: &str) -> String {
    format!(
        r#"{{"type":"init","init":{{"description":{}}}}}"#,
        serde_json::Value::from(format!(
            "{} description",
            origin::package_path("", path, package)
        ))
    )
}

/// The commit (if any) and ref changes of `op`, built in `repo` on its
/// current refs.
fn changes_of(
    repo: &Repository,
    op: &LifecycleOp,
    refs: &PackageRefs,
    current: Option<&PackageRevision>,
    identity: &Identity,
) -> Result<Vec<RefChange>, OriginError> {
    let head = || {
        repo.refname_to_id(&refs.main())
            .map_err(|_| OriginError::BranchMissing {
                branch: refs.branch.clone(),
            })
    };
    let commit_of = |r: &PackageRevision| {
        Oid::from_str(&r.commit)
            .map_err(|e| OriginError::Git(format!("commit {:?} of {}: {e}", r.commit, r.name)))
    };
    let current =
        || current.ok_or_else(|| OriginError::Git("no current revision for the command".into()));
    Ok(match op {
        LifecycleOp::Create {
            path,
            package,
            workspace,
            source,
        } => {
            let (files, task) = match source {
                Source::Init => (
                    Files::from([("Kptfile".to_owned(), default_kptfile(&package_name(refs)))]),
                    init_task(path, package),
                ),
                Source::Files(files) => {
                    let mut files = files.clone();
                    files
                        .entry("Kptfile".to_owned())
                        .or_insert_with(|| default_kptfile(&package_name(refs)));
                    (files, init_task(path, package))
                }
                // Porch's clone and edit (`porchctl rpkg copy`) tasks, with
                // their keys in Porch's order (`type` first).
                Source::Clone { from, files } => (
                    files.clone(),
                    format!(
                        r#"{{"type":"clone","clone":{{"upstreamRef":{{"upstreamRef":{{"name":{}}}}}}}}}"#,
                        serde_json::Value::from(from.as_str())
                    ),
                ),
                Source::Copy { from, files } => (
                    files.clone(),
                    format!(
                        r#"{{"type":"edit","edit":{{"sourceRef":{{"name":{}}}}}}}"#,
                        serde_json::Value::from(from.as_str())
                    ),
                ),
            };
            lifecycle::create_draft(repo, refs, head()?, workspace, &files, &task, identity)?.1
        }
        LifecycleOp::Update { files, .. } => {
            let r = current()?;
            lifecycle::update_draft(repo, refs, commit_of(r)?, &r.workspace, files, identity)?.1
        }
        LifecycleOp::Propose(_) => {
            let r = current()?;
            lifecycle::propose(refs, &r.workspace, commit_of(r)?)
        }
        LifecycleOp::Reject(_) => {
            let r = current()?;
            lifecycle::reject(refs, &r.workspace, commit_of(r)?)
        }
        LifecycleOp::Approve(_) => {
            let r = current()?;
            let next = next_revision(repo, refs)?;
            lifecycle::approve(
                repo,
                refs,
                head()?,
                commit_of(r)?,
                &r.workspace,
                next,
                identity,
            )?
            .1
        }
        LifecycleOp::ProposeDelete(_) => {
            let r = current()?;
            lifecycle::propose_deletion(refs, r.revision, commit_of(r)?)
        }
        LifecycleOp::WithdrawDelete(_) => lifecycle::withdraw_deletion(refs, current()?.revision),
        LifecycleOp::Delete(_) => {
            let r = current()?;
            match (r.parsed_lifecycle(), r.revision) {
                (Some(Lifecycle::Draft), _) => {
                    lifecycle::delete_unpublished(refs, &r.workspace, false)
                }
                (Some(Lifecycle::Proposed), _) => {
                    lifecycle::delete_unpublished(refs, &r.workspace, true)
                }
                (_, -1) => lifecycle::delete_placeholder(repo, refs, head()?, true, identity)?.1,
                (_, n) => lifecycle::delete_published(refs, n),
            }
        }
    })
}

/// The package's name: the last segment of its full path.
fn package_name(refs: &PackageRefs) -> String {
    refs.full.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The next revision number of the package: one above its highest `vN`
/// tag in the mirror (the upstream's tags as last fetched or written, so a
/// revision published elsewhere is counted too).
fn next_revision(repo: &Repository, refs: &PackageRefs) -> Result<i64, OriginError> {
    let prefix = refs.tag(0);
    let prefix = prefix.trim_end_matches('0');
    let mut highest = 0;
    for name in repo
        .references_glob(&format!("{prefix}*"))
        .map_err(OriginError::from)?
        .names()
    {
        let name = name.map_err(OriginError::from)?;
        if let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<i64>().ok())
        {
            highest = highest.max(n);
        }
    }
    Ok(highest + 1)
}

/// Sets the mirror's refs to what the upstream just accepted, so the next
/// command builds on it without a fetch.
fn set_local_refs(repo: &Repository, changes: &[RefChange]) -> Result<(), OriginError> {
    for change in changes {
        match change {
            RefChange::Set { name, to } => {
                repo.reference(name, *to, true, "cairn: pushed")
                    .map_err(OriginError::from)?;
            }
            RefChange::Delete { name } => {
                if let Ok(mut reference) = repo.find_reference(name) {
                    reference.delete().map_err(OriginError::from)?;
                }
            }
        }
    }
    Ok(())
}

/// One lifecycle command: validation (pure, over its view rows), the Git
/// work and the read-back off the arbiter (the I/O phase); the pure typing
/// of the read-back's events ([`super::decide::typed`]); their append; then the
/// target as the view has it.
#[tracing::instrument(skip_all, fields(verb = op.verb()))]
pub(super) async fn run(
    session: &mut Session<RepositoryDomain>,
    op: LifecycleOp,
) -> Result<LifecycleOutcome, RepositoryError> {
    let started = Instant::now();
    let verb = op.verb();
    let principal = session.metadata().principal.clone();
    let stream = session.state().stream.clone();
    // Shared by both phases (its files can be large: not copied).
    let op = Arc::new(op);
    let prepared = op.clone();
    // What was pushed, once it was: an append that fails after it fails a
    // write that happened.
    let pushed = Arc::new(parking_lot::Mutex::new(None::<String>));
    let decided_pushed = pushed.clone();
    let decided = session
        .decide(
            verb,
            Chunking::MaxEvents,
            move |env: &SyncEnv, state: &RepositoryComponent| {
                execute(env, state, &prepared, &principal)
            },
            move |_, executed: Executed| {
                let events = super::decide::typed(executed.events, &executed.name, &op);
                let count = events.len();
                *decided_pushed.lock() = Some(executed.pushed.clone());
                Ok((
                    events,
                    (
                        executed.name,
                        executed.deleted,
                        executed.pins,
                        count,
                        executed.pushed,
                    ),
                ))
            },
        )
        .await;
    let (name, deleted, pins, count, pushed) = match decided {
        Ok(decided) => decided,
        Err(e) => {
            let e = match pushed.lock().take() {
                Some(pushed) => RepositoryError::Unrecorded {
                    pushed,
                    source: Box::new(e),
                },
                None => e,
            };
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
    let recorded = |source| RepositoryError::Recorded {
        pushed: pushed.clone(),
        source: Box::new(source),
    };
    let (row, name) = off_arbiter(verb, move || {
        cairn_storage::views::PackageRevisionsView::get(&store, &namespace, &name)
            .map(|row| (row, name))
    })
    .await
    .map_err(|e| recorded(e.into()))?
    .map_err(|e| recorded(RepositoryError::Views(e)))?;
    match row {
        Some(row) => Ok(LifecycleOutcome::Revision(Box::new(row))),
        None => Err(RepositoryError::Lost { verb, name }),
    }
}
