//! A sync of one repository, as its writer runs it: a slot of the
//! node-wide cap, `SyncStarted` appended while the upstream is read and
//! diffed against the view off the arbiter (the I/O phase), then the
//! reconciliation ending with `SyncSucceeded` in bounded appends — or
//! `SyncFailed`, recorded before the failure is answered. A failure inside
//! the node — reading the views, or storing what was read in the blob
//! store — is recorded with class [`super::error::INTERNAL_CLASS`], never as
//! an upstream one (see [`RepositoryError::sync_class`]).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use cairn_events::{
    envelope::event,
    v1::{event::Payload, Event, SyncFailed, SyncStarted},
};
use cairn_storage::views::RepositoriesView;
use tracing::{info, warn};

use super::{
    component::{Changes, RepositoryComponent},
    domain::Repository,
    error::RepositoryError,
    upstream::{read_upstream, Known, SyncEnv, UpstreamRead},
};
use crate::{
    schedule::{NextSync, SyncReport},
    writer::{off_arbiter, Chunking, Session},
};

/// One sync: a slot, `SyncStarted`, read the upstream and diff it against
/// the view, then the reconciliation ending with `SyncSucceeded` (in
/// bounded appends) — or `SyncFailed`. (Not [`Session::decide`]: its
/// opening event commits while its I/O phase runs, and a failure is
/// recorded before it is answered.)
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
    // Git and the diff against the view, off the arbiter — while the
    // writer commits `SyncStarted` (queued first, so it still opens the
    // sync in the log; its fsync overlaps the fetch instead of preceding it).
    let (read_env, snapshot) = (env.clone(), session.state().clone());
    let read = off_arbiter("sync", move || {
        read(&read_env, &snapshot, asked_at, started)
    });
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
