//! Messages of the SyncManager: those it handles, and [`RunSync`], the one
//! it sends its repository (through a `Recipient<RunSync>`, so the
//! scheduler knows nothing of the actor that syncs).

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use actix::Message;
use cairn_events::{envelope::Metadata, v1::SyncSpec};

use super::next::{NextSync, NextTime};
use crate::ServiceError;

/// What a successful sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// New package revisions.
    pub added: u32,
    /// Changed ones.
    pub modified: u32,
    /// Removed ones.
    pub deleted: u32,
    /// Package revisions after the sync.
    pub package_count: u32,
}

/// Fetches and reconciles now (sent by the SyncManager to its repository;
/// was `repository::Sync`). Answers with the sync's outcome; a failed sync
/// is recorded (`SyncFailed`) and answered as an error.
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncReport, ServiceError>")]
pub struct RunSync {
    /// What asked: "register", "manual", "startup", …
    pub trigger: String,
    /// When it was asked (a fetch that finished later serves it).
    pub asked_at: Instant,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// Decides the next sync time recorded in the sync's last event (none:
    /// nothing recorded; a sync asked outside a SyncManager).
    pub next: Option<Arc<NextSync>>,
    /// The span of the command (or timer) that caused it.
    pub span: tracing::Span,
}

/// Syncs now (manual, at registration, …) and sets the next time from it.
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncReport, ServiceError>")]
pub struct SyncNow {
    /// What asked: "manual", "register", …
    pub trigger: String,
    /// When it was asked (a fetch that finished later serves it).
    pub asked_at: Instant,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// The repository's `sync` spec changed (`repo.update`): plan again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Replan {
    /// The new spec.
    pub sync: Option<SyncSpec>,
    /// The time [`PlanFor`] gave for it (and the repository recorded):
    /// armed as is. None: decided anew.
    pub next: Option<NextTime>,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// When the manager would sync next under the sync spec `sync`, planned
/// from the spec as [`Replan`] plans it (jitter drawn), without arming
/// anything: `repo.update` records it with the spec change, then hands it
/// back in [`Replan`], so the status and the timer agree.
#[derive(Debug, Message)]
#[rtype(result = "NextTime")]
pub struct PlanFor {
    /// The new spec.
    pub sync: Option<SyncSpec>,
}

/// When the manager will sync next, and why; asked while a sync runs, it
/// answers once that sync has set the next time.
#[derive(Debug, Message)]
#[rtype(result = "Option<(SystemTime, &'static str)>")]
pub struct NextDue;

/// Stops the manager (unregister, shutdown); a sync in flight finishes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopManager;
