//! Golden fixtures: the encoded bytes (and JSON rendering) of one envelope per
//! event type are committed under `tests/golden/`. This test proves that
//! bytes written by earlier builds still decode to the same values, and that
//! this build still writes the very same bytes.
//!
//! To add a fixture for a new event type, add it to `samples()` (the match in
//! `every_kind_has_a_sample` fails to compile until you do) and run
//! `CAIRN_BLESS=1 cargo test -p cairn-events --test golden` once. Never
//! re-bless an existing fixture: old bytes must keep decoding.

use std::{collections::BTreeSet, fs, path::PathBuf};

use cairn_events::{
    envelope::{self, event},
    json,
    v1::{
        event::Payload, ArtifactEvicted, ArtifactInvalidated, ArtifactKey, ArtifactRevalidated,
        ArtifactStored, DeletionProposalWithdrawn, DeletionProposed, DraftCreated,
        DraftResourcesUpdated, Envelope, GitSpec, HeaderField, KvEntriesDeleted, KvEntriesEvicted,
        KvEntriesExpired, KvEntryDeleted, KvEntryRef, KvEntrySet, KvNamespaceConfigured,
        KvNamespaceSettings, PackageRevision, PackageRevisionAdded, PackageRevisionDeleted,
        PackageRevisionModified, PackageRevisionProposed, PackageRevisionPublished,
        ProposalRejected, RepositoryClosed, RepositoryRegistered, RepositorySpec,
        RepositorySpecChanged, SyncFailed, SyncSpec, SyncStarted, SyncSucceeded, Task,
        TraceContext,
    },
    EventKind, SCHEMA_VERSION,
};

fn spec() -> RepositorySpec {
    RepositorySpec {
        namespace: "team-a".into(),
        name: "blueprints".into(),
        r#type: "git".into(),
        git: Some(GitSpec {
            url: "https://git.example.com/platform/blueprints.git".into(),
            branch: "main".into(),
            directory: "/catalog".into(),
            create_branch: true,
            author: "cairn".into(),
            email: "cairn@example.com".into(),
            secret_ref: "git-credentials".into(),
        }),
        sync: Some(SyncSpec {
            schedule: "*/10 * * * *".into(),
            run_once_at: Some(pbjson_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
        }),
        deployment: false,
    }
}

fn envelope_for(seq: u64, payload: Payload) -> Envelope {
    Envelope {
        schema_version: SCHEMA_VERSION,
        event_id: format!("01900000-0000-7000-8000-{seq:012}"),
        stream: "repo/team-a/blueprints".into(),
        stream_version: seq,
        seq,
        recorded_at: Some(pbjson_types::Timestamp {
            seconds: 1_780_000_000 + seq as i64,
            nanos: 250_000_000,
        }),
        correlation_id: "01900000-0000-7000-8000-00000000c0de".into(),
        causation_id: "01900000-0000-7000-8000-00000000c0de".into(),
        principal: "alice@example.com".into(),
        trace: Some(TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: String::new(),
        }),
        event: Some(event(payload)),
        // Recorded only for commands with an idempotency key; the goldens
        // keep the bytes of envelopes written before it existed.
        request_id: String::new(),
        request_digest: Vec::new(),
    }
}

/// An envelope of artifact stream 3.
fn artifact_envelope(seq: u64, payload: Payload) -> Envelope {
    Envelope {
        stream: "artifact/03".into(),
        ..envelope_for(seq, payload)
    }
}

fn artifact_key() -> ArtifactKey {
    ArtifactKey {
        method: "GET".into(),
        url: "https://charts.example.com/nginx-15.1.0.tgz".into(),
        vary_key: String::new(),
    }
}

fn header(name: &str, value: &str) -> HeaderField {
    HeaderField {
        name: name.into(),
        value: value.into(),
    }
}

fn artifact_samples() -> Vec<(EventKind, Envelope)> {
    vec![
        (
            EventKind::ArtifactStored,
            artifact_envelope(
                40,
                Payload::ArtifactStored(ArtifactStored {
                    key: Some(artifact_key()),
                    status: 200,
                    headers: vec![
                        header("content-type", "application/gzip"),
                        header("etag", "\"5f1a-17b\""),
                        header("cache-control", "max-age=300"),
                    ],
                    vary: vec![],
                    digest:
                        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                            .into(),
                    size: 3,
                    response_time: Some(pbjson_types::Timestamp {
                        seconds: 1_780_000_040,
                        nanos: 0,
                    }),
                    upstream: "charts".into(),
                }),
            ),
        ),
        (
            EventKind::ArtifactRevalidated,
            artifact_envelope(
                41,
                Payload::ArtifactRevalidated(ArtifactRevalidated {
                    key: Some(artifact_key()),
                    headers: vec![header("etag", "\"5f1a-17b\"")],
                    response_time: Some(pbjson_types::Timestamp {
                        seconds: 1_780_000_041,
                        nanos: 0,
                    }),
                }),
            ),
        ),
        (
            EventKind::ArtifactInvalidated,
            artifact_envelope(
                42,
                Payload::ArtifactInvalidated(ArtifactInvalidated {
                    url: "https://charts.example.com/nginx-15.1.0.tgz".into(),
                    reason: "PUT".into(),
                }),
            ),
        ),
        (
            EventKind::ArtifactEvicted,
            artifact_envelope(
                43,
                Payload::ArtifactEvicted(ArtifactEvicted {
                    key: Some(artifact_key()),
                    digest:
                        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                            .into(),
                    reason: "lru".into(),
                }),
            ),
        ),
    ]
}

fn samples() -> Vec<(EventKind, Envelope)> {
    let mut all = repository_samples();
    all.extend(artifact_samples());
    all
}

fn repository_samples() -> Vec<(EventKind, Envelope)> {
    let mut changed = spec();
    changed.git.as_mut().unwrap().branch = "release".into();
    vec![
        (
            EventKind::RepositoryRegistered,
            envelope_for(
                1,
                Payload::RepositoryRegistered(RepositoryRegistered { spec: Some(spec()) }),
            ),
        ),
        (
            EventKind::RepositorySpecChanged,
            envelope_for(
                2,
                Payload::RepositorySpecChanged(RepositorySpecChanged {
                    spec: Some(changed),
                    next_sync_at: None,
                }),
            ),
        ),
        (
            EventKind::SyncStarted,
            envelope_for(
                4,
                Payload::SyncStarted(SyncStarted {
                    trigger: "register".into(),
                }),
            ),
        ),
        (
            EventKind::SyncSucceeded,
            envelope_for(
                5,
                Payload::SyncSucceeded(SyncSucceeded {
                    commit: "7b5e4b0c2a7c9f4d3e1a6b8c0d2e4f6a8b0c2d4e".into(),
                    added: 8,
                    modified: 1,
                    deleted: 2,
                    package_count: 8,
                    duration_ms: 412,
                    next_sync_at: Some(pbjson_types::Timestamp {
                        seconds: 1_780_000_600,
                        nanos: 0,
                    }),
                    // Added after this fixture was blessed: absent from its
                    // bytes, so it must stay empty here.
                    refs_digest: String::new(),
                }),
            ),
        ),
        (
            EventKind::SyncFailed,
            envelope_for(
                6,
                Payload::SyncFailed(SyncFailed {
                    error_class: "network".into(),
                    message: "cannot reach https://git.example.com/platform/blueprints.git".into(),
                    retry_at: Some(pbjson_types::Timestamp {
                        seconds: 1_780_000_030,
                        nanos: 0,
                    }),
                    // Golden bytes from before these fields: still decode.
                    reply_code: 0,
                    reply_message: String::new(),
                }),
            ),
        ),
        (
            EventKind::PackageRevisionAdded,
            envelope_for(
                7,
                Payload::PackageRevisionAdded(PackageRevisionAdded {
                    revision: Some(revision()),
                }),
            ),
        ),
        (
            EventKind::PackageRevisionModified,
            envelope_for(8, {
                let mut r = revision();
                r.latest = false;
                Payload::PackageRevisionModified(PackageRevisionModified { revision: Some(r) })
            }),
        ),
        (
            EventKind::PackageRevisionDeleted,
            envelope_for(
                9,
                Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                    name: "blueprints.catalog.namespace.basens.v2".into(),
                    // Added after this fixture was blessed: absent from its
                    // bytes, so it must stay empty here.
                    last: None,
                }),
            ),
        ),
        (
            EventKind::DraftCreated,
            envelope_for(10, {
                let mut r = draft("Draft");
                r.tasks.truncate(1);
                Payload::DraftCreated(DraftCreated {
                    revision: Some(r),
                    clone_from: "blueprints.catalog.namespace.basens.v2".into(),
                    // Added after this fixture was blessed: absent from its
                    // bytes, so it must stay empty here.
                    copied_from: String::new(),
                })
            }),
        ),
        (
            EventKind::DraftResourcesUpdated,
            envelope_for(
                11,
                Payload::DraftResourcesUpdated(DraftResourcesUpdated {
                    revision: Some(draft("Draft")),
                }),
            ),
        ),
        (
            EventKind::PackageRevisionProposed,
            envelope_for(
                12,
                Payload::PackageRevisionProposed(PackageRevisionProposed {
                    revision: Some(draft("Proposed")),
                }),
            ),
        ),
        (
            EventKind::ProposalRejected,
            envelope_for(
                13,
                Payload::ProposalRejected(ProposalRejected {
                    revision: Some(draft("Draft")),
                }),
            ),
        ),
        (
            EventKind::PackageRevisionPublished,
            envelope_for(14, {
                let mut r = revision();
                r.revision = 3;
                r.workspace = "ws-7".into();
                r.name = "blueprints.catalog.namespace.basens.ws-7".into();
                Payload::PackageRevisionPublished(PackageRevisionPublished { revision: Some(r) })
            }),
        ),
        (
            EventKind::DeletionProposed,
            envelope_for(15, {
                let mut r = revision();
                r.lifecycle = "DeletionProposed".into();
                Payload::DeletionProposed(DeletionProposed { revision: Some(r) })
            }),
        ),
        (
            EventKind::DeletionProposalWithdrawn,
            envelope_for(
                16,
                Payload::DeletionProposalWithdrawn(DeletionProposalWithdrawn {
                    revision: Some(revision()),
                }),
            ),
        ),
        (
            EventKind::RepositoryClosed,
            envelope_for(
                3,
                Payload::RepositoryClosed(RepositoryClosed {
                    reason: "unregistered".into(),
                }),
            ),
        ),
        (
            EventKind::KvEntrySet,
            envelope_for(
                20,
                Payload::KvEntrySet(KvEntrySet {
                    namespace: "user:123".into(),
                    key: "profile".into(),
                    value: br#"{"name":"Alice"}"#.to_vec(),
                    json: true,
                    tags: vec!["profile".into(), "user".into()],
                    created_at_ms: 1_661_554_055_000,
                    expires_at_ms: 1_661_557_655_000,
                }),
            ),
        ),
        (
            EventKind::KvEntryDeleted,
            envelope_for(
                21,
                Payload::KvEntryDeleted(KvEntryDeleted {
                    namespace: "user:123".into(),
                    key: "profile".into(),
                    expired: false,
                }),
            ),
        ),
        (
            EventKind::KvEntriesDeleted,
            envelope_for(
                22,
                Payload::KvEntriesDeleted(KvEntriesDeleted {
                    by: "tags".into(),
                    selector: "any:product".into(),
                    count: 1,
                    entries: vec![kv_ref("catalog", "product:456")],
                }),
            ),
        ),
        (
            EventKind::KvEntriesExpired,
            envelope_for(
                23,
                Payload::KvEntriesExpired(KvEntriesExpired {
                    count: 1,
                    entries: vec![kv_ref("", "session:xyz")],
                }),
            ),
        ),
        (
            EventKind::KvEntriesEvicted,
            envelope_for(
                24,
                Payload::KvEntriesEvicted(KvEntriesEvicted {
                    namespace: "catalog".into(),
                    count: 1,
                    entries: vec![kv_ref("catalog", "product:1")],
                }),
            ),
        ),
        (
            EventKind::KvNamespaceConfigured,
            envelope_for(
                25,
                Payload::KvNamespaceConfigured(KvNamespaceConfigured {
                    namespace: "catalog".into(),
                    settings: Some(KvNamespaceSettings {
                        max_entries: 100,
                        max_bytes: 0,
                        default_ttl_ms: 3_600_000,
                        origin_subject: String::new(),
                        write_through: false,
                    }),
                }),
            ),
        ),
    ]
}

fn kv_ref(namespace: &str, key: &str) -> KvEntryRef {
    KvEntryRef {
        namespace: namespace.into(),
        key: key.into(),
    }
}

/// An unpublished revision of `lifecycle` with two tasks.
fn draft(lifecycle: &str) -> PackageRevision {
    PackageRevision {
        name: "blueprints.catalog.namespace.basens.ws-7".into(),
        workspace: "ws-7".into(),
        revision: 0,
        lifecycle: lifecycle.into(),
        latest: false,
        published_by: String::new(),
        published_at: None,
        tasks: vec![
            Task {
                r#type: "init".into(),
                raw: r#"{"type":"init","init":{"description":"basens"}}"#.into(),
            },
            Task {
                r#type: "patch".into(),
                raw: r#"{"type":"patch","patch":{}}"#.into(),
            },
        ],
        ..revision()
    }
}

fn revision() -> PackageRevision {
    PackageRevision {
        name: "blueprints.catalog.namespace.basens.v2".into(),
        path: "catalog/namespace".into(),
        package: "basens".into(),
        workspace: "v2".into(),
        revision: 2,
        lifecycle: "Published".into(),
        commit: "7b5e4b0c2a7c9f4d3e1a6b8c0d2e4f6a8b0c2d4e".into(),
        resources: [
            (
                "Kptfile".to_string(),
                "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                    .to_string(),
            ),
            (
                "namespace.yaml".to_string(),
                "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"
                    .to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        published_by: "alice@example.com".into(),
        published_at: Some(pbjson_types::Timestamp {
            seconds: 1_661_554_055,
            nanos: 0,
        }),
        tasks: vec![Task {
            r#type: "init".into(),
            raw: r#"{"type":"init","init":{}}"#.into(),
        }],
        labels: [("tier".to_string(), "base".to_string())]
            .into_iter()
            .collect(),
        latest: true,
        // Empty: these fixtures hold the bytes of events older than the
        // field (an empty map encodes as nothing).
        annotations: Default::default(),
    }
}

fn golden_dir() -> PathBuf {
    // The runtime value first: a test binary another checkout built into a
    // shared target directory still reads this checkout's files.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/golden")
}

#[test]
fn every_kind_has_a_sample() {
    let covered: BTreeSet<EventKind> = samples().into_iter().map(|(k, _)| k).collect();
    let all: BTreeSet<EventKind> = EventKind::ALL.iter().copied().collect();
    assert_eq!(covered, all);
    // Compile-time reminder: a new payload variant breaks this match.
    for (_, env) in samples() {
        match env.event.unwrap().payload.unwrap() {
            Payload::RepositoryRegistered(_)
            | Payload::RepositorySpecChanged(_)
            | Payload::RepositoryClosed(_)
            | Payload::SyncStarted(_)
            | Payload::SyncSucceeded(_)
            | Payload::SyncFailed(_)
            | Payload::PackageRevisionAdded(_)
            | Payload::PackageRevisionModified(_)
            | Payload::PackageRevisionDeleted(_)
            | Payload::DraftCreated(_)
            | Payload::DraftResourcesUpdated(_)
            | Payload::PackageRevisionProposed(_)
            | Payload::ProposalRejected(_)
            | Payload::PackageRevisionPublished(_)
            | Payload::DeletionProposed(_)
            | Payload::DeletionProposalWithdrawn(_)
            | Payload::KvEntrySet(_)
            | Payload::KvEntryDeleted(_)
            | Payload::KvEntriesDeleted(_)
            | Payload::KvEntriesExpired(_)
            | Payload::KvEntriesEvicted(_)
            | Payload::KvNamespaceConfigured(_) => {}
            Payload::ArtifactStored(_)
            | Payload::ArtifactRevalidated(_)
            | Payload::ArtifactInvalidated(_)
            | Payload::ArtifactEvicted(_) => {}
        }
    }
}

#[test]
fn golden_bytes_still_decode_and_reencode_identically() {
    let bless = std::env::var_os("CAIRN_BLESS").is_some();
    for (kind, expected) in samples() {
        let base = golden_dir().join(kind.subject_suffix().replace('.', "_"));
        let bin = base.with_extension("pb");
        let json_path = base.with_extension("json");
        let bytes = envelope::encode(&expected);
        let rendered =
            serde_json::to_string_pretty(&json::to_json(&expected).unwrap()).unwrap() + "\n";
        if bless && !bin.exists() {
            fs::write(&bin, &bytes).unwrap();
            fs::write(&json_path, &rendered).unwrap();
        }
        let stored =
            fs::read(&bin).unwrap_or_else(|e| panic!("missing fixture {}: {e}", bin.display()));
        let decoded = envelope::decode(&stored).unwrap();
        assert_eq!(
            decoded, expected,
            "{kind:?}: stored bytes decode to a different value"
        );
        assert_eq!(
            bytes, stored,
            "{kind:?}: this build encodes different bytes"
        );
        let stored_json = fs::read_to_string(&json_path).unwrap();
        assert_eq!(rendered, stored_json, "{kind:?}: JSON rendering changed");
        let parsed: serde_json::Value = serde_json::from_str(&stored_json).unwrap();
        assert_eq!(
            json::from_json(&parsed).unwrap(),
            expected,
            "{kind:?}: JSON does not parse back"
        );
    }
}
