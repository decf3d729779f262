//! Building, encoding and decoding envelopes.
//!
//! The log stores each event as an encoded [`Envelope`]. Decoding goes
//! through [`decode`], which checks the schema version and upcasts older
//! records, so every reader sees current-version envelopes.

use prost::Message as _;

use crate::{
    v1::{event::Payload, Envelope, Event, TraceContext},
    EventsError,
};

/// Schema version written by this build. Bump it (and add an upcaster in
/// [`upcast`]) only for changes old readers cannot understand; adding fields
/// or payload variants does not need a bump.
pub const SCHEMA_VERSION: u32 = 1;

/// Principal recorded when a command names none.
pub const ANONYMOUS: &str = "anonymous";

/// The kind of an event: one per `Event.payload` variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// [`crate::v1::RepositoryRegistered`].
    RepositoryRegistered,
    /// [`crate::v1::RepositorySpecChanged`].
    RepositorySpecChanged,
    /// [`crate::v1::RepositoryClosed`].
    RepositoryClosed,
    /// [`crate::v1::SyncStarted`].
    SyncStarted,
    /// [`crate::v1::SyncSucceeded`].
    SyncSucceeded,
    /// [`crate::v1::SyncFailed`].
    SyncFailed,
    /// [`crate::v1::PackageRevisionAdded`].
    PackageRevisionAdded,
    /// [`crate::v1::PackageRevisionModified`].
    PackageRevisionModified,
    /// [`crate::v1::PackageRevisionDeleted`].
    PackageRevisionDeleted,
    /// [`crate::v1::DraftCreated`].
    DraftCreated,
    /// [`crate::v1::DraftResourcesUpdated`].
    DraftResourcesUpdated,
    /// [`crate::v1::PackageRevisionProposed`].
    PackageRevisionProposed,
    /// [`crate::v1::ProposalRejected`].
    ProposalRejected,
    /// [`crate::v1::PackageRevisionPublished`].
    PackageRevisionPublished,
    /// [`crate::v1::DeletionProposed`].
    DeletionProposed,
    /// [`crate::v1::DeletionProposalWithdrawn`].
    DeletionProposalWithdrawn,
    /// [`crate::v1::KvEntrySet`].
    KvEntrySet,
    /// [`crate::v1::KvEntryDeleted`].
    KvEntryDeleted,
    /// [`crate::v1::KvEntriesDeleted`].
    KvEntriesDeleted,
    /// [`crate::v1::KvEntriesExpired`].
    KvEntriesExpired,
    /// [`crate::v1::KvEntriesEvicted`].
    KvEntriesEvicted,
    /// [`crate::v1::KvNamespaceConfigured`].
    KvNamespaceConfigured,
    /// [`crate::v1::ArtifactStored`].
    ArtifactStored,
    /// [`crate::v1::ArtifactRevalidated`].
    ArtifactRevalidated,
    /// [`crate::v1::ArtifactInvalidated`].
    ArtifactInvalidated,
    /// [`crate::v1::ArtifactEvicted`].
    ArtifactEvicted,
}

impl EventKind {
    /// Every kind, in schema order.
    pub const ALL: &'static [EventKind] = &[
        EventKind::RepositoryRegistered,
        EventKind::RepositorySpecChanged,
        EventKind::RepositoryClosed,
        EventKind::SyncStarted,
        EventKind::SyncSucceeded,
        EventKind::SyncFailed,
        EventKind::PackageRevisionAdded,
        EventKind::PackageRevisionModified,
        EventKind::PackageRevisionDeleted,
        EventKind::DraftCreated,
        EventKind::DraftResourcesUpdated,
        EventKind::PackageRevisionProposed,
        EventKind::ProposalRejected,
        EventKind::PackageRevisionPublished,
        EventKind::DeletionProposed,
        EventKind::DeletionProposalWithdrawn,
        EventKind::KvEntrySet,
        EventKind::KvEntryDeleted,
        EventKind::KvEntriesDeleted,
        EventKind::KvEntriesExpired,
        EventKind::KvEntriesEvicted,
        EventKind::KvNamespaceConfigured,
        EventKind::ArtifactStored,
        EventKind::ArtifactRevalidated,
        EventKind::ArtifactInvalidated,
        EventKind::ArtifactEvicted,
    ];

    /// The kind of `payload`.
    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::RepositoryRegistered(_) => Self::RepositoryRegistered,
            Payload::RepositorySpecChanged(_) => Self::RepositorySpecChanged,
            Payload::RepositoryClosed(_) => Self::RepositoryClosed,
            Payload::SyncStarted(_) => Self::SyncStarted,
            Payload::SyncSucceeded(_) => Self::SyncSucceeded,
            Payload::SyncFailed(_) => Self::SyncFailed,
            Payload::PackageRevisionAdded(_) => Self::PackageRevisionAdded,
            Payload::PackageRevisionModified(_) => Self::PackageRevisionModified,
            Payload::PackageRevisionDeleted(_) => Self::PackageRevisionDeleted,
            Payload::DraftCreated(_) => Self::DraftCreated,
            Payload::DraftResourcesUpdated(_) => Self::DraftResourcesUpdated,
            Payload::PackageRevisionProposed(_) => Self::PackageRevisionProposed,
            Payload::ProposalRejected(_) => Self::ProposalRejected,
            Payload::PackageRevisionPublished(_) => Self::PackageRevisionPublished,
            Payload::DeletionProposed(_) => Self::DeletionProposed,
            Payload::DeletionProposalWithdrawn(_) => Self::DeletionProposalWithdrawn,
            Payload::KvEntrySet(_) => Self::KvEntrySet,
            Payload::KvEntryDeleted(_) => Self::KvEntryDeleted,
            Payload::KvEntriesDeleted(_) => Self::KvEntriesDeleted,
            Payload::KvEntriesExpired(_) => Self::KvEntriesExpired,
            Payload::KvEntriesEvicted(_) => Self::KvEntriesEvicted,
            Payload::KvNamespaceConfigured(_) => Self::KvNamespaceConfigured,
            Payload::ArtifactStored(_) => Self::ArtifactStored,
            Payload::ArtifactRevalidated(_) => Self::ArtifactRevalidated,
            Payload::ArtifactInvalidated(_) => Self::ArtifactInvalidated,
            Payload::ArtifactEvicted(_) => Self::ArtifactEvicted,
        }
    }

    /// The last two tokens of the event's subject, e.g. `repository.registered`.
    pub fn subject_suffix(self) -> &'static str {
        match self {
            Self::RepositoryRegistered => "repository.registered",
            Self::RepositorySpecChanged => "repository.spec-changed",
            Self::RepositoryClosed => "repository.closed",
            Self::SyncStarted => "sync.started",
            Self::SyncSucceeded => "sync.succeeded",
            Self::SyncFailed => "sync.failed",
            Self::PackageRevisionAdded => "packagerevision.added",
            Self::PackageRevisionModified => "packagerevision.modified",
            Self::PackageRevisionDeleted => "packagerevision.deleted",
            Self::DraftCreated => "packagerevision.draft-created",
            Self::DraftResourcesUpdated => "packagerevision.draft-resources-updated",
            Self::PackageRevisionProposed => "packagerevision.proposed",
            Self::ProposalRejected => "packagerevision.proposal-rejected",
            Self::PackageRevisionPublished => "packagerevision.published",
            Self::DeletionProposed => "packagerevision.deletion-proposed",
            Self::DeletionProposalWithdrawn => "packagerevision.deletion-proposal-withdrawn",
            Self::KvEntrySet => "kv.entry-set",
            Self::KvEntryDeleted => "kv.entry-deleted",
            Self::KvEntriesDeleted => "kv.entries-deleted",
            Self::KvEntriesExpired => "kv.entries-expired",
            Self::KvEntriesEvicted => "kv.entries-evicted",
            Self::KvNamespaceConfigured => "kv.namespace-configured",
            Self::ArtifactStored => "artifact.stored",
            Self::ArtifactRevalidated => "artifact.revalidated",
            Self::ArtifactInvalidated => "artifact.invalidated",
            Self::ArtifactEvicted => "artifact.evicted",
        }
    }

    /// The name shown to people and in JSON, e.g. `RepositoryRegistered`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RepositoryRegistered => "RepositoryRegistered",
            Self::RepositorySpecChanged => "RepositorySpecChanged",
            Self::RepositoryClosed => "RepositoryClosed",
            Self::SyncStarted => "SyncStarted",
            Self::SyncSucceeded => "SyncSucceeded",
            Self::SyncFailed => "SyncFailed",
            Self::PackageRevisionAdded => "PackageRevisionAdded",
            Self::PackageRevisionModified => "PackageRevisionModified",
            Self::PackageRevisionDeleted => "PackageRevisionDeleted",
            Self::DraftCreated => "DraftCreated",
            Self::DraftResourcesUpdated => "DraftResourcesUpdated",
            Self::PackageRevisionProposed => "PackageRevisionProposed",
            Self::ProposalRejected => "ProposalRejected",
            Self::PackageRevisionPublished => "PackageRevisionPublished",
            Self::DeletionProposed => "DeletionProposed",
            Self::DeletionProposalWithdrawn => "DeletionProposalWithdrawn",
            Self::KvEntrySet => "KvEntrySet",
            Self::KvEntryDeleted => "KvEntryDeleted",
            Self::KvEntriesDeleted => "KvEntriesDeleted",
            Self::KvEntriesExpired => "KvEntriesExpired",
            Self::KvEntriesEvicted => "KvEntriesEvicted",
            Self::KvNamespaceConfigured => "KvNamespaceConfigured",
            Self::ArtifactStored => "ArtifactStored",
            Self::ArtifactRevalidated => "ArtifactRevalidated",
            Self::ArtifactInvalidated => "ArtifactInvalidated",
            Self::ArtifactEvicted => "ArtifactEvicted",
        }
    }
}

/// Who and what caused a batch of events: copied into each envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Id of the command; generated when empty.
    pub correlation_id: String,
    /// Id of the message that directly caused the events; defaults to the
    /// correlation id.
    pub causation_id: String,
    /// Who issued the command; [`ANONYMOUS`] when empty.
    pub principal: String,
    /// W3C trace context of the command, if any.
    pub trace: Option<TraceContext>,
    /// Idempotency key of the command (`Cairn-Request-Id`); empty when none.
    pub request_id: String,
    /// SHA-256 of the command's endpoint and body, when `request_id` is set.
    pub request_digest: Vec<u8>,
}

impl Metadata {
    /// Metadata for a command issued by `principal` with a fresh correlation id.
    pub fn command(principal: impl Into<String>) -> Self {
        let correlation_id = new_id();
        Self {
            causation_id: correlation_id.clone(),
            correlation_id,
            principal: principal.into(),
            ..Default::default()
        }
    }

    /// Fills the defaults documented on the fields.
    pub fn normalized(mut self) -> Self {
        if self.correlation_id.is_empty() {
            self.correlation_id = new_id();
        }
        if self.causation_id.is_empty() {
            self.causation_id = self.correlation_id.clone();
        }
        if self.principal.is_empty() {
            self.principal = ANONYMOUS.to_owned();
        }
        self
    }
}

/// A fresh UUID v7 (time-ordered) in canonical text form.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The kind of the envelope's event, or an error when it has no payload.
pub fn kind(envelope: &Envelope) -> Result<EventKind, EventsError> {
    envelope
        .event
        .as_ref()
        .and_then(|e| e.payload.as_ref())
        .map(EventKind::of)
        .ok_or(EventsError::MissingPayload { seq: envelope.seq })
}

/// Wraps a payload into an [`Event`].
pub fn event(payload: Payload) -> Event {
    Event {
        payload: Some(payload),
    }
}

/// Encodes an envelope for storage or the wire.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// Decodes a stored envelope, checks its schema version and upcasts it to
/// [`SCHEMA_VERSION`].
pub fn decode(bytes: &[u8]) -> Result<Envelope, EventsError> {
    let envelope = Envelope::decode(bytes)?;
    let envelope = upcast(envelope)?;
    kind(&envelope)?;
    Ok(envelope)
}

/// Brings an envelope of an older schema version to [`SCHEMA_VERSION`].
///
/// Version 1 is the first version, so the only work today is refusing
/// records from the future. A version 2 adds a `1 => …` arm here that
/// rewrites the payload (model: cqrs-es `SemanticVersionEventUpcaster`).
pub fn upcast(envelope: Envelope) -> Result<Envelope, EventsError> {
    match envelope.schema_version {
        SCHEMA_VERSION => Ok(envelope),
        found => Err(EventsError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::RepositoryClosed;

    #[test]
    fn future_schema_versions_are_refused_by_name() {
        let env = Envelope {
            schema_version: 7,
            event: Some(event(
                Payload::RepositoryClosed(RepositoryClosed::default()),
            )),
            ..Default::default()
        };
        let err = decode(&encode(&env)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported schema version 7, this build understands up to 1"
        );
    }

    #[test]
    fn envelopes_without_payload_are_refused() {
        let env = Envelope {
            schema_version: SCHEMA_VERSION,
            seq: 9,
            ..Default::default()
        };
        assert!(matches!(
            decode(&encode(&env)),
            Err(EventsError::MissingPayload { seq: 9 })
        ));
    }

    #[test]
    fn metadata_defaults() {
        let m = Metadata::default().normalized();
        assert_eq!(m.principal, ANONYMOUS);
        assert_eq!(m.causation_id, m.correlation_id);
        assert_eq!(
            uuid::Uuid::parse_str(&m.correlation_id)
                .unwrap()
                .get_version_num(),
            7
        );
    }
}
