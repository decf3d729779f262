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

/// An envelope's encoding with a new `seq`, made by [`encode_with_seq`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resequenced {
    /// The encoding.
    pub bytes: Vec<u8>,
    /// The length of its `event` field's message (what
    /// `prost::Message::encoded_len` of the event gives).
    pub event_bytes: usize,
}

/// `encoded` (an envelope as [`encode`] wrote it) with its `seq` set to
/// `seq`, made from the bytes instead of by encoding the decoded envelope
/// again: the fields before `seq` (field 5) are copied, `seq` is written
/// (omitted when 0, as prost omits it), and the fields after it are
/// copied. For prost's encoding (each field once, in field-number order)
/// this is exactly what [`encode`] gives for the envelope with that `seq`.
/// Answers `None` for bytes that are not in that order or do not parse as
/// protobuf fields; the caller encodes then.
///
/// Fields this build does not know are kept (a re-encoding would drop
/// them), so a log row keeps what a newer writer put in it.
pub fn encode_with_seq(encoded: &[u8], seq: u64) -> Option<Resequenced> {
    use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
    /// `Envelope.seq`.
    const SEQ_FIELD: u32 = 5;
    /// `Envelope.event`.
    const EVENT_FIELD: u32 = 11;
    let mut rest = encoded;
    let mut last_field = 0;
    let mut event_bytes = 0;
    // Where the bytes of field 5 start and end (empty where it is absent):
    // what is replaced.
    let mut seq_at: Option<(usize, usize)> = None;
    while !rest.is_empty() {
        let start = encoded.len() - rest.len();
        let (field, wire) = decode_key(&mut rest).ok()?;
        if field <= last_field {
            return None;
        }
        if field > SEQ_FIELD && seq_at.is_none() {
            seq_at = Some((start, start));
        }
        last_field = field;
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut rest).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                if field == EVENT_FIELD {
                    event_bytes = len;
                }
                len
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        rest = rest.get(skip..)?;
        if field == SEQ_FIELD {
            seq_at = Some((start, encoded.len() - rest.len()));
        }
    }
    let (head, tail) = seq_at.unwrap_or((encoded.len(), encoded.len()));
    let mut bytes = Vec::with_capacity(encoded.len() + 11);
    bytes.extend_from_slice(&encoded[..head]);
    if seq != 0 {
        encode_key(SEQ_FIELD, WireType::Varint, &mut bytes);
        encode_varint(seq, &mut bytes);
    }
    bytes.extend_from_slice(&encoded[tail..]);
    Some(Resequenced { bytes, event_bytes })
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

    /// An envelope with every field set.
    fn full(seq: u64) -> Envelope {
        Envelope {
            schema_version: SCHEMA_VERSION,
            event_id: "0192e0c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6".into(),
            stream: "repo/team-a/blueprints".into(),
            stream_version: 300,
            seq,
            recorded_at: Some(pbjson_types::Timestamp {
                seconds: 1_764_500_000,
                nanos: 123_456_789,
            }),
            correlation_id: "c".into(),
            causation_id: "d".into(),
            principal: "alice".into(),
            trace: Some(TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: "k=v".into(),
            }),
            event: Some(event(Payload::RepositoryClosed(RepositoryClosed {
                reason: "deleted".into(),
            }))),
            request_id: "r-1".into(),
            request_digest: vec![7; 32],
        }
    }

    #[test]
    fn a_seq_spliced_into_the_bytes_is_what_encoding_the_envelope_gives() {
        for seq in [0, 1, 127, 128, 300_000, u64::MAX] {
            for written in [0, 5, 1 << 40] {
                let spliced = encode_with_seq(&encode(&full(written)), seq).unwrap();
                assert_eq!(
                    spliced.bytes,
                    encode(&full(seq)),
                    "seq {seq} over {written}"
                );
                assert_eq!(
                    spliced.event_bytes,
                    full(seq).event.unwrap().encoded_len(),
                    "seq {seq}"
                );
            }
        }
        // Without the fields after `seq`, and with nothing but `seq`.
        let short = Envelope {
            schema_version: SCHEMA_VERSION,
            stream_version: 2,
            ..Default::default()
        };
        let with_seq = Envelope {
            seq: 9,
            ..short.clone()
        };
        assert_eq!(
            encode_with_seq(&encode(&short), 9).unwrap().bytes,
            encode(&with_seq)
        );
        assert_eq!(
            encode_with_seq(&[], 9).unwrap().bytes,
            encode(&Envelope {
                seq: 9,
                ..Default::default()
            })
        );
        assert_eq!(encode_with_seq(&[], 9).unwrap().event_bytes, 0);
    }

    #[test]
    fn a_splice_keeps_unknown_fields_and_refuses_what_is_not_prost_order() {
        // Field 14 (unknown here), a varint 1, after the known ones.
        let mut newer = encode(&full(0));
        newer.extend_from_slice(&[14 << 3, 1]);
        let mut expected = encode(&full(42));
        expected.extend_from_slice(&[14 << 3, 1]);
        assert_eq!(encode_with_seq(&newer, 42).unwrap().bytes, expected);
        // Field 2 after field 4: decodable, but not prost's order.
        let mut shuffled = encode(&Envelope {
            stream_version: 3,
            ..Default::default()
        });
        shuffled.extend_from_slice(&[2 << 3 | 2, 1, b'x']);
        assert!(Envelope::decode(shuffled.as_slice()).is_ok());
        assert_eq!(encode_with_seq(&shuffled, 1), None);
        // Truncated inside a field, and a group.
        let bytes = encode(&full(0));
        assert_eq!(encode_with_seq(&bytes[..bytes.len() - 1], 1), None);
        assert_eq!(encode_with_seq(&[1 << 3 | 3], 1), None);
    }

    proptest::proptest! {
        #[test]
        fn any_envelope_spliced_equals_its_encoding(
            event_id in ".{0,40}",
            stream in "[a-z/]{0,30}",
            stream_version in proptest::prelude::any::<u64>(),
            written in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            principal in ".{0,10}",
            trace in proptest::option::of(".{0,60}"),
            reason in ".{0,100}",
            digest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let env = |seq| Envelope {
                schema_version: SCHEMA_VERSION,
                event_id: event_id.clone(),
                stream: stream.clone(),
                stream_version,
                seq,
                principal: principal.clone(),
                trace: trace.clone().map(|traceparent| TraceContext {
                    traceparent,
                    tracestate: String::new(),
                }),
                event: Some(event(Payload::RepositoryClosed(RepositoryClosed {
                    reason: reason.clone(),
                }))),
                request_digest: digest.clone(),
                ..Default::default()
            };
            let spliced = encode_with_seq(&encode(&env(written)), seq).unwrap();
            proptest::prop_assert_eq!(spliced.bytes, encode(&env(seq)));
        }
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
