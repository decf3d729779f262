//! Messages the RepositoryActor handles.

use std::{sync::Arc, time::Instant};

use actix::Message;
use cairn_events::{envelope::Metadata, v1::RepositorySpec};

use super::command::{Op, Outcome};
use crate::{schedule::NextSync, ServiceError};

/// Records the registration (`RepositoryRegistered`). Sent once, first.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Register {
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
}

/// Fetches and reconciles now. Answers with the sync's outcome; a failed
/// sync is recorded (`SyncFailed`) and answered as an error.
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncReport, ServiceError>")]
pub struct Sync {
    /// What asked: "register", "manual", "startup", …
    pub trigger: String,
    /// When it was asked (a fetch that finished later serves it).
    pub asked_at: Instant,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// Decides the next sync time recorded in the sync's last event (none:
    /// nothing recorded; a sync asked outside a SyncManager).
    pub next: Option<Arc<NextSync>>,
}

/// Replaces the repository's spec (`RepositorySpecChanged`); answers the
/// spec now in force.
#[derive(Debug, Message)]
#[rtype(result = "Result<RepositorySpec, ServiceError>")]
pub struct UpdateSpec {
    /// The whole new spec (namespace and name unchanged).
    pub spec: RepositorySpec,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
}

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

/// Unregisters: `PackageRevisionDeleted` for each revision, then
/// `RepositoryClosed`; the actor stops after.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Close {
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
}

/// Stops the actor (node shutdown); in-flight commands finish first.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// A lifecycle command (see [`super::command`]): validated against the
/// view, written to the upstream, recorded as events once it accepted them;
/// answers what it left.
#[derive(Debug, Message)]
#[rtype(result = "Result<Outcome, ServiceError>")]
pub struct Command {
    /// What to do.
    pub op: Op,
    /// Who asked (the commits' author when known), and the command's ids.
    pub metadata: Metadata,
}
