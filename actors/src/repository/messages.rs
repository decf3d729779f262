//! Messages the RepositoryActor handles (each carries the span of the
//! command that caused it). It also handles [`crate::schedule::RunSync`]
//! (a sync, sent by its SyncManager) and [`crate::writer::StopWriter`].

use actix::Message;
use cairn_events::{envelope::Metadata, v1::RepositorySpec};

use super::op::{LifecycleOp, LifecycleOutcome};
use crate::ServiceError;

/// Records the registration (`RepositoryRegistered`). Sent once, first.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Register {
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// Replaces the repository's spec (`RepositorySpecChanged`); answers the
/// spec now in force.
#[derive(Debug, Message)]
#[rtype(result = "Result<RepositorySpec, ServiceError>")]
pub struct UpdateSpec {
    /// The whole new spec (namespace and name unchanged).
    pub spec: RepositorySpec,
    /// When the repository syncs next under it (its SyncManager's plan),
    /// recorded in the event for the status.
    pub next_sync_at: Option<pbjson_types::Timestamp>,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// Unregisters: `PackageRevisionDeleted` for each revision, then
/// `RepositoryClosed`; the actor stops after.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct Close {
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// A lifecycle command (was `Command`; see [`super::command`]): validated
/// against the view, written to the upstream, recorded as events once it
/// accepted them; answers what it left.
#[derive(Debug, Message)]
#[rtype(result = "Result<LifecycleOutcome, ServiceError>")]
pub struct ApplyLifecycle {
    /// What to do.
    pub op: LifecycleOp,
    /// Who asked (the commits' author when the repository names none, and
    /// their `Cairn-Principal` trailer), and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}
