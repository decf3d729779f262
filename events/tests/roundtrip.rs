//! Property tests: every event survives protobuf and JSON round trips.

use cairn_events::{
    envelope::{self, event},
    json,
    v1::{
        event::Payload, Envelope, GitSpec, PackageRevision, PackageRevisionAdded,
        PackageRevisionDeleted, PackageRevisionModified, RepositoryClosed, RepositoryRegistered,
        RepositorySpec, RepositorySpecChanged, SyncFailed, SyncSpec, SyncStarted, SyncSucceeded,
        Task, TraceContext,
    },
    SCHEMA_VERSION,
};
use proptest::prelude::*;

fn timestamp() -> impl Strategy<Value = Option<pbjson_types::Timestamp>> {
    // Whole RFC 3339 range that proto3 JSON can express.
    proptest::option::of(
        (-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| pbjson_types::Timestamp { seconds, nanos }),
    )
}

fn spec() -> impl Strategy<Value = RepositorySpec> {
    let git = proptest::option::of(
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<bool>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
        )
            .prop_map(
                |(url, branch, directory, create_branch, author, email, secret_ref)| GitSpec {
                    url,
                    branch,
                    directory,
                    create_branch,
                    author,
                    email,
                    secret_ref,
                },
            ),
    );
    let sync = proptest::option::of((any::<String>(), timestamp()).prop_map(
        |(schedule, run_once_at)| SyncSpec {
            schedule,
            run_once_at,
        },
    ));
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        git,
        sync,
        any::<bool>(),
    )
        .prop_map(
            |(namespace, name, r#type, git, sync, deployment)| RepositorySpec {
                namespace,
                name,
                r#type,
                git,
                sync,
                deployment,
            },
        )
}

fn revision() -> impl Strategy<Value = PackageRevision> {
    let strings = proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4);
    let tasks = proptest::collection::vec(
        (any::<String>(), any::<String>()).prop_map(|(r#type, raw)| Task { r#type, raw }),
        0..3,
    );
    (
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<String>(),
            any::<i64>(),
            any::<String>(),
            any::<String>(),
        ),
        (
            strings.clone(),
            any::<String>(),
            timestamp(),
            tasks,
            strings.clone(),
            any::<bool>(),
            strings,
        ),
    )
        .prop_map(
            |(
                (name, path, package, workspace, revision, lifecycle, commit),
                (resources, published_by, published_at, tasks, labels, latest, annotations),
            )| {
                PackageRevision {
                    name,
                    path,
                    package,
                    workspace,
                    revision,
                    lifecycle,
                    commit,
                    resources,
                    published_by,
                    published_at,
                    tasks,
                    labels,
                    latest,
                    annotations,
                }
            },
        )
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        any::<String>().prop_map(|trigger| Payload::SyncStarted(SyncStarted { trigger })),
        (
            any::<String>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            timestamp(),
            any::<String>()
        )
            .prop_map(
                |(
                    commit,
                    added,
                    modified,
                    deleted,
                    package_count,
                    duration_ms,
                    next_sync_at,
                    refs_digest,
                )| {
                    Payload::SyncSucceeded(SyncSucceeded {
                        commit,
                        added,
                        modified,
                        deleted,
                        package_count,
                        duration_ms,
                        next_sync_at,
                        refs_digest,
                    })
                }
            ),
        (
            any::<String>(),
            any::<String>(),
            timestamp(),
            any::<u32>(),
            any::<String>()
        )
            .prop_map(
                |(error_class, message, retry_at, reply_code, reply_message)| Payload::SyncFailed(
                    SyncFailed {
                        error_class,
                        message,
                        retry_at,
                        reply_code,
                        reply_message,
                    }
                )
            ),
        proptest::option::of(revision())
            .prop_map(|revision| Payload::PackageRevisionAdded(PackageRevisionAdded { revision })),
        proptest::option::of(revision()).prop_map(|revision| Payload::PackageRevisionModified(
            PackageRevisionModified { revision }
        )),
        (any::<String>(), proptest::option::of(revision())).prop_map(|(name, last)| {
            Payload::PackageRevisionDeleted(PackageRevisionDeleted { name, last })
        }),
        proptest::option::of(spec())
            .prop_map(|spec| Payload::RepositoryRegistered(RepositoryRegistered { spec })),
        proptest::option::of(spec()).prop_map(|spec| Payload::RepositorySpecChanged(
            RepositorySpecChanged {
                spec,
                next_sync_at: None
            }
        )),
        any::<String>().prop_map(|reason| Payload::RepositoryClosed(RepositoryClosed { reason })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        (
            any::<String>(),
            any::<String>(),
            any::<u64>(),
            any::<u64>(),
            timestamp(),
        ),
        (any::<String>(), any::<String>(), any::<String>()),
        proptest::option::of((any::<String>(), any::<String>()).prop_map(
            |(traceparent, tracestate)| TraceContext {
                traceparent,
                tracestate,
            },
        )),
        payload(),
        (any::<String>(), any::<Vec<u8>>()),
    )
        .prop_map(
            |(
                (event_id, stream, stream_version, seq, recorded_at),
                (correlation_id, causation_id, principal),
                trace,
                payload,
                (request_id, request_digest),
            )| Envelope {
                schema_version: SCHEMA_VERSION,
                event_id,
                stream,
                stream_version,
                seq,
                recorded_at,
                correlation_id,
                causation_id,
                principal,
                trace,
                event: Some(event(payload)),
                request_id,
                request_digest,
            },
        )
}

proptest! {
    #[test]
    fn protobuf_round_trip(env in envelope()) {
        let bytes = envelope::encode(&env);
        prop_assert_eq!(envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn json_round_trip(env in envelope()) {
        let value = json::to_json(&env).unwrap();
        prop_assert_eq!(value["seq"].as_u64(), Some(env.seq));
        prop_assert_eq!(json::from_json(&value).unwrap(), env);
    }
}
