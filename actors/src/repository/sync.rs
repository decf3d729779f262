//! A sync of one repository, as its writer runs it: a slot of the
//! node-wide cap, `SyncStarted` appended while the upstream is fetched and
//! its discovery opened off the arbiter (the I/O phase), then the
//! reconciliation in chunks ([`super::reconcile`]), ending with
//! `SyncSucceeded` — or `SyncFailed`, recorded before the failure is
//! answered. A failure inside the node — reading the views, or storing
//! what was read in the blob store — is recorded with class
//! [`super::error::INTERNAL_CLASS`], never as an upstream one (see
//! [`RepositoryError::sync_class`]).
//!
//! # Memory
//! Each chunk reserves its bytes from the node-wide
//! [`crate::timing::SyncBudget`] (`sync.memory-budget-bytes`) before it is
//! read, and gives them back once its events committed. The chunks are
//! pipelined: while chunk N is appended (and folded into the views), chunk
//! N+1 is read and stored off the arbiter — so a sync holds at most two
//! chunks, and a sync of any size stays within its share of the budget.
//! What grows with the repository is only what a sync must know of the
//! whole of it: the ref names, the history index and the set of names
//! handed out (for deletions), tens of bytes per revision.
//!
//! # Crashes and failures between chunks
//! Each chunk is one atomic append. A sync that fails after some chunks
//! committed records `SyncFailed`; one that crashed records nothing more.
//! Either way the views hold a prefix of the reconciliation and the
//! repository's status the digest of the last successful sync, and the
//! writer forgets the refs it last read: the next sync reads the upstream
//! in full and completes the reconciliation against the views (no
//! duplicate `Added`, see [`super::reconcile`]).

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use cairn_events::{
    envelope::event,
    v1::{event::Payload, Event, SyncFailed, SyncStarted},
};
use cairn_storage::{views::RepositoriesView, AsyncAppend};
use tracing::{debug, info, warn, Instrument as _};

use super::{
    component::{Changes, RepositoryComponent},
    domain::Repository,
    error::RepositoryError,
    reconcile::{Chunk, Reconciliation},
    upstream::{read_upstream, Known, SyncEnv, UpstreamRead},
};
use crate::{
    schedule::{NextSync, SyncReport},
    timing::BudgetPermit,
    writer::{off_arbiter, Chunking, Session},
};

/// A hook called after each chunk of a sync's changes committed, with the
/// number of the sync's chunks committed so far: for crash tests only
/// (`cairn-under-test` aborts the process there), unset in a node.
static CHUNK_HOOK: OnceLock<fn(u64)> = OnceLock::new();

/// Sets the [`CHUNK_HOOK`] of this process (once; false if it was set).
/// For crash tests only.
pub fn set_chunk_hook(hook: fn(u64)) -> bool {
    CHUNK_HOOK.set(hook).is_ok()
}

/// One sync: a slot, `SyncStarted`, open the upstream's discovery, then
/// the reconciliation in chunks ending with `SyncSucceeded` — or
/// `SyncFailed`. (Not [`Session::decide`]: its opening event commits while
/// its I/O phase runs, its events are read a chunk at a time, and a
/// failure is recorded before it is answered.)
#[tracing::instrument(skip_all, fields(trigger = %trigger))]
pub(super) async fn sync_once(
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
    // Git, off the arbiter — while the writer commits `SyncStarted`
    // (queued first, so it still opens the sync in the log; its fsync
    // overlaps the fetch instead of preceding it).
    let (read_env, snapshot) = (env.clone(), session.state().clone());
    let read = off_arbiter("sync", move || {
        read(&read_env, &snapshot, asked_at, started)
    });
    let (opened, outcome) = futures::join!(session.append(opened, Chunking::MaxEvents), read);
    opened?;
    let result = match outcome? {
        Ok(Read::Unchanged {
            events,
            package_count,
        }) => Ok((events, Changes::default(), package_count, None)),
        Ok(Read::Changed(reconciliation)) => {
            // Whatever happens from here, the refs this writer last read
            // no longer describe the views (some chunks may commit): the
            // next sync after a failure reads in full.
            session.state_mut().last_refs = None;
            let store_span = tracing::info_span!("sync.store");
            reconcile_in_chunks(session, *reconciliation, started)
                .instrument(store_span)
                .await?
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((mut events, changes, package_count, refs)) => {
            let next_sync_at = decide_next(next.as_ref(), None).await;
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
            if refs.is_some() {
                session.state_mut().last_refs = refs;
            }
            if changes.added + changes.modified + changes.deleted > 0 {
                (env.release_memory)();
            }
            crate::metrics::sync(
                Ok((
                    u64::from(changes.added),
                    u64::from(changes.modified),
                    u64::from(changes.deleted),
                )),
                started.elapsed().as_secs_f64(),
            );
            info!(repo = %key, added = changes.added, modified = changes.modified, deleted = changes.deleted,
                duration_ms = started.elapsed().as_millis() as u64, "sync finished");
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
            crate::metrics::sync(Err(class), started.elapsed().as_secs_f64());
            let retry_at = decide_next(next.as_ref(), Some(class)).await;
            let message = e.to_string();
            // Answered now, so the event records the very answer.
            let answer = crate::ServiceError::from(e);
            let failed = vec![event(Payload::SyncFailed(SyncFailed {
                error_class: class.to_owned(),
                message,
                retry_at: retry_at.map(timestamp),
                reply_code: u32::from(answer.code),
                reply_message: answer.message.clone(),
            }))];
            session.append(failed, Chunking::MaxEvents).await?;
            Err(RepositoryError::Answered(answer))
        }
    }
}

/// The next time after this sync — it succeeded (`failure: None`) or
/// failed with class `failure` — decided off the arbiter (it may compute a
/// cron schedule's next time). `None` without a plan, or when the pool
/// could not run it: then the event records no time and the SyncManager
/// decides itself (off the arbiter too).
async fn decide_next(next: Option<&Arc<NextSync>>, failure: Option<&str>) -> Option<SystemTime> {
    let next = next?.clone();
    let failure = failure.map(str::to_owned);
    off_arbiter("next sync time", move || next.decide(failure.as_deref()))
        .await
        .ok()
}

/// What a sync ends with: its last events (`SyncSucceeded`), its counts,
/// the package revisions after it, and the refs it read (with their
/// digest) when they changed.
type Finished = (
    Vec<Event>,
    Changes,
    u64,
    Option<(String, Arc<std::collections::BTreeMap<String, git2::Oid>>)>,
);

/// Runs `reconciliation` chunk by chunk (see the module docs): each chunk
/// reserved from the budget, read off the arbiter while the previous one
/// is appended. The outer error is an append's (answered as is, nothing
/// recorded); the inner one the reconciliation's (recorded as
/// `SyncFailed` by the caller).
async fn reconcile_in_chunks(
    session: &mut Session<Repository>,
    mut reconciliation: Reconciliation,
    started: Instant,
) -> Result<Result<Finished, RepositoryError>, RepositoryError> {
    let env = session.env().clone();
    let max_events = env.store.append_max_events().max(1);
    let chunk_bytes = env.budget.chunk_bytes();
    let mut in_flight: Option<(Chunk, BudgetPermit)> = None;
    let mut committed = 0u64;
    let (mut read_time, mut append_time) = (Duration::ZERO, Duration::ZERO);
    let outcome = loop {
        // The next chunk reserves its share, then is read — while the one
        // before is appended: that append needs no reservation, so a sync
        // never waits for the budget while holding one it could not give
        // back.
        let read_env = env.clone();
        let next = async {
            let permit = read_env.budget.reserve(chunk_bytes).await;
            let read = off_arbiter("sync", move || {
                let started = Instant::now();
                let next = reconciliation.next(&read_env.store, max_events, chunk_bytes);
                (reconciliation, next, started.elapsed())
            })
            .await;
            (permit, read)
        };
        let append = async {
            let started = Instant::now();
            let appended = append_chunk(session, in_flight.take(), &mut committed).await;
            (appended, started.elapsed())
        };
        let ((appended, append_took), (permit, read)) = futures::join!(append, next);
        let (back, next, read_took) = read?;
        reconciliation = back;
        (read_time, append_time) = (read_time + read_took, append_time + append_took);
        appended?;
        match next {
            Ok(Some(chunk)) => {
                // The chunk's estimate, now that it was read: give back
                // what it left of its share; if it took more, reserve all
                // it takes — afresh, holding nothing while it waits (it
                // waits for other chunks to finish, which need nothing
                // from it).
                let permit = if chunk.bytes > permit.bytes() {
                    drop(permit);
                    env.budget.reserve(chunk.bytes).await
                } else {
                    let mut permit = permit;
                    permit.shrink(chunk.bytes);
                    permit
                };
                in_flight = Some((chunk, permit));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = outcome {
        return Ok(Err(e));
    }
    let upstream = reconciliation.upstream();
    let changes = reconciliation.changes();
    let package_count = reconciliation.package_count();
    debug!(
        chunks = committed,
        package_count,
        read_ms = read_time.as_millis() as u64,
        append_ms = append_time.as_millis() as u64,
        duration_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    let done = RepositoryComponent::succeeded(
        changes,
        package_count as u32,
        &upstream.commit,
        &upstream.refs_digest,
        started.elapsed().as_millis() as u64,
    );
    let refs = Some((upstream.refs_digest.clone(), upstream.refs.clone()));
    Ok(Ok((vec![done], changes, package_count, refs)))
}

/// Appends `chunk`'s events (one append: a chunk holds at most
/// `store.append-max-events`), then lets its pins and its reservation go.
async fn append_chunk(
    session: &mut Session<Repository>,
    chunk: Option<(Chunk, BudgetPermit)>,
    committed: &mut u64,
) -> Result<(), RepositoryError> {
    let Some((chunk, permit)) = chunk else {
        return Ok(());
    };
    if chunk.events.is_empty() {
        return Ok(());
    }
    session.append(chunk.events, Chunking::MaxEvents).await?;
    drop(chunk.pins); // the references are committed now
    drop(permit);
    // Hand the chunk's freed pages back now rather than after the whole
    // sync: resident memory follows the chunks in flight.
    (session.env().release_memory)();
    *committed += 1;
    session.env().budget.chunk_appended();
    if let Some(hook) = CHUNK_HOOK.get() {
        hook(*committed);
    }
    Ok(())
}

/// What the I/O phase of a sync found.
enum Read {
    /// The upstream's refs are as the last successful sync left them: its
    /// events (`SyncSucceeded` repeating that sync's), and the package
    /// revisions the view holds.
    Unchanged {
        events: Vec<Event>,
        package_count: u64,
    },
    /// They changed: the reconciliation to run.
    Changed(Box<Reconciliation>),
}

/// Fetches the upstream and opens its discovery. Blocking. A store
/// failure is [`RepositoryError::Views`] (reading) or
/// [`RepositoryError::Blobs`] (storing), an upstream one
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
    match read_upstream(env, spec, asked_at, &known)? {
        UpstreamRead::Unchanged => Ok(Read::Unchanged {
            events: RepositoryComponent::unchanged_events(
                &last,
                started.elapsed().as_millis() as u64,
            ),
            package_count: u64::from(last.package_count),
        }),
        UpstreamRead::Changed(upstream) => Ok(Read::Changed(Box::new(Reconciliation::new(
            *upstream, spec, &env.store,
        )?))),
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
