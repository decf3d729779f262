//! Messages the Registry handles.

use std::time::{Instant, SystemTime};

use actix::Message;
use cairn_events::{envelope::Metadata, v1::RepositorySpec};

use crate::{schedule::SyncReport, ServiceError};

/// Registers a repository (validated spec with defaults filled in) and,
/// when `wait`, performs its first sync before answering. A failed first
/// sync leaves the repository registered, its status saying why.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<Result<SyncReport, ServiceError>>, ServiceError>")]
pub struct RegisterRepository {
    /// The repository.
    pub spec: RepositorySpec,
    /// Sync before answering.
    pub wait: bool,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// Unregisters `namespace/name`; removes the local mirror with the last
/// registration of its URL.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ServiceError>")]
pub struct UnregisterRepository {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// Syncs `namespace/name` now.
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncReport, ServiceError>")]
pub struct SyncRepository {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What asked ("manual", "startup", …).
    pub trigger: String,
    /// When it was asked.
    pub asked_at: Instant,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// Replaces a registered repository's spec (`repo.update`) and plans its
/// syncs again; answers the spec now in force.
#[derive(Debug, Message)]
#[rtype(result = "Result<RepositorySpec, ServiceError>")]
pub struct UpdateRepository {
    /// The whole new spec.
    pub spec: RepositorySpec,
    /// Who asked, and the command's ids.
    pub metadata: Metadata,
    /// The span of the command that caused it.
    pub span: tracing::Span,
}

/// When `namespace/name` syncs next and why ("schedule", "run-once",
/// "retry"), once no sync of it runs; `None` when it is not registered.
#[derive(Debug, Message)]
#[rtype(result = "Option<(SystemTime, &'static str)>")]
pub struct NextSyncOf {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// How many fetches the node performed (shared fetches count once).
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct FetchCount;

/// How many discoveries (full reads of a mirror) the node ran; a sync that
/// finds the upstream unchanged runs none.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct DiscoveryCount;

/// How many tags, drafts and proposals the node's discoveries read; an
/// incremental sync reads only those of the packages whose refs changed.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct RefsRead;

/// Stops every repository actor, then the registry (node shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// A lifecycle command for the repository `namespace/name`, handed to its
/// RepositoryActor (was `CommandRepository`).
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::repository::LifecycleOutcome, ServiceError>")]
pub struct RouteLifecycle {
    /// Namespace.
    pub namespace: String,
    /// Repository name.
    pub name: String,
    /// The command (it carries its span).
    pub lifecycle: crate::repository::ApplyLifecycle,
}

/// In a cluster: this node now owns `stream` (its lease is held and its
/// log caught up to the fence). A repository stream registered in the
/// views is opened (actor and SyncManager, which syncs it at once); any
/// other stream needs nothing.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct OwnStream {
    /// The stream.
    pub stream: cairn_events::StreamId,
}

/// In a cluster: this node no longer owns `stream`. Its SyncManager stops,
/// then its actor once the commands queued before finished; answered when
/// both stopped.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DisownStream {
    /// The stream.
    pub stream: cairn_events::StreamId,
}
