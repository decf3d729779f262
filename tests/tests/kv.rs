//! The key-value cache (`cairn.v1.kv.*`) on a real node (real nats-server,
//! real RocksDB), with an injected clock for TTLs: each endpoint's
//! contract, bad input, eviction, restart, compaction, the audit trail.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn_actors::schedule::ManualClock;
use cairn_storage::{views::kv::KvCompactionPolicy, CompactingLog, EventLog};
use cairn_tests::{TestDir, TestNode, TestNodeBuilder};
use prost::Message as _;
use serde_json::{json, Value};

/// 2026-11-21T10:00:00Z.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
}

async fn start_in(dir: &Path, clock: &ManualClock) -> TestNode {
    TestNodeBuilder::in_dir(dir)
        .configure(|c| {
            c.kv.value_max_bytes = 4096;
            c.kv.sweep_interval = Duration::ZERO;
        })
        .clock(Arc::new(clock.clone()))
        .start()
        .await
}

async fn start() -> (TestDir, TestNode, ManualClock) {
    let dir = TestDir::new();
    let clock = ManualClock::new(t0());
    let node = start_in(dir.path(), &clock).await;
    (dir, node, clock)
}

async fn keys(node: &TestNode, body: Value) -> Vec<String> {
    let reply = node.client().ok("kv.keys", body).await;
    reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["full_key"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_rt::test]
async fn set_get_exists_delete_with_namespace_isolation() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let a = c
        .ok(
            "kv.set",
            json!({"namespace": "user:123", "key": "profile", "value": {"name": "Alice"}, "tags": ["user", "profile", "user"]}),
        )
        .await;
    assert_eq!(a["created_at"], json!("2026-11-21T10:00:00Z"));
    assert_eq!(a["expires_at"], Value::Null);
    c.ok(
        "kv.set",
        json!({"namespace": "user:456", "key": "profile", "value": {"name": "Bob"}}),
    )
    .await;
    c.ok(
        "kv.set",
        json!({"key": "blob", "value_b64": "AAEC/w==", "ttl": "1h"}),
    )
    .await;

    let got = c
        .ok("kv.get", json!({"namespace": "user:123", "key": "profile"}))
        .await;
    assert_eq!(got["value"], json!({"name": "Alice"}));
    assert_eq!(got["tags"], json!(["profile", "user"]));
    assert_eq!(got["hit_count"], json!(1));
    assert_eq!(got["version"], a["version"]);
    let bob = c
        .ok("kv.get", json!({"namespace": "user:456", "key": "profile"}))
        .await;
    assert_eq!(bob["value"], json!({"name": "Bob"}));
    let blob = c.ok("kv.get", json!({"key": "blob"})).await;
    assert_eq!(blob["value_b64"], json!("AAEC/w=="));
    assert_eq!(blob["expires_at"], json!("2026-11-21T11:00:00Z"));
    // The default namespace is its own: "profile" is not there.
    let miss = c
        .call("kv.get", json!({"key": "profile"}))
        .await
        .unwrap_err();
    assert_eq!(
        (miss.code, miss.message.as_str()),
        (404, "kv entry \"profile\" not found")
    );

    assert_eq!(
        c.ok(
            "kv.delete",
            json!({"namespace": "user:123", "key": "profile"})
        )
        .await,
        json!({"deleted": true})
    );
    assert_eq!(
        c.ok(
            "kv.delete",
            json!({"namespace": "user:123", "key": "profile"})
        )
        .await,
        json!({"deleted": false})
    );
    assert_eq!(
        c.ok(
            "kv.exists",
            json!({"namespace": "user:123", "key": "profile"})
        )
        .await,
        json!({"exists": false})
    );
    assert_eq!(
        c.ok(
            "kv.exists",
            json!({"namespace": "user:456", "key": "profile"})
        )
        .await,
        json!({"exists": true})
    );
    assert_eq!(
        keys(&node, json!({})).await,
        vec!["blob".to_owned(), "user:456:profile".to_owned()]
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn tags_any_and_all_and_namespace_and_clear() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    for (ns, key, tags) in [
        ("catalog", "p1", vec!["product", "featured"]),
        ("catalog", "p2", vec!["product"]),
        ("other", "p3", vec!["featured"]),
        ("other", "p4", vec!["misc"]),
        ("third", "p5", vec![]),
    ] {
        c.ok(
            "kv.set",
            json!({"namespace": ns, "key": key, "value": 1, "tags": tags}),
        )
        .await;
    }
    assert_eq!(
        c.ok(
            "kv.delete_by_tags",
            json!({"tags": ["product", "featured"], "match": "all"})
        )
        .await,
        json!({"deleted": 1})
    );
    assert_eq!(
        keys(&node, json!({})).await,
        ["catalog:p2", "other:p3", "other:p4", "third:p5"]
    );
    assert_eq!(
        c.ok(
            "kv.delete_by_tags",
            json!({"tags": ["product", "featured"]})
        )
        .await,
        json!({"deleted": 2})
    );
    assert_eq!(keys(&node, json!({})).await, ["other:p4", "third:p5"]);
    assert_eq!(
        c.ok("kv.delete_by_namespace", json!({"namespace": "other"}))
            .await,
        json!({"deleted": 1})
    );
    let err = c.call("kv.clear", json!({})).await.unwrap_err();
    assert_eq!(err.code, 400);
    assert!(err.message.starts_with("all: "), "{}", err.message);
    assert_eq!(keys(&node, json!({})).await, ["third:p5"]);
    assert_eq!(
        c.ok("kv.clear", json!({"all": true})).await,
        json!({"deleted": 1})
    );
    assert_eq!(keys(&node, json!({})).await, Vec::<String>::new());
    node.shutdown().await;
}

#[actix_rt::test]
async fn pattern_globs_over_full_keys_including_a_literal_star() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    for (ns, key) in [
        ("", "user:1"),
        ("", "user:2"),
        ("", "user*"),
        ("", "users"),
        ("user", "9"),
        ("", "a*b"),
        ("", "axb"),
    ] {
        c.ok("kv.set", json!({"namespace": ns, "key": key, "value": key}))
            .await;
    }
    assert_eq!(
        keys(&node, json!({"pattern": "user:?"})).await,
        ["user:1", "user:2", "user:9"]
    );
    assert_eq!(
        c.ok("kv.delete_by_pattern", json!({"pattern": "a\\*b"}))
            .await,
        json!({"deleted": 1})
    );
    assert_eq!(
        c.ok("kv.delete_by_pattern", json!({"pattern": "user\\*"}))
            .await,
        json!({"deleted": 1})
    );
    assert_eq!(
        c.ok("kv.delete_by_pattern", json!({"pattern": "user:[12]"}))
            .await,
        json!({"deleted": 2})
    );
    assert_eq!(keys(&node, json!({})).await, ["axb", "users", "user:9"]);
    assert_eq!(
        c.ok("kv.delete_by_pattern", json!({"pattern": "user:*"}))
            .await,
        json!({"deleted": 1})
    );
    assert_eq!(keys(&node, json!({})).await, ["axb", "users"]);
    node.shutdown().await;
}

/// With the default `kv.value-max-bytes` (1 MiB) and
/// `store.event-max-bytes` (256 KiB), one event bounds a value: the largest
/// value that fits is stored and read back whole; one byte more is a 400
/// naming `value_b64` and what bounds it, and stores nothing.
#[actix_rt::test]
async fn a_value_one_event_cannot_hold_is_refused_naming_the_bound() {
    use base64::Engine as _;
    let dir = TestDir::new();
    let clock = ManualClock::new(t0());
    let node = TestNodeBuilder::in_dir(dir.path())
        .configure(|c| c.kv.sweep_interval = Duration::ZERO)
        .clock(Arc::new(clock.clone()))
        .start()
        .await;
    let c = node.client();
    let limit = 256 * 1024 - cairn_actors::service::kv::ENTRY_ROOM_BYTES;
    let b64 = |len: usize| {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        (
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            bytes,
        )
    };
    let (over, _) = b64(limit + 1);
    let before = node.store().last_seq().unwrap();
    let refused = c
        .call(
            "kv.set",
            json!({"namespace": "big", "key": "over", "value_b64": over}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, 400, "{}", refused.message);
    let message = &refused.message;
    assert!(
        message.starts_with(&format!(
            "value_b64: {} bytes, more than one entry holds on this node ({limit}: ",
            limit + 1
        )) && message.contains("store.event-max-bytes (262144)")
            && message.contains("kv.value-max-bytes is 1048576"),
        "{message}"
    );
    assert_eq!(
        c.ok("kv.exists", json!({"namespace": "big", "key": "over"}))
            .await,
        json!({"exists": false})
    );
    assert_eq!(node.store().last_seq().unwrap(), before, "nothing appended");

    // The largest value that fits, with the longest key and namespace and
    // the most and longest tags: stored and read back whole.
    let (fits, bytes) = b64(limit);
    let namespace = "n".repeat(256);
    let key = "k".repeat(1024);
    let tags: Vec<String> = (0..64).map(|i| format!("{i:0>256}")).collect();
    c.ok(
        "kv.set",
        json!({"namespace": namespace, "key": key, "value_b64": fits, "tags": tags}),
    )
    .await;
    let got = c
        .ok("kv.get", json!({"namespace": namespace, "key": key}))
        .await;
    let read = base64::engine::general_purpose::STANDARD
        .decode(got["value_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(read.len(), limit);
    assert!(read == bytes, "the value read back differs");
    node.shutdown().await;
}

/// A pipelined batch of sets that fails (here: an event appended to the
/// partition's stream behind its writer's back, so the writer's version is
/// stale and its appends conflict) fails the batches queued after it too;
/// their sets must still be answered — run again once the writer read the
/// stream's version — even when no other command reaches the partition.
/// Every set of a burst gets an answer within the deadline, and the sets
/// answered as written are the ones the view holds.
#[actix_rt::test]
async fn sets_left_unwritten_by_a_failed_batch_are_answered_without_more_traffic() {
    use cairn_events::{
        envelope::Metadata,
        v1::{event::Payload, Event, KvEntrySet},
    };
    use cairn_storage::{EventLog as _, ExpectedVersion};
    let (_dir, node, _clock) = start().await;
    let c = node.client().clone().with_timeout(Duration::from_secs(20));
    for round in 0..5 {
        c.ok(
            "kv.set",
            json!({"namespace": "p", "key": "first", "value": round}),
        )
        .await;
        let stream = cairn_actors::kv::partition_stream(cairn_actors::kv::partition_of("p"));
        node.store()
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![Event {
                    payload: Some(Payload::KvEntrySet(KvEntrySet {
                        namespace: "p".into(),
                        key: format!("behind-{round}"),
                        value: b"1".to_vec(),
                        json: true,
                        ..Default::default()
                    })),
                }],
                Metadata::command("test"),
            )
            .unwrap();
        let answers = futures::future::join_all((0..64).map(|i| {
            let c = c.clone();
            async move {
                let key = format!("r{round}-{i}");
                let answer = c
                    .call("kv.set", json!({"namespace": "p", "key": key, "value": i}))
                    .await;
                (key, answer)
            }
        }))
        .await;
        for (key, answer) in answers {
            let exists = c
                .ok("kv.exists", json!({"namespace": "p", "key": key}))
                .await["exists"]
                .as_bool()
                .unwrap();
            match answer {
                Ok(_) => assert!(exists, "{key} answered as set but not stored"),
                Err(e) => {
                    // The batch that found the stale version.
                    assert_eq!(e.code, 409, "{key}: {}", e.message);
                    assert!(
                        e.message.contains("expected version"),
                        "{key}: {}",
                        e.message
                    );
                    assert!(!exists, "{key} answered {} but stored", e.message);
                }
            }
        }
    }
    node.shutdown().await;
}

/// The expiry index orders every namespace's entries by time: a cleanup
/// of one namespace must not stop at a round's worth (10,000) of other
/// namespaces' expired entries sorting first.
#[actix_rt::test]
async fn cleanup_of_a_namespace_reaches_past_a_round_of_other_expired_entries() {
    use futures::StreamExt as _;
    let (_dir, node, clock) = start().await;
    let c = node.client();
    let early = 10_000;
    futures::stream::iter(0..early)
        .map(|i| async move {
            c.ok(
                "kv.set",
                json!({"namespace": "early", "key": format!("k{i}"), "value": i, "ttl": 1}),
            )
            .await
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    c.ok(
        "kv.set",
        json!({"namespace": "late", "key": "k", "value": "v", "ttl": 2}),
    )
    .await;
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        c.ok("kv.cleanup", json!({"namespace": "late"})).await,
        json!({"removed": 1})
    );
    assert_eq!(
        c.ok("kv.cleanup", json!({"namespace": "early"})).await,
        json!({"removed": early})
    );
    assert_eq!(c.ok("kv.cleanup", json!({})).await, json!({"removed": 0}));
    node.shutdown().await;
}

/// A `kv.delete` of an entry that had expired (not swept yet) answers
/// `deleted: false` and its event says the entry had expired; sent again
/// with its idempotency key it answers the same, appending nothing. One of
/// a live entry answers `true` both times.
#[actix_rt::test]
async fn a_delete_sent_again_answers_what_it_first_answered() {
    let (_dir, node, clock) = start().await;
    let c = node.client();
    c.ok("kv.set", json!({"key": "old", "value": 1, "ttl": 10}))
        .await;
    c.ok("kv.set", json!({"key": "live", "value": 2})).await;
    clock.advance(Duration::from_secs(11));
    let delete = |key: &'static str, id: &'static str| {
        let c = &c;
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Cairn-Request-Id", id);
            let (reply, _) = c
                .call_with_headers(
                    "kv.delete",
                    json!({"key": key, "principal": "carol"}),
                    headers,
                )
                .await;
            reply.unwrap()
        }
    };
    let before = node.store().last_seq().unwrap();
    for _ in 0..2 {
        assert_eq!(delete("old", "del-old").await, json!({"deleted": false}));
        assert_eq!(delete("live", "del-live").await, json!({"deleted": true}));
    }
    let events: Vec<String> = node
        .store()
        .read_all(before + 1, 100)
        .unwrap()
        .iter()
        .map(
            |e| match e.event.as_ref().and_then(|e| e.payload.as_ref()) {
                Some(cairn_events::v1::event::Payload::KvEntryDeleted(d)) => {
                    format!("{} expired={}@{}", d.key, d.expired, e.principal)
                }
                other => format!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(
        events,
        ["old expired=true@carol", "live expired=false@carol"]
    );
    assert_eq!(keys(&node, json!({})).await, Vec::<String>::new());
    node.shutdown().await;
}

#[actix_rt::test]
async fn ttl_expires_at_the_exact_instant_and_cleanup_removes_it() {
    let (_dir, node, clock) = start().await;
    let c = node.client();
    c.ok("kv.set", json!({"key": "s", "value": "x", "ttl": 10}))
        .await;
    c.ok("kv.set", json!({"key": "forever", "value": "y"}))
        .await;
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(
        c.ok("kv.get", json!({"key": "s"})).await["value"],
        json!("x")
    );
    clock.advance(Duration::from_millis(1));
    let miss = c.call("kv.get", json!({"key": "s"})).await.unwrap_err();
    assert_eq!(miss.code, 404);
    assert_eq!(
        c.ok("kv.exists", json!({"key": "s"})).await,
        json!({"exists": false})
    );
    assert_eq!(keys(&node, json!({})).await, ["forever"]);
    assert_eq!(c.ok("kv.cleanup", json!({})).await, json!({"removed": 1}));
    assert_eq!(c.ok("kv.cleanup", json!({})).await, json!({"removed": 0}));
    node.shutdown().await;
}

#[actix_rt::test]
async fn stats_are_exact_and_exists_counts_no_hit() {
    let (_dir, node, clock) = start().await;
    let c = node.client();
    c.ok("kv.set", json!({"namespace": "n", "key": "a", "value": 1}))
        .await;
    clock.advance(Duration::from_secs(5));
    c.ok("kv.set", json!({"namespace": "n", "key": "b", "value": 2}))
        .await;
    c.ok("kv.set", json!({"namespace": "m", "key": "c", "value": 3}))
        .await;
    c.ok("kv.get", json!({"namespace": "n", "key": "a"})).await;
    c.ok("kv.get", json!({"namespace": "n", "key": "a"})).await;
    c.ok("kv.get", json!({"namespace": "n", "key": "b"})).await;
    c.call("kv.get", json!({"namespace": "n", "key": "zz"}))
        .await
        .unwrap_err();
    for _ in 0..5 {
        c.ok("kv.exists", json!({"namespace": "n", "key": "a"}))
            .await;
        c.ok("kv.exists", json!({"namespace": "n", "key": "nope"}))
            .await;
    }
    let stats = c.ok("kv.stats", json!({"namespace": "n"})).await;
    assert_eq!(stats["total_entries"], json!(2));
    assert_eq!(stats["total_hits"], json!(3));
    assert_eq!(stats["total_misses"], json!(1));
    assert_eq!(stats["hit_rate"], json!(0.75));
    assert_eq!(stats["evictions"], json!(0));
    assert_eq!(stats["oldest_entry"], json!("2026-11-21T10:00:00Z"));
    assert_eq!(stats["newest_entry"], json!("2026-11-21T10:00:05Z"));
    assert_eq!(
        c.ok("kv.get", json!({"namespace": "n", "key": "a"})).await["hit_count"],
        json!(3)
    );
    let all = c.ok("kv.stats", json!({})).await;
    assert_eq!(all["total_entries"], json!(3));
    assert_eq!(all["total_hits"], json!(4));
    assert_eq!(all["total_misses"], json!(1));
    node.shutdown().await;
}

#[actix_rt::test]
async fn bad_input_is_a_400_naming_the_field_and_stores_nothing() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let before = node.store().last_seq().unwrap();
    let long = "k".repeat(1025);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("kv.set", json!({"key": "", "value": 1}), "key"),
        ("kv.set", json!({"key": long, "value": 1}), "key"),
        (
            "kv.set",
            json!({"namespace": "n".repeat(257), "key": "k", "value": 1}),
            "namespace",
        ),
        (
            "kv.set",
            json!({"namespace": "a\u{7}b", "key": "k", "value": 1}),
            "namespace",
        ),
        (
            "kv.set",
            json!({"key": "k", "value": "v".repeat(5000)}),
            "value",
        ),
        (
            "kv.set",
            json!({"key": "k", "value": 1, "value_b64": "AA=="}),
            "value_b64",
        ),
        ("kv.set", json!({"key": "k"}), "value"),
        ("kv.set", json!({"key": "k", "value": 1, "ttl": -1}), "ttl"),
        (
            "kv.set",
            json!({"key": "k", "value": 1, "ttl": "-5s"}),
            "ttl",
        ),
        (
            "kv.set",
            json!({"key": "k", "value": 1, "ttl": "400days"}),
            "ttl",
        ),
        (
            "kv.set",
            json!({"key": "k", "value": 1, "ttl": 40_000_000}),
            "ttl",
        ),
        (
            "kv.set",
            json!({"key": "k", "value": 1, "tags": (0..65).map(|i| i.to_string()).collect::<Vec<_>>()}),
            "tags",
        ),
        (
            "kv.delete_by_pattern",
            json!({"pattern": "p".repeat(1025)}),
            "pattern",
        ),
        ("kv.clear", json!({}), "all"),
        (
            "kv.delete_by_tags",
            json!({"tags": [], "match": "any"}),
            "tags",
        ),
        (
            "kv.delete_by_tags",
            json!({"tags": ["a"], "match": "some"}),
            "match",
        ),
        (
            "kv.configure",
            json!({"namespace": "n", "origin": {"subject": "compute.*"}}),
            "origin.subject",
        ),
        ("kv.get", json!({"key": "k", "extra": 1}), "extra"),
        (
            "kv.get_or_compute",
            json!({"key": "k", "compute": {"subject": "compute.>", "body": 1}}),
            "compute.subject",
        ),
    ];
    for (endpoint, body, field) in cases {
        let err = c.call(endpoint, body.clone()).await.unwrap_err();
        assert_eq!(err.code, 400, "{endpoint} {body}: {}", err.message);
        assert!(
            err.message.starts_with(&format!("{field}: ")),
            "{endpoint} {body}: {}",
            err.message
        );
    }
    assert_eq!(node.store().last_seq().unwrap(), before, "nothing appended");
    assert_eq!(keys(&node, json!({})).await, Vec::<String>::new());
    node.shutdown().await;
}

#[actix_rt::test]
async fn max_entries_evicts_the_least_recently_used() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    c.ok(
        "kv.configure",
        json!({"namespace": "lru", "max_entries": 100}),
    )
    .await;
    for i in 0..100 {
        c.ok(
            "kv.set",
            json!({"namespace": "lru", "key": format!("k{i:03}"), "value": i}),
        )
        .await;
    }
    // Reading the first 10 makes them recent: k010..k059 are the LRU.
    for i in 0..10 {
        c.ok(
            "kv.get",
            json!({"namespace": "lru", "key": format!("k{i:03}")}),
        )
        .await;
    }
    for i in 100..150 {
        c.ok(
            "kv.set",
            json!({"namespace": "lru", "key": format!("k{i:03}"), "value": i}),
        )
        .await;
    }
    let mut expected: Vec<String> = (0..10)
        .chain(60..150)
        .map(|i| format!("lru:k{i:03}"))
        .collect();
    expected.sort();
    let mut got = keys(&node, json!({"namespace": "lru", "limit": 1000})).await;
    got.sort();
    assert_eq!(got.len(), 100);
    assert_eq!(got, expected);
    let stats = c.ok("kv.stats", json!({"namespace": "lru"})).await;
    assert_eq!(stats["evictions"], json!(50));
    assert_eq!(stats["total_entries"], json!(100));
    node.shutdown().await;
}

/// An insert past `max_entries` removes the namespace's expired entries
/// (not swept yet) first, as expired: a live entry is evicted only when
/// the live ones alone are over the limit.
#[actix_rt::test]
async fn max_entries_removes_expired_entries_before_evicting_a_live_one() {
    let (_dir, node, clock) = start().await;
    let c = node.client();
    c.ok(
        "kv.configure",
        json!({"namespace": "exp", "max_entries": 3}),
    )
    .await;
    c.ok(
        "kv.set",
        json!({"namespace": "exp", "key": "a", "value": 1, "ttl": 5}),
    )
    .await;
    for key in ["b", "c"] {
        c.ok(
            "kv.set",
            json!({"namespace": "exp", "key": key, "value": 1}),
        )
        .await;
    }
    // `a` is the most recently used, then it expires: `b` is the least
    // recently used live entry.
    c.ok("kv.get", json!({"namespace": "exp", "key": "a"}))
        .await;
    clock.advance(Duration::from_secs(5));
    c.ok(
        "kv.set",
        json!({"namespace": "exp", "key": "d", "value": 1}),
    )
    .await;
    assert_eq!(
        keys(&node, json!({"namespace": "exp"})).await,
        ["exp:b", "exp:c", "exp:d"]
    );
    let stats = c.ok("kv.stats", json!({"namespace": "exp"})).await;
    assert_eq!(stats["evictions"], json!(0));
    assert_eq!(stats["total_entries"], json!(3));
    let log = c.ok("log.read", json!({"limit": 1000})).await;
    let events = log["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["type"], json!("KvEntriesExpired"));
    assert_eq!(
        last["event"]["kv_entries_expired"],
        json!({"count": "1", "entries": [{"namespace": "exp", "key": "a"}]})
    );
    // Nothing expired any more: the least recently used live entry goes.
    c.ok(
        "kv.set",
        json!({"namespace": "exp", "key": "e", "value": 1}),
    )
    .await;
    assert_eq!(
        keys(&node, json!({"namespace": "exp"})).await,
        ["exp:c", "exp:d", "exp:e"]
    );
    let stats = c.ok("kv.stats", json!({"namespace": "exp"})).await;
    assert_eq!(stats["evictions"], json!(1));
    assert_eq!(stats["total_entries"], json!(3));
    node.shutdown().await;
}

#[actix_rt::test]
async fn entries_and_expiry_survive_a_restart_and_expired_ones_do_not_come_back() {
    let dir = TestDir::new();
    let clock = ManualClock::new(t0());
    let node = start_in(dir.path(), &clock).await;
    let c = node.client();
    c.ok(
        "kv.set",
        json!({"namespace": "n", "key": "keep", "value": "v", "ttl": "1h"}),
    )
    .await;
    c.ok(
        "kv.set",
        json!({"namespace": "n", "key": "short", "value": "v", "ttl": 5}),
    )
    .await;
    node.shutdown().await;
    clock.advance(Duration::from_secs(10));
    let node = start_in(dir.path(), &clock).await;
    let c = node.client();
    let got = c
        .ok("kv.get", json!({"namespace": "n", "key": "keep"}))
        .await;
    assert_eq!(got["expires_at"], json!("2026-11-21T11:00:00Z"));
    assert_eq!(
        c.call("kv.get", json!({"namespace": "n", "key": "short"}))
            .await
            .unwrap_err()
            .code,
        404
    );
    assert_eq!(keys(&node, json!({})).await, ["n:keep"]);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        c.ok("kv.cleanup", json!({"namespace": "n"})).await,
        json!({"removed": 2})
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn rewrites_compact_to_one_event_per_key_and_rebuild_equals_live() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    const KEYS: usize = 50;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            c.ok(
                "kv.set",
                json!({"namespace": format!("ns{}", k % 5), "key": format!("k{k}"), "value": round, "tags": [format!("t{}", k % 3)]}),
            )
            .await;
        }
    }
    c.ok("kv.delete", json!({"namespace": "ns0", "key": "k0"}))
        .await;
    c.ok("kv.delete_by_tags", json!({"tags": ["t1"]})).await;
    let store = node.store().clone();
    let live = store.view_dumps().unwrap();
    let stats = tokio::task::spawn_blocking(move || {
        store.compact(Arc::new(KvCompactionPolicy::default()), SystemTime::now())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stats.scanned as usize, KEYS * ROUNDS + 1 + 5);
    let remaining = node.store().read_all(0, 100_000).unwrap();
    // One event per key (a set, or the delete of k0) + the bulk
    // invalidations (one per partition the tags touched).
    let bulk = remaining
        .iter()
        .filter(|e| e.stream.starts_with("kv/"))
        .filter(|e| {
            matches!(
                e.event.as_ref().and_then(|e| e.payload.as_ref()),
                Some(cairn_events::v1::event::Payload::KvEntriesDeleted(_))
            )
        })
        .count();
    let kv_events = remaining
        .iter()
        .filter(|e| e.stream.starts_with("kv/"))
        .count();
    // One per partition holding a namespace of a `t1` key.
    let partitions: std::collections::BTreeSet<usize> = (0..KEYS)
        .filter(|k| k % 3 == 1)
        .map(|k| cairn_actors::kv::partition_of(&format!("ns{}", k % 5)))
        .collect();
    assert_eq!(bulk, partitions.len());
    assert_eq!(
        kv_events,
        KEYS + bulk,
        "of {} kv events",
        KEYS * ROUNDS + 1 + bulk
    );
    let store = node.store().clone();
    tokio::task::spawn_blocking(move || store.rebuild_views().unwrap())
        .await
        .unwrap();
    assert_eq!(node.store().view_dumps().unwrap(), live);
    node.shutdown().await;
}

/// Sets carrying an idempotency key stay in the log while their key is
/// in its window (a rebuild then knows the same keys), and go with their
/// key's row after it: the views rebuilt from the compacted log equal the
/// live ones both times, the `requests` view included.
#[actix_rt::test]
async fn keyed_rewrites_compact_with_their_keys_and_rebuild_equals_live() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    for round in 0..10 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Cairn-Request-Id", format!("set-a-{round}").as_str());
        let (reply, _) = c
            .call_with_headers(
                "kv.set",
                json!({"namespace": "idem", "key": "a", "value": round}),
                headers,
            )
            .await;
        reply.unwrap();
        c.ok(
            "kv.set",
            json!({"namespace": "idem", "key": "b", "value": round}),
        )
        .await;
    }
    let store = node.store().clone();
    let kv_events = |store: &cairn_storage::Store| {
        store
            .read_all(0, 100_000)
            .unwrap()
            .iter()
            .filter(|e| e.stream.starts_with("kv/"))
            .map(|e| e.request_id.clone())
            .collect::<Vec<String>>()
    };
    let request_rows = |store: &cairn_storage::Store| {
        store
            .view_dump("requests")
            .unwrap()
            .rows
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<String>>()
    };
    let compact_at = |now: SystemTime| {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                store.compact(Arc::new(KvCompactionPolicy::default()), now)
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    let rebuilt_equals_live = || {
        let store = store.clone();
        async move {
            let live = store.view_dumps().unwrap();
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.rebuild_views().unwrap())
                .await
                .unwrap();
            assert_eq!(store.view_dumps().unwrap(), live);
        }
    };

    // Within the window: b's nine superseded sets go, a's keyed ones stay.
    let stats = compact_at(SystemTime::now()).await;
    assert_eq!(stats.superseded, 9);
    let keys: Vec<String> = (0..10).map(|r| format!("set-a-{r}")).collect();
    let mut expected = keys.clone();
    expected.push(String::new());
    assert_eq!(kv_events(&store), expected);
    assert_eq!(
        request_rows(&store),
        keys.iter().map(|k| format!("k{k}")).collect::<Vec<_>>()
    );
    rebuilt_equals_live().await;

    // A day later the keys' windows closed: a's superseded sets go too,
    // each with its key's row; the last set keeps its own.
    let stats = compact_at(SystemTime::now() + Duration::from_secs(25 * 3600)).await;
    assert_eq!(stats.superseded, 9);
    assert_eq!(kv_events(&store), ["set-a-9".to_owned(), String::new()]);
    assert_eq!(request_rows(&store), ["kset-a-9"]);
    rebuilt_equals_live().await;
    node.shutdown().await;
}

#[actix_rt::test]
async fn delete_by_tags_is_in_the_log_with_its_principal() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let mut published = c.subscribe("cairn.events.kv.>").await;
    c.ok(
        "kv.set",
        json!({"namespace": "cat", "key": "p", "value": 1, "tags": ["product"]}),
    )
    .await;
    c.ok("kv.set", json!({"key": "d", "value": 1})).await;
    c.ok(
        "kv.delete_by_tags",
        json!({"tags": ["product"], "principal": "ada@example.com"}),
    )
    .await;
    let log = c.ok("log.read", json!({"limit": 1000})).await;
    let events = log["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["type"], json!("KvEntriesDeleted"));
    assert_eq!(last["principal"], json!("ada@example.com"));
    assert_eq!(
        last["event"]["kv_entries_deleted"],
        json!({"by": "tags", "selector": "any:product", "count": "1", "entries": [{"namespace": "cat", "key": "p"}]})
    );
    // Published on cairn.events.kv.<namespace token>.kv.<type>, in order.
    let subjects = [
        "cairn.events.kv.cat.kv.entry-set",
        "cairn.events.kv.~.kv.entry-set",
        "cairn.events.kv.cat.kv.entries-deleted",
    ];
    for subject in subjects {
        assert_eq!(published.next().await.subject.as_str(), subject);
    }
    node.shutdown().await;
}

#[actix_rt::test]
async fn key_for_is_canonical_and_protobuf_works_too() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let a = c
        .ok("kv.key_for", json!({"function": "render", "args": ["pkg", 1], "kwargs": {"b": 2, "a": {"y": 1, "x": 0}}}))
        .await;
    let b = c
        .ok("kv.key_for", json!({"function": "render", "args": ["pkg", 1], "kwargs": {"a": {"x": 0, "y": 1}, "b": 2}}))
        .await;
    assert_eq!(a, b);
    assert!(a["key"].as_str().unwrap().starts_with("fn:render:"));
    assert_eq!(a["key"].as_str().unwrap().len(), "fn:render:".len() + 64);

    let set = cairn_events::v1::KvSetRequest {
        namespace: "pb".into(),
        key: "k".into(),
        value_b64: vec![1, 2, 3],
        ..Default::default()
    };
    let reply = c.call_proto("kv.set", set.encode_to_vec()).await;
    let set_reply = cairn_events::v1::KvSetReply::decode(reply.payload.as_ref()).unwrap();
    assert!(set_reply.version > 0);
    let get = cairn_events::v1::KvKeyRequest {
        namespace: "pb".into(),
        key: "k".into(),
        ..Default::default()
    };
    let reply = c.call_proto("kv.get", get.encode_to_vec()).await;
    let entry = cairn_events::v1::KvEntry::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(entry.value_b64, vec![1, 2, 3]);
    assert_eq!(entry.version, set_reply.version);
    node.shutdown().await;
}

/// What a responder answers: a payload, and an error code and message
/// (sent as the micro protocol's headers) or none.
type Answer = (Value, Option<(u16, &'static str)>);

/// A real NATS responder on `subject`: answers each request with
/// `answer(body)` once `ready()` holds (waited for with a deadline); counts
/// the requests and keeps their bodies. Subscribed when this returns.
async fn responder(
    node: &TestNode,
    subject: &str,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    answer: impl Fn(&Value) -> Answer + Send + Sync + 'static,
) -> (
    Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt as _;
    let nats = node.client().nats().clone();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let bodies = seen.clone();
    let mut sub = nats.subscribe(subject.to_owned()).await.unwrap();
    nats.flush().await.unwrap();
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let body: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
            bodies.lock().unwrap().push(body.clone());
            let (payload, error) = answer(&body);
            cairn_tests::wait_until("the responder's go", cairn_tests::WAIT, || {
                let go = ready();
                async move { go }
            })
            .await;
            let mut headers = async_nats::HeaderMap::new();
            if let Some((code, message)) = error {
                headers.insert("Nats-Service-Error-Code", code.to_string().as_str());
                headers.insert("Nats-Service-Error", message);
            }
            let payload = serde_json::to_vec(&payload).unwrap();
            nats.publish_with_headers(msg.reply.clone().unwrap(), headers, payload.into())
                .await
                .unwrap();
            nats.flush().await.unwrap();
        }
    });
    (seen, task)
}

/// 100 concurrent `get_or_compute` of one missing key.
async fn hundred_computes(
    node: &TestNode,
    subject: &str,
) -> Vec<Result<Value, cairn_tests::client::ServiceError>> {
    let c = node.client();
    let calls = (0..100).map(|_| {
        c.call(
            "kv.get_or_compute",
            json!({"namespace": "fn", "key": "k", "ttl": "1h", "tags": ["computed"],
                   "compute": {"subject": subject, "body": {"n": 7}}}),
        )
    });
    futures::future::join_all(calls).await
}

#[actix_rt::test]
async fn get_or_compute_calls_the_compute_once_for_100_concurrent_misses() {
    let (_dir, node, _clock) = start().await;
    let kv = node
        .node()
        .kv()
        .expect("a single node runs the cache")
        .clone();
    let (seen, task) = responder(
        &node,
        "compute.render",
        move || match kv.flights().callers("compute", "fn", "k") {
            100 => Ok(()),
            n => Err(format!("{n} callers in the flight")),
        },
        |body| (json!({"rendered": body["n"]}), None),
    )
    .await;
    let replies = hundred_computes(&node, "compute.render").await;
    for reply in &replies {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply["value"], json!({"rendered": 7}));
        assert_eq!(reply["tags"], json!(["computed"]));
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![json!({"n": 7})],
        "exactly one compute request"
    );
    // Cached: the next one is a hit, with no compute.
    let again = hundred_computes(&node, "compute.render").await;
    assert!(again
        .iter()
        .all(|r| r.as_ref().unwrap()["value"] == json!({"rendered": 7})));
    assert_eq!(seen.lock().unwrap().len(), 1);
    task.abort();
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_failing_compute_fails_every_waiter_and_caches_nothing() {
    let (_dir, node, _clock) = start().await;
    let kv = node
        .node()
        .kv()
        .expect("a single node runs the cache")
        .clone();
    let (seen, task) = responder(
        &node,
        "compute.fail",
        move || match kv.flights().callers("compute", "fn", "k") {
            100 => Ok(()),
            n => Err(format!("{n} callers in the flight")),
        },
        |_| (json!({"error": "boom"}), Some((500, "render failed: boom"))),
    )
    .await;
    let replies = hundred_computes(&node, "compute.fail").await;
    for reply in replies {
        let e = reply.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (500, "compute compute.fail: render failed: boom")
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    let c = node.client();
    assert_eq!(
        c.ok("kv.exists", json!({"namespace": "fn", "key": "k"}))
            .await,
        json!({"exists": false})
    );
    assert_eq!(keys(&node, json!({})).await, Vec::<String>::new());
    task.abort();
    node.shutdown().await;
}

/// A read-through and a compute of one entry are separate flights: a
/// `get_or_compute` that arrives while the namespace's origin is being
/// asked for the same key computes (it does not wait for, nor get, the
/// origin's 404).
#[actix_rt::test]
async fn a_get_or_compute_during_a_read_through_of_the_same_key_computes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let released = Arc::new(AtomicBool::new(false));
    let gate = released.clone();
    let (origin_seen, origin) = responder(
        &node,
        "origin.mixed",
        move || {
            if gate.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the origin is held".into())
            }
        },
        |_| (json!(null), Some((404, "not here"))),
    )
    .await;
    let (compute_seen, compute) = responder(
        &node,
        "compute.mixed",
        || Ok(()),
        |_| (json!("computed"), None),
    )
    .await;
    c.ok(
        "kv.configure",
        json!({"namespace": "mixed", "origin": {"subject": "origin.mixed"}}),
    )
    .await;
    let read = {
        let c = c.clone();
        tokio::spawn(async move {
            c.call("kv.get", json!({"namespace": "mixed", "key": "k"}))
                .await
        })
    };
    cairn_tests::wait_until("the origin to be asked", cairn_tests::WAIT, || {
        let asked = origin_seen.lock().unwrap().len();
        async move {
            if asked == 1 {
                Ok(())
            } else {
                Err(format!("{asked} origin requests"))
            }
        }
    })
    .await;
    let computed = c
        .clone()
        .with_timeout(Duration::from_secs(5))
        .ok(
            "kv.get_or_compute",
            json!({"namespace": "mixed", "key": "k", "compute": {"subject": "compute.mixed", "body": {}}}),
        )
        .await;
    assert_eq!(computed["value"], json!("computed"));
    assert_eq!(compute_seen.lock().unwrap().len(), 1);
    released.store(true, Ordering::SeqCst);
    let read = read.await.unwrap().unwrap_err();
    assert_eq!(
        (read.code, read.message.as_str()),
        (404, "kv entry \"mixed:k\" not found")
    );
    assert_eq!(
        c.ok("kv.get", json!({"namespace": "mixed", "key": "k"}))
            .await["value"],
        json!("computed")
    );
    origin.abort();
    compute.abort();
    node.shutdown().await;
}

#[actix_rt::test]
async fn read_through_origin_caches_answers_and_a_404_is_a_miss() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let (seen, task) = responder(
        &node,
        "origin.users",
        || Ok(()),
        |body| match body["key"].as_str() {
            Some("alice") => (json!({"name": "Alice"}), None),
            _ => (json!(null), Some((404, "no such user"))),
        },
    )
    .await;
    c.ok(
        "kv.configure",
        json!({"namespace": "users", "origin": {"subject": "origin.users"}}),
    )
    .await;
    let got = c
        .ok("kv.get", json!({"namespace": "users", "key": "alice"}))
        .await;
    assert_eq!(got["value"], json!({"name": "Alice"}));
    let again = c
        .ok("kv.get", json!({"namespace": "users", "key": "alice"}))
        .await;
    assert_eq!(again["value"], json!({"name": "Alice"}));
    let miss = c
        .call("kv.get", json!({"namespace": "users", "key": "ghost"}))
        .await
        .unwrap_err();
    assert_eq!(
        (miss.code, miss.message.as_str()),
        (404, "kv entry \"users:ghost\" not found")
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            json!({"op": "get", "namespace": "users", "key": "alice"}),
            json!({"op": "get", "namespace": "users", "key": "ghost"}),
        ]
    );
    let stats = c.ok("kv.stats", json!({"namespace": "users"})).await;
    assert_eq!(
        (stats["total_hits"].clone(), stats["total_misses"].clone()),
        (json!(1), json!(2))
    );
    task.abort();
    node.shutdown().await;
}

#[actix_rt::test]
async fn an_origin_that_does_not_answer_times_out() {
    let dir = TestDir::new();
    let clock = ManualClock::new(t0());
    let node = TestNodeBuilder::in_dir(dir.path())
        .configure(|c| c.kv.origin_timeout = Duration::from_millis(300))
        .clock(Arc::new(clock.clone()))
        .start()
        .await;
    let c = node.client();
    // Subscribed, never answering.
    let _silent = c.subscribe("origin.silent").await;
    c.ok(
        "kv.configure",
        json!({"namespace": "slow", "origin": {"subject": "origin.silent"}}),
    )
    .await;
    let e = c
        .call("kv.get", json!({"namespace": "slow", "key": "k"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (504, "origin origin.silent: no reply within 300ms")
    );
    let e = c
        .call("kv.get", json!({"namespace": "none", "key": "k"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, 404);
    c.ok(
        "kv.configure",
        json!({"namespace": "gone", "origin": {"subject": "origin.nobody"}}),
    )
    .await;
    let e = c
        .call("kv.get", json!({"namespace": "gone", "key": "k"}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (503, "origin origin.nobody: no responders")
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn write_through_sends_to_the_origin_first_and_its_error_stores_nothing() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let (seen, task) = responder(
        &node,
        "origin.wt",
        || Ok(()),
        |body| match body["key"].as_str() {
            Some("bad") => (json!(null), Some((503, "database down"))),
            _ => (json!({"ok": true}), None),
        },
    )
    .await;
    c.ok(
        "kv.configure",
        json!({"namespace": "wt", "origin": {"subject": "origin.wt", "write_through": true}}),
    )
    .await;
    c.ok(
        "kv.set",
        json!({"namespace": "wt", "key": "good", "value": [1, 2], "ttl": 60, "tags": ["t"]}),
    )
    .await;
    let e = c
        .call(
            "kv.set",
            json!({"namespace": "wt", "key": "bad", "value": 3}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (503, "origin origin.wt: database down")
    );
    assert_eq!(keys(&node, json!({"namespace": "wt"})).await, ["wt:good"]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            json!({"op": "set", "namespace": "wt", "key": "good", "value": [1, 2], "tags": ["t"], "ttl_ms": 60000}),
            json!({"op": "set", "namespace": "wt", "key": "bad", "value": 3, "tags": []}),
        ]
    );
    // Deletes invalidate only the entry named; the origin is not asked.
    c.ok("kv.delete", json!({"namespace": "wt", "key": "good"}))
        .await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A set sent again with its idempotency key (its answer lost) is
    // answered from the key: the origin is told once.
    let keyed = || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Cairn-Request-Id", "wt-once");
        let (reply, _) = c
            .call_with_headers(
                "kv.set",
                json!({"namespace": "wt", "key": "once", "value": 4}),
                headers,
            )
            .await;
        reply.unwrap()
    };
    let first = keyed().await;
    assert_eq!(keyed().await, first);
    assert_eq!(
        seen.lock().unwrap()[2..],
        [json!({"op": "set", "namespace": "wt", "key": "once", "value": 4, "tags": []})]
    );
    task.abort();
    node.shutdown().await;
}

/// `kv.durability`: `sync` fsyncs every group commit of a set; `batched`
/// answers once the write is in the WAL (no fsync on the write path) and
/// the entries are there after a restart all the same.
#[actix_rt::test]
async fn batched_durability_answers_without_an_fsync_and_sync_fsyncs_each_write() {
    use cairn::config::KvDurability;
    for durability in [KvDurability::Sync, KvDurability::Batched] {
        let dir = TestDir::new();
        let builder = |dir: &Path| {
            TestNodeBuilder::in_dir(dir).configure(move |c| {
                c.kv.durability = durability;
                c.kv.flush_interval = Duration::from_secs(3600);
            })
        };
        let node = builder(dir.path()).start().await;
        let c = node.client();
        let before = node.store().writer_stats();
        for i in 0..5 {
            c.ok("kv.set", json!({"key": format!("k{i}"), "value": i}))
                .await;
        }
        let after = node.store().writer_stats();
        let batches = after.batches - before.batches;
        let synced = after.synced_batches - before.synced_batches;
        assert!(batches >= 5, "{durability:?}: {batches} batches");
        match durability {
            KvDurability::Sync => assert_eq!(synced, batches, "every batch fsynced"),
            KvDurability::Batched => assert_eq!(synced, 0, "no fsync on the write path"),
        }
        node.shutdown().await;
        let node = builder(dir.path()).start().await;
        assert_eq!(
            keys(&node, json!({})).await,
            ["k0", "k1", "k2", "k3", "k4"],
            "{durability:?}"
        );
        node.shutdown().await;
    }
}

/// `cairn kv …` (the real binary) with `args`, then `-s <nats>`.
async fn kv_cli(node: &TestNode, args: &[&str]) -> cairn_tests::CliOutput {
    cairn_tests::cairn_cli!()
        .run_env(
            ["kv"]
                .into_iter()
                .chain(args.iter().copied())
                .chain(["-s", node.node().nats_url.as_str()]),
            &[],
            &["CAIRN_NATS_URL", "NATS_URL", "CAIRN_NAMESPACE"],
        )
        .await
}

fn cli_ok(out: cairn_tests::CliOutput) -> String {
    assert!(out.success, "failed: {}\n{}", out.stderr, out.stdout);
    out.stdout
}

#[actix_rt::test]
async fn the_kv_cli_sets_gets_lists_deletes_with_namespaces_tags_and_ttls() {
    let (_dir, node, _clock) = start().await;
    assert_eq!(
        cli_ok(
            kv_cli(
                &node,
                &[
                    "set",
                    "-n",
                    "user:123",
                    "profile",
                    "{\"name\":\"Alice\"}",
                    "--json",
                    "--tag",
                    "user",
                    "--ttl",
                    "1h"
                ]
            )
            .await
        ),
        "set user:123:profile (version 1)\n"
    );
    cli_ok(
        kv_cli(
            &node,
            &[
                "set",
                "plain",
                "hello",
                "--tag",
                "misc",
                "--principal",
                "ada",
            ],
        )
        .await,
    );
    assert_eq!(
        cli_ok(kv_cli(&node, &["get", "profile", "-n", "user:123"]).await),
        "{\"name\":\"Alice\"}\n"
    );
    let got: Value = serde_json::from_str(&cli_ok(
        kv_cli(&node, &["-o", "json", "get", "plain"]).await,
    ))
    .unwrap();
    assert_eq!(got["value"], json!("hello"));
    assert_eq!(got["tags"], json!(["misc"]));
    let yaml = cli_ok(kv_cli(&node, &["get", "-n", "user:123", "profile", "-o", "yaml"]).await);
    assert!(
        yaml.contains("expires_at: 2026-11-21T11:00:00Z\n"),
        "{yaml}"
    );
    let miss = kv_cli(&node, &["get", "nope"]).await;
    assert!(!miss.success);
    assert!(
        miss.stderr.contains("kv entry \"nope\" not found"),
        "{}",
        miss.stderr
    );
    assert_eq!(
        cli_ok(kv_cli(&node, &["keys"]).await),
        "plain\nuser:123:profile\n"
    );
    assert_eq!(
        cli_ok(kv_cli(&node, &["keys", "--pattern", "user:*"]).await),
        "user:123:profile\n"
    );
    let stats: Value =
        serde_json::from_str(&cli_ok(kv_cli(&node, &["stats", "-o", "json"]).await)).unwrap();
    assert_eq!(
        (
            stats["total_entries"].clone(),
            stats["total_hits"].clone(),
            stats["total_misses"].clone()
        ),
        (json!(2), json!(3), json!(1))
    );
    let table = cli_ok(kv_cli(&node, &["stats"]).await);
    assert!(table.starts_with("ENTRIES"), "{table}");
    let key_for = cli_ok(
        kv_cli(
            &node,
            &[
                "key-for", "render", "--arg", "\"pkg\"", "--kwarg", "b=2", "--kwarg", "a=1",
            ],
        )
        .await,
    );
    let key_for_swapped = cli_ok(
        kv_cli(
            &node,
            &[
                "key-for", "render", "--arg", "\"pkg\"", "--kwarg", "a=1", "--kwarg", "b=2",
            ],
        )
        .await,
    );
    assert_eq!(key_for, key_for_swapped);
    assert!(key_for.starts_with("fn:render:") && key_for.len() == "fn:render:".len() + 65);
    assert_eq!(
        cli_ok(kv_cli(&node, &["del", "--tag", "misc"]).await),
        "deleted 1\n"
    );
    assert_eq!(cli_ok(kv_cli(&node, &["cleanup"]).await), "removed 0\n");
    let bad = kv_cli(&node, &["set", "k", "v", "--ttl=-5s"]).await;
    assert!(!bad.success);
    assert!(bad.stderr.contains("ttl: "), "{}", bad.stderr);
    let clear = kv_cli(&node, &["clear"]).await;
    assert_eq!(cli_ok(clear), "deleted 0\n");
    assert_eq!(
        cli_ok(kv_cli(&node, &["clear", "--all"]).await),
        "deleted 1\n"
    );
    assert_eq!(cli_ok(kv_cli(&node, &["keys"]).await), "");
    node.shutdown().await;
}

/// The node compacts the `kv/` class every `kv.compact-interval` by
/// itself: rewrites leave one event per key.
#[actix_rt::test]
async fn the_node_compacts_the_kv_class_on_its_own() {
    let dir = TestDir::new();
    let node = TestNodeBuilder::in_dir(dir.path())
        .configure(|c| c.kv.compact_interval = Duration::from_millis(200))
        .start()
        .await;
    let c = node.client();
    for round in 0..10 {
        for k in 0..5 {
            c.ok(
                "kv.set",
                json!({"namespace": "cmp", "key": format!("k{k}"), "value": round}),
            )
            .await;
        }
    }
    let store = node.store().clone();
    cairn_tests::wait_until("the kv class compacted", cairn_tests::WAIT, || {
        let events = store
            .read_all(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.stream.starts_with("kv/"))
            .count();
        async move {
            if events == 5 {
                Ok(())
            } else {
                Err(format!("{events} kv events"))
            }
        }
    })
    .await;
    let got = c
        .ok("kv.get", json!({"namespace": "cmp", "key": "k3"}))
        .await;
    assert_eq!(got["value"], json!(9));
    node.shutdown().await;
}

/// A bulk invalidation of more entries than one event holds is cut into
/// several events (each within the store's event size), all applied.
#[actix_rt::test]
async fn a_large_pattern_delete_is_cut_into_events_that_fit() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    const N: usize = 2500;
    let long = "x".repeat(150);
    let calls = (0..N).map(|i| {
        c.call(
            "kv.set",
            json!({"namespace": "bulk", "key": format!("{long}{i:05}"), "value": i}),
        )
    });
    for reply in futures::future::join_all(calls).await {
        reply.unwrap();
    }
    let before = node.store().last_seq().unwrap();
    assert_eq!(
        c.ok("kv.delete_by_pattern", json!({"pattern": "bulk:x*"}))
            .await,
        json!({"deleted": N})
    );
    let events = node.store().read_all(before + 1, 100).unwrap();
    let counts: Vec<u64> = events
        .iter()
        .map(
            |e| match e.event.as_ref().and_then(|e| e.payload.as_ref()) {
                Some(cairn_events::v1::event::Payload::KvEntriesDeleted(d)) => d.count,
                other => panic!("unexpected event {other:?}"),
            },
        )
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), N as u64);
    assert!(counts.len() >= 5, "{counts:?}");
    assert_eq!(
        keys(&node, json!({"namespace": "bulk"})).await,
        Vec::<String>::new()
    );
    node.shutdown().await;
}

/// The `KvEntrySet` at log sequence `seq`: its principal, namespace, key.
fn set_event_at(node: &TestNode, seq: u64) -> (String, String, String) {
    use cairn_events::v1::event::Payload;
    let envelope = node.store().read_all(seq, 1).unwrap().remove(0);
    assert_eq!(envelope.seq, seq);
    match envelope.event.and_then(|e| e.payload) {
        Some(Payload::KvEntrySet(set)) => (envelope.principal, set.namespace, set.key),
        other => panic!("seq {seq}: not a KvEntrySet: {other:?}"),
    }
}

/// 200 sets sent at once over 16 namespaces: each is answered with its own
/// version, the sequence number of its own `KvEntrySet` (carrying its own
/// principal), and every entry reads back with its value and version.
#[actix_rt::test]
async fn concurrent_sets_over_namespaces_get_their_own_versions_and_all_read_back() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let sets = (0..200).map(|i| {
        let c = c.clone();
        async move {
            let reply = c
                .ok(
                    "kv.set",
                    json!({"namespace": format!("ns{}", i % 16), "key": format!("k{i}"), "value": i, "principal": format!("p{i}")}),
                )
                .await;
            (i, reply["version"].as_u64().unwrap())
        }
    });
    let versions = futures::future::join_all(sets).await;
    let mut distinct: Vec<u64> = versions.iter().map(|(_, v)| *v).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 200);
    for (i, version) in versions {
        let (ns, key) = (format!("ns{}", i % 16), format!("k{i}"));
        assert_eq!(
            set_event_at(&node, version),
            (format!("p{i}"), ns.clone(), key.clone())
        );
        let got = c.ok("kv.get", json!({"namespace": ns, "key": key})).await;
        assert_eq!(
            (got["value"].clone(), got["version"].clone()),
            (json!(i), json!(version))
        );
    }
    node.shutdown().await;
}

/// Sets of one partition sent at once share appends' group commits: the
/// partition's writer takes every set queued while it appended and
/// appends them together (one append per set, with its own metadata), so
/// 64 concurrent sets of one namespace take fewer write batches than
/// sets; each still gets its own version. A namespace with `max_entries`
/// stays exact under concurrent sets.
#[actix_rt::test]
async fn concurrent_sets_of_one_partition_share_group_commits() {
    let (_dir, node, _clock) = start().await;
    let c = node.client();
    let before = node.store().writer_stats();
    let sets = (0..64).map(|i| {
        let c = c.clone();
        async move {
            let reply = c
                .ok(
                    "kv.set",
                    json!({"namespace": "one", "key": format!("k{i}"), "value": i, "principal": format!("p{i}")}),
                )
                .await;
            (i, reply["version"].as_u64().unwrap())
        }
    });
    let versions = futures::future::join_all(sets).await;
    let after = node.store().writer_stats();
    assert_eq!(after.appends - before.appends, 64);
    let batches = after.batches - before.batches;
    assert!(
        batches < 64,
        "64 concurrent sets of one partition took {batches} write batches"
    );
    for (i, version) in versions {
        assert_eq!(
            set_event_at(&node, version),
            (format!("p{i}"), "one".to_owned(), format!("k{i}"))
        );
    }
    // max_entries exact under concurrent sets: 10 remain of 50.
    c.ok(
        "kv.configure",
        json!({"namespace": "lim", "max_entries": 10}),
    )
    .await;
    let sets = (0..50).map(|i| {
        let c = c.clone();
        async move {
            c.ok(
                "kv.set",
                json!({"namespace": "lim", "key": format!("k{i:02}"), "value": i}),
            )
            .await
        }
    });
    futures::future::join_all(sets).await;
    let stats = c.ok("kv.stats", json!({"namespace": "lim"})).await;
    assert_eq!(
        (stats["total_entries"].clone(), stats["evictions"].clone()),
        (json!(10), json!(40))
    );
    assert_eq!(
        keys(&node, json!({"namespace": "lim", "limit": 1000}))
            .await
            .len(),
        10
    );
    node.shutdown().await;
}

/// Holds the store's writer thread inside the next commit (on its
/// observer call) until released: a commit that takes long, as a slow
/// fsync does.
struct CommitGate {
    armed: std::sync::atomic::AtomicBool,
    entered: parking_lot::Mutex<std::sync::mpsc::Sender<()>>,
    release: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl cairn_storage::CommitObserver for CommitGate {
    fn committed(
        &self,
        _envelopes: &[&cairn_events::v1::Envelope],
        _views: &dyn cairn_storage::ViewRead,
    ) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.entered.lock().send(());
            // Bounded: a test that never releases does not hang the writer.
            let _ = self.release.lock().recv_timeout(Duration::from_secs(20));
        }
    }
}

/// A single node's partition writer pipelines its set batches: while one
/// batch's commit is still being written (held here inside the commit, as
/// a slow fsync would hold it), the next batch of the same partition is
/// decided and queued to the store right behind it — not kept back until
/// the first is answered — so the store's writer takes it as soon as it is
/// free. Both sets are answered after their own commits, with consecutive
/// versions.
#[actix_rt::test]
async fn the_next_set_batch_is_queued_while_the_last_one_commits() {
    let (_dir, node, _clock) = start().await;
    let c = node.client().clone();
    c.ok(
        "kv.set",
        json!({"namespace": "pipe", "key": "warm", "value": 0}),
    )
    .await;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(CommitGate {
        armed: std::sync::atomic::AtomicBool::new(true),
        entered: parking_lot::Mutex::new(entered_tx),
        release: parking_lot::Mutex::new(release_rx),
    });
    node.store().observe(gate.clone());
    let first = {
        let c = c.clone();
        tokio::spawn(async move {
            c.ok(
                "kv.set",
                json!({"namespace": "pipe", "key": "a", "value": 1}),
            )
            .await
        })
    };
    // The first set's commit is held on the writer thread.
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the first set's commit reached the store's writer");
    let second = {
        let c = c.clone();
        tokio::spawn(async move {
            c.ok(
                "kv.set",
                json!({"namespace": "pipe", "key": "b", "value": 2}),
            )
            .await
        })
    };
    let store = node.store();
    cairn_tests::wait::wait_until(
        "the second set queued to the store while the first commits",
        Duration::from_secs(10),
        || {
            let queued = store.writer_queue_len();
            async move {
                if queued == 1 {
                    Ok(())
                } else {
                    Err(format!("{queued} commands queued to the store's writer"))
                }
            }
        },
    )
    .await;
    assert!(!first.is_finished() && !second.is_finished());
    release_tx.send(()).unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    let (a, b) = (
        a["version"].as_u64().unwrap(),
        b["version"].as_u64().unwrap(),
    );
    assert_eq!(b, a + 1);
    for (key, value, version) in [("a", 1, a), ("b", 2, b)] {
        let got = c
            .ok("kv.get", json!({"namespace": "pipe", "key": key}))
            .await;
        assert_eq!(
            (got["value"].clone(), got["version"].as_u64()),
            (json!(value), Some(version))
        );
    }
    node.shutdown().await;
}

/// A namespace without limits keeps no per-entry state for entries never
/// read; when it gets `max_entries`, every entry is indexed from the view
/// and the least recently used (by last set or hit) go, exactly; a delete
/// of an entry never read still answers `deleted: true`; after a restart
/// the limits hold.
#[actix_rt::test]
async fn limits_set_after_entries_evict_the_least_recently_used_exactly() {
    let dir = TestDir::new();
    let clock = ManualClock::new(t0());
    let node = start_in(dir.path(), &clock).await;
    let c = node.client();
    for i in 0..20 {
        c.ok(
            "kv.set",
            json!({"namespace": "late", "key": format!("k{i:02}"), "value": i}),
        )
        .await;
        clock.advance(Duration::from_millis(1));
    }
    // k00..k04 read last: the most recent with k19..k15.
    for i in 0..5 {
        c.ok(
            "kv.get",
            json!({"namespace": "late", "key": format!("k{i:02}")}),
        )
        .await;
        clock.advance(Duration::from_millis(1));
    }
    assert_eq!(
        c.ok("kv.delete", json!({"namespace": "late", "key": "k05"}))
            .await,
        json!({"deleted": true})
    );
    c.ok(
        "kv.configure",
        json!({"namespace": "late", "max_entries": 10}),
    )
    .await;
    let expected: Vec<String> = (0..5)
        .chain(14..20)
        .filter(|i| *i != 14)
        .map(|i| format!("late:k{i:02}"))
        .collect();
    assert_eq!(
        keys(&node, json!({"namespace": "late", "limit": 1000})).await,
        expected
    );
    let stats = c.ok("kv.stats", json!({"namespace": "late"})).await;
    assert_eq!(
        (stats["total_entries"].clone(), stats["evictions"].clone()),
        (json!(10), json!(9))
    );
    node.shutdown().await;
    let node = start_in(dir.path(), &clock).await;
    let c = node.client();
    c.ok(
        "kv.set",
        json!({"namespace": "late", "key": "new", "value": 1}),
    )
    .await;
    let got = keys(&node, json!({"namespace": "late", "limit": 1000})).await;
    assert_eq!(got.len(), 10);
    assert!(got.contains(&"late:new".to_owned()), "{got:?}");
    node.shutdown().await;
}
