//! Observability (issue 18) on a real node: `/metrics` (the one registry,
//! Prometheus text parsed by a text-format parser) after a scripted
//! sequence, exact values and bounded labels; `/readyz` naming its checks.

use std::collections::BTreeSet;

use cairn_storage::EventLog as _;
use cairn_tests::{
    git::unpack,
    telemetry::{readyz, Metrics},
    wait_until, NatsServer, TestDir, TestNodeBuilder, WAIT,
};
use serde_json::{json, Value};

/// Label names the registry may use; each has a bounded set of values.
const LABELS: [&str; 9] = [
    "domain",
    "endpoint",
    "code",
    "result",
    "error_class",
    "change",
    "kind",
    "source",
    "le",
];

#[actix_rt::test]
async fn metrics_count_a_scripted_sequence_exactly_with_bounded_labels() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = TestNodeBuilder::in_dir(&dir.path().join("data"))
        .start()
        .await;
    let c = node.client();
    let addr = node.http_addr().expect("the node's HTTP listener");

    // A sync: registering runs the first one (8 package revisions).
    let registered = c
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "simple", "git": {"url": url}}),
        )
        .await;
    assert_eq!(registered["status"]["package_count"], json!(8));

    // The pkgrev cache: a revision read twice (a miss, then a hit).
    let listed = c
        .ok(
            "pkgrev.list",
            json!({"namespace": "team-a", "repository": "simple"}),
        )
        .await;
    let name = listed["items"][0]["name"].as_str().unwrap().to_owned();
    let before = Metrics::scrape(addr).await;
    for _ in 0..2 {
        c.ok("pkgrev.get", json!({"namespace": "team-a", "name": name}))
            .await;
    }
    let after = Metrics::scrape(addr).await;
    let pkgrev = [("domain", "pkgrev")];
    for (metric, delta) in [
        ("cairn_cache_misses_total", 1.0),
        ("cairn_cache_hits_total", 1.0),
        ("cairn_cache_entries", 1.0),
    ] {
        assert_eq!(
            after.value(metric, &pkgrev) - before.value(metric, &pkgrev),
            delta,
            "{metric}"
        );
    }

    // The kv cache: 3 sets into a namespace of 2 entries (1 eviction),
    // then 1 hit and 2 misses (the evicted key, an unknown key).
    c.ok("kv.configure", json!({"namespace": "lru", "max_entries": 2}))
        .await;
    for key in ["a", "b", "c"] {
        c.ok(
            "kv.set",
            json!({"namespace": "lru", "key": key, "value": key}),
        )
        .await;
    }
    c.ok("kv.get", json!({"namespace": "lru", "key": "c"})).await;
    for key in ["a", "zz"] {
        let e = c
            .call("kv.get", json!({"namespace": "lru", "key": key}))
            .await
            .unwrap_err();
        assert_eq!(e.code, 404);
    }

    let m = Metrics::scrape(addr).await;
    let kv = [("domain", "kv")];
    assert_eq!(m.value("cairn_cache_hits_total", &kv), 1.0, "{}", m.text);
    assert_eq!(m.value("cairn_cache_misses_total", &kv), 2.0);
    assert_eq!(m.value("cairn_cache_evictions_total", &kv), 1.0);
    assert_eq!(m.value("cairn_cache_entries", &kv), 2.0);
    assert_eq!(m.value("cairn_cache_hit_ratio", &kv), 1.0 / 3.0);
    assert!(m.value("cairn_cache_bytes", &kv) > 0.0);
    for domain in ["pkgrev", "repo", "kv", "artifact"] {
        assert!(
            m.get("cairn_cache_hits_total", &[("domain", domain)]).is_some(),
            "domain {domain} has cache metrics"
        );
    }
    assert_eq!(
        m.value(
            "cairn_syncs_total",
            &[("result", "success"), ("error_class", "")]
        ),
        1.0
    );
    assert_eq!(
        m.value("cairn_sync_duration_seconds_count", &[("result", "success")]),
        1.0
    );
    for (change, n) in [("added", 8.0), ("modified", 0.0), ("deleted", 0.0)] {
        assert_eq!(
            m.value("cairn_sync_packages_total", &[("change", change)]),
            n,
            "{change}"
        );
    }
    assert_eq!(
        m.value(
            "cairn_service_requests_total",
            &[("endpoint", "kv.get"), ("code", "200")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "cairn_service_requests_total",
            &[("endpoint", "kv.get"), ("code", "404")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "cairn_service_errors_total",
            &[("endpoint", "kv.get"), ("code", "404")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "cairn_service_requests_total",
            &[("endpoint", "kv.set"), ("code", "200")]
        ),
        3.0
    );
    assert_eq!(
        m.value(
            "cairn_service_request_duration_seconds_count",
            &[("endpoint", "kv.get")]
        ),
        3.0
    );
    assert_eq!(
        m.value(
            "cairn_service_requests_total",
            &[("endpoint", "repo.register"), ("code", "200")]
        ),
        1.0
    );
    let last = node.store.last_seq().unwrap() as f64;
    assert_eq!(m.value("cairn_store_log_seq", &[]), last);
    assert_eq!(m.value("cairn_store_view_lag_events", &[]), 0.0);
    assert!(m.value("cairn_store_append_duration_seconds_count", &[]) >= 1.0);
    assert!(m.value("cairn_store_group_commit_appends_count", &[]) >= 1.0);
    assert_eq!(m.value("cairn_watchers", &[]), 0.0);

    // Bounded labels: known names only, and no value is a namespace, a
    // key, a repository, a URL or a path.
    let mut names = BTreeSet::new();
    for (metric, name, value) in m.labels() {
        names.insert(name.clone());
        assert!(
            LABELS.contains(&name.as_str()),
            "{metric} has label {name}={value}"
        );
        for unbounded in ["lru", "team-a", "simple", "zz", "file:", "/"] {
            assert!(
                !value.contains(unbounded) || (name == "endpoint" && unbounded == "simple"),
                "{metric} label {name}={value:?} carries {unbounded:?}"
            );
        }
    }
    assert!(names.contains("domain") && names.contains("endpoint"));
    node.shutdown().await;
}

fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {body}"))
}

#[actix_rt::test]
async fn readyz_names_each_check_and_fails_while_views_lag_or_nats_is_down() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let node = TestNodeBuilder::new()
        .configure(|c| c.nats.urls = vec![url])
        .start()
        .await;
    let addr = node.http_addr().expect("the node's HTTP listener");
    node.client()
        .ok("kv.set", json!({"namespace": "n", "key": "k", "value": 1}))
        .await;
    let last = node.store.last_seq().unwrap();

    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], json!(true));
    assert_eq!(body["failing"], json!([]));
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "nats", "views"]);
    assert_eq!(check(&body, "views")["detail"], json!(format!("caught up at {last}")));

    // A view behind the log (as while it is rebuilt or caught up): not
    // ready, naming the view and where it is.
    let key = cairn_storage::keys::meta::checkpoint("repositories");
    node.store.set_meta_u64(&key, last - 1).unwrap();
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], json!(false));
    assert_eq!(body["failing"], json!(["views"]));
    assert_eq!(
        check(&body, "views")["detail"],
        json!(format!("behind the log's {last}: repositories at {}", last - 1))
    );
    node.store.set_meta_u64(&key, last).unwrap();
    assert_eq!(readyz(addr).await.0, 200);

    // NATS down: not ready, naming the check.
    nats.stop();
    let body = wait_until("readyz to fail on nats", WAIT, || async {
        let (status, body) = readyz(addr).await;
        if status == 503 {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    assert_eq!(body["failing"], json!(["nats"]), "{body}");
    assert_eq!(check(&body, "nats")["ok"], json!(false));
    assert_eq!(check(&body, "store")["ok"], json!(true));
    nats.restart();
    wait_until("readyz to pass again", WAIT, || async {
        match readyz(addr).await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    node.shutdown().await;
}
