//! Observability (issue 18) on a real node: `/metrics` (the one registry,
//! Prometheus text parsed by a text-format parser) after a scripted
//! sequence, exact values and bounded labels; `/readyz` naming its checks;
//! one trace from a caller's `traceparent` through the node to JetStream
//! and a watcher (a real OTLP receiver); a blackholed collector; `cairn
//! top`; the sample dashboard and configs.

use std::collections::BTreeSet;

use cairn_storage::EventLog as _;
use cairn_tests::{
    git::unpack,
    telemetry::{readyz, Metrics},
    wait_until, NatsServer, TestDir, TestNodeBuilder, WAIT,
};
use serde_json::{json, Value};

/// Label names the registry may use; each has a bounded set of values.
const LABELS: [&str; 11] = [
    "state",
    "reason",
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
    c.ok(
        "kv.configure",
        json!({"namespace": "lru", "max_entries": 2}),
    )
    .await;
    for key in ["a", "b", "c"] {
        c.ok(
            "kv.set",
            json!({"namespace": "lru", "key": key, "value": key}),
        )
        .await;
    }
    c.ok("kv.get", json!({"namespace": "lru", "key": "c"}))
        .await;
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
            m.get("cairn_cache_hits_total", &[("domain", domain)])
                .is_some(),
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
        m.value(
            "cairn_sync_duration_seconds_count",
            &[("result", "success")]
        ),
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
    // The registered repository's resources are blobs: the gauge is what
    // the store counts, and not nothing.
    let blob_bytes = node.store.blob_bytes();
    assert!(blob_bytes > 0);
    assert_eq!(m.value("cairn_store_blobs_bytes", &[]), blob_bytes as f64);
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
    assert_eq!(
        check(&body, "views")["detail"],
        json!(format!("caught up at {last}"))
    );

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
        json!(format!(
            "behind the log's {last}: repositories at {}",
            last - 1
        ))
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

/// A bare repository with one commit on `main`, and its `file://` URL.
fn fresh_upstream(dir: &std::path::Path) -> String {
    let work = cairn_tests::GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "fresh\n").commit("first");
    work.clone_bare(&dir.join("up.git")).url()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[actix_rt::test]
async fn one_approve_with_a_traceparent_is_one_trace_from_endpoint_to_watch_delivery() {
    let receiver = cairn_tests::otlp::OtlpReceiver::start().await;
    let dir = TestDir::new();
    let url = fresh_upstream(dir.path());
    let endpoint = receiver.url();
    let node = TestNodeBuilder::in_dir(&dir.join("node"))
        .configure(|c| c.telemetry.otlp_endpoint = endpoint)
        .start()
        .await;
    let c = node.client();
    c.ok(
        "repo.register",
        json!({"namespace": "team-a", "name": "fresh", "git": {"url": url}}),
    )
    .await;
    let name = "fresh.catalog.app.ws1";
    c.ok(
        "pkgrev.create",
        json!({"namespace": "team-a", "repository": "fresh", "path": "catalog",
               "package": "app", "workspace": "ws1"}),
    )
    .await;
    c.ok(
        "pkgrev.propose",
        json!({"namespace": "team-a", "name": name}),
    )
    .await;

    // Watchers: a JetStream subject subscriber and a cairn watch.
    let mut events = c.subscribe("cairn.events.team-a.>").await;
    let deliver = c.new_inbox();
    let mut deliveries = c.subscribe(&deliver).await;
    c.ok(
        "watch.start",
        json!({"filter": {"namespace": "team-a"}, "deliver_subject": deliver, "heartbeat_ms": 60000}),
    )
    .await;
    let before = node.store.last_seq().unwrap();
    wait_until("the publisher to catch up", WAIT, || async {
        let m = Metrics::scrape(node.http_addr().unwrap()).await;
        let lag = m.value("cairn_publisher_lag_events", &[]);
        if lag == 0.0 {
            Ok(())
        } else {
            Err(format!("lag {lag}"))
        }
    })
    .await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").as_str(),
    );
    headers.insert("tracestate", "vendor=cairn-test");
    let reply = c
        .request_with_headers(
            "cairn.v1.pkgrev.approve",
            headers,
            serde_json::to_vec(&json!({"namespace": "team-a", "name": name})).unwrap(),
        )
        .await;
    assert!(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
            .is_none(),
        "approve failed: {:?}",
        String::from_utf8_lossy(&reply.payload)
    );

    // The spans of that trace, with their parent links.
    let wanted = ["command", "writer", "run", "git.push", "append", "publish"];
    let spans = receiver
        .wait_for("the approve's spans", WAIT, |spans| {
            wanted
                .iter()
                .all(|w| spans.iter().any(|s| s.trace_id == TRACE_ID && s.name == *w))
        })
        .await;
    let spans: Vec<_> = spans
        .into_iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .collect();
    let one = |name: &str| {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "no span {name}");
        found[0].clone()
    };
    let command = one("command");
    assert_eq!(
        command.attribute("endpoint"),
        Some("cairn.v1.pkgrev.approve")
    );
    assert_eq!(
        command.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(command.service, "cairn");
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id).cloned();
    // The chain of names from `span` up to the command.
    let chain = |span: &cairn_tests::otlp::ReceivedSpan| {
        let mut names = vec![span.name.clone()];
        let mut at = span.clone();
        while at.span_id != command.span_id {
            at = by_id(&at.parent_span_id)
                .unwrap_or_else(|| panic!("{} has a parent outside the trace", at.name));
            names.push(at.name.clone());
        }
        names
    };
    let writer = one("writer");
    assert_eq!(writer.attribute("domain"), Some("repository"));
    assert_eq!(chain(&writer).last().map(String::as_str), Some("command"));
    let run = one("run");
    assert_eq!(run.parent_span_id, writer.span_id, "run < writer");
    assert_eq!(run.attribute("verb"), Some("approve"));
    let push = one("git.push");
    assert!(
        chain(&push).contains(&"run".to_owned()),
        "{:?}",
        chain(&push)
    );
    let append = one("append");
    assert!(
        chain(&append).contains(&"writer".to_owned()),
        "{:?}",
        chain(&append)
    );
    let publishes: Vec<_> = spans.iter().filter(|s| s.name == "publish").collect();
    for publish in &publishes {
        assert_eq!(
            publish.parent_span_id, command.span_id,
            "a publish continues the command that recorded the event"
        );
    }

    // The events published on JetStream and the watch's deliveries carry
    // the trace.
    let published = loop {
        let message = events.next().await;
        let h = message.headers.clone().unwrap_or_default();
        let seq: u64 = h.get("Cairn-Seq").unwrap().as_str().parse().unwrap();
        if seq > before {
            break h;
        }
    };
    let traceparent = published
        .get("traceparent")
        .expect("traceparent on the event");
    assert_eq!(trace_id_of(traceparent.as_str()), TRACE_ID);
    assert_eq!(
        published.get("tracestate").map(|v| v.as_str().to_owned()),
        Some("vendor=cairn-test".to_owned())
    );
    let delivered = loop {
        let message = deliveries.next().await;
        let line: Value = serde_json::from_slice(&message.payload).unwrap();
        if line["seq"].as_u64().is_some_and(|s| s > before) && line["type"] != "Heartbeat" {
            break message;
        }
    };
    let headers = delivered.headers.expect("the delivery has headers");
    let traceparent = headers
        .get("traceparent")
        .expect("traceparent on the delivery");
    assert_eq!(trace_id_of(traceparent.as_str()), TRACE_ID);
    node.shutdown().await;
}

/// `n` kv.set commands, one after the other; how long they took.
async fn sets(node: &cairn_tests::TestNode, n: usize) -> std::time::Duration {
    let started = std::time::Instant::now();
    for i in 0..n {
        node.client()
            .ok(
                "kv.set",
                json!({"namespace": "bench", "key": format!("k{i}"), "value": i}),
            )
            .await;
    }
    started.elapsed()
}

#[actix_rt::test]
async fn a_blackholed_collector_neither_blocks_nor_slows_commands_and_dropped_spans_are_counted() {
    const COMMANDS: usize = 200;
    // Export off (this process has no trace pipeline yet).
    let off = TestNodeBuilder::new().start().await;
    sets(&off, 20).await;
    let without = sets(&off, COMMANDS).await;
    off.shutdown().await;

    // Export on, to a collector that takes connections and never answers.
    let blackhole = cairn_tests::otlp::Blackhole::start().await;
    let endpoint = blackhole.url();
    let node = TestNodeBuilder::new()
        .configure(|c| {
            c.telemetry.otlp_endpoint = endpoint;
            c.telemetry.export_queue_max_spans = 16;
            c.telemetry.export_batch_max_spans = 8;
            c.telemetry.export_timeout = std::time::Duration::from_secs(1);
        })
        .start()
        .await;
    sets(&node, 20).await;
    let with = sets(&node, COMMANDS).await;
    eprintln!("{COMMANDS} kv.set: export off {without:?}, on (blackholed) {with:?}");
    // Were a command to wait for the export, each would take the export
    // timeout (1 s): 200 s. Bound: twice the time without export, + 1 s.
    assert!(
        with <= without * 2 + std::time::Duration::from_secs(1),
        "export on {with:?} vs off {without:?}"
    );
    let m = Metrics::scrape(node.http_addr().unwrap()).await;
    let queue_full = m.value(
        "cairn_telemetry_spans_dropped_total",
        &[("reason", "queue_full")],
    );
    // Each command ends at least its `command` span; at most the queue (16)
    // and one batch (8) are held while the export hangs.
    assert!(
        queue_full >= (COMMANDS + 20 - 24) as f64,
        "dropped (queue full) {queue_full}\n{}",
        m.text
    );
    assert_eq!(m.value("cairn_telemetry_spans_exported_total", &[]), 0.0);
    node.shutdown().await;
}

#[actix_rt::test]
async fn cairn_top_once_shows_a_node_from_its_metrics() {
    let node = TestNodeBuilder::new().start().await;
    let c = node.client();
    c.ok("kv.set", json!({"namespace": "t", "key": "a", "value": 1}))
        .await;
    for _ in 0..3 {
        c.ok("kv.get", json!({"namespace": "t", "key": "a"})).await;
    }
    c.call("kv.get", json!({"namespace": "t", "key": "nope"}))
        .await
        .unwrap_err();
    let url = format!("http://{}", node.http_addr().unwrap());
    let out = cairn_tests::cairn_cli!()
        .run([
            "top",
            "--once",
            "-o",
            "json",
            "--interval",
            "200ms",
            "--url",
            &url,
        ])
        .await;
    assert!(out.success, "{}", out.stderr);
    let view: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let n = &view["nodes"][0];
    assert_eq!(n["url"], json!(url));
    assert_eq!(n["error"], Value::Null);
    assert_eq!(n["caches"]["kv"]["hits"], json!(3));
    assert_eq!(n["caches"]["kv"]["misses"], json!(1));
    assert_eq!(n["caches"]["kv"]["hit_ratio"], json!(0.75));
    assert_eq!(n["caches"]["kv"]["entries"], json!(1));
    assert_eq!(n["endpoints"]["kv.get"]["requests_total"], json!(4));
    assert_eq!(n["endpoints"]["kv.get"]["errors_total"], json!(1));
    assert_eq!(n["endpoints"]["kv.get"]["requests_per_s"], json!(0.0));
    assert_eq!(n["log_seq"], json!(node.store.last_seq().unwrap()));
    assert_eq!(
        (n["watchers"].clone(), n["publish_lag"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        (n["syncs_running"].clone(), n["syncs_waiting"].clone()),
        (json!(0), json!(0))
    );

    let table = cairn_tests::cairn_cli!()
        .run(["top", "--once", "--interval", "200ms", "--url", &url])
        .await;
    assert!(table.success, "{}", table.stderr);
    assert!(table.stdout.contains("ENDPOINT"), "{}", table.stdout);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some("kv.get")),
        "{}",
        table.stdout
    );

    // No node answering: an error naming the address.
    let closed = cairn_tests::ClosedPort::bind();
    let gone = format!("http://127.0.0.1:{}", closed.port());
    let out = cairn_tests::cairn_cli!()
        .run(["top", "--once", "-o", "json", "--url", &gone])
        .await;
    assert!(!out.success);
    assert!(out.stderr.contains(&gone), "{}", out.stderr);
    node.shutdown().await;
}

#[test]
fn the_dashboard_queries_documented_metrics_and_the_sample_configs_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("cairn_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name.clone(), |n, s| {
                        n.strip_suffix(s).map_or(n.clone(), str::to_owned)
                    });
                names.insert(base);
            }
        }
    }
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in the README"
        );
    }
    for file in ["config/prometheus.yml", "config/otel-collector.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert!(parsed.is_mapping(), "{file}");
    }
}

#[actix_rt::test]
async fn bench_telemetry_exports_to_its_receiver_and_ends_with_the_overheads() {
    let out = cairn_tests::cairn_cli!()
        .run([
            "bench",
            "telemetry",
            "--revisions",
            "20",
            "--lists",
            "5",
            "--appends",
            "5",
            "--rounds",
            "1",
        ])
        .await;
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    let rest = last
        .strip_prefix("telemetry: list_overhead=")
        .unwrap_or_else(|| panic!("last line {last:?}"));
    let (list, append) = rest.split_once("% append_overhead=").expect("two figures");
    list.parse::<f64>().expect("list overhead");
    append
        .strip_suffix('%')
        .unwrap()
        .parse::<f64>()
        .expect("append overhead");
    let exported = lines
        .iter()
        .find(|l| l.starts_with("exported to "))
        .expect("the receiver's line");
    // Warm-up and the timed round with export on: 25 listings and 25
    // appends at least, each a command span.
    let spans: u64 = exported
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a span count");
    assert!(spans >= 50, "{exported}");
    assert!(
        exported.ends_with("dropped 0 (queue full) 0 (export failed)"),
        "{exported}"
    );
}

#[actix_rt::test]
async fn artifact_origin_requests_and_kv_computes_carry_the_callers_trace() {
    use futures::StreamExt as _;
    let receiver = cairn_tests::otlp::OtlpReceiver::start().await;
    let origin = cairn_tests::ScriptedOrigin::start().await;
    origin.reply(
        "/file",
        cairn_tests::Reply::new(200, "hello").header("cache-control", "max-age=60"),
    );
    let (endpoint, url) = (receiver.url(), origin.url());
    let node = TestNodeBuilder::new()
        .configure(|c| {
            c.telemetry.otlp_endpoint = endpoint;
            c.artifact.upstreams = vec![cairn::config::UpstreamEntry {
                name: "origin".into(),
                url,
            }];
        })
        .start()
        .await;

    // HTTP: the proxy's request to the origin continues the caller's trace.
    let http_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/u/origin/file",
            node.http_addr().unwrap()
        ))
        .header(
            "traceparent",
            format!("00-{http_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");
    let sent = origin.requests_for("/file");
    assert_eq!(sent.len(), 1);
    let origin_traceparent = sent[0]
        .header("traceparent")
        .expect("traceparent to the origin")
        .to_owned();
    assert_eq!(trace_id_of(&origin_traceparent), http_trace);

    // NATS: a kv compute request continues the caller's trace.
    let nats = node.client().nats().clone();
    let mut computes = nats.subscribe("compute.traced").await.unwrap();
    nats.flush().await.unwrap();
    let responder = tokio::spawn(async move {
        let msg = computes.next().await.unwrap();
        let headers = msg.headers.clone().unwrap_or_default();
        nats.publish(msg.reply.clone().unwrap(), "{\"v\":1}".into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        headers
    });
    let kv_trace = "5b8efff798038103d269b633813fc60c";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{kv_trace}-eee19b7ec3c1b174-01").as_str(),
    );
    let reply = node
        .client()
        .request_with_headers(
            "cairn.v1.kv.get_or_compute",
            headers,
            serde_json::to_vec(&json!({"namespace": "fn", "key": "k",
                "compute": {"subject": "compute.traced", "body": {}}}))
            .unwrap(),
        )
        .await;
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["value"], json!({"v": 1}), "{body}");
    let compute_headers = cairn_tests::within("the compute request", WAIT, responder)
        .await
        .unwrap();
    let traceparent = compute_headers
        .get("traceparent")
        .expect("traceparent to the compute");
    assert_eq!(trace_id_of(traceparent.as_str()), kv_trace);

    let spans = receiver
        .wait_for("the origin and compute spans", WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.name == "artifact.origin" && s.trace_id == http_trace)
                && spans
                    .iter()
                    .any(|s| s.name == "kv.call" && s.trace_id == kv_trace)
        })
        .await;
    let http = spans
        .iter()
        .find(|s| s.name == "http.request" && s.trace_id == http_trace)
        .expect("the http.request span");
    assert_eq!(http.parent_span_id, "b7ad6b7169203331");
    // The origin's parent is the node's `artifact.origin` span (a child of
    // `http.request`), not the caller's span passed through; the compute's
    // is the node's `kv.call` span.
    let origin_span = spans
        .iter()
        .find(|s| s.name == "artifact.origin" && s.trace_id == http_trace)
        .unwrap();
    assert_eq!(origin_span.parent_span_id, http.span_id);
    assert_eq!(
        origin_traceparent.split('-').nth(2),
        Some(origin_span.span_id.as_str())
    );
    let kv_call = spans
        .iter()
        .find(|s| s.name == "kv.call" && s.trace_id == kv_trace)
        .unwrap();
    assert_eq!(
        traceparent.as_str().split('-').nth(2),
        Some(kv_call.span_id.as_str())
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_cluster_node_reports_the_cluster_check_and_its_owned_streams() {
    let nats = NatsServer::start();
    let url = nats.url();
    let dir = TestDir::new();
    let upstream = unpack("simple-repository", &dir.path().join("upstream"));
    let node = TestNodeBuilder::in_dir(&dir.join("node"))
        .configure(|c| {
            c.nats.urls = vec![url];
            c.cluster.enabled = true;
            c.cluster.node_id = Some("n0".into());
            c.cluster.stream_replicas = 1;
        })
        .start()
        .await;
    let addr = node.http_addr().unwrap();
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "simple", "git": {"url": upstream}}),
        )
        .await;
    let body = wait_until("the cluster check to see the log's end", WAIT, || async {
        let (status, body) = readyz(addr).await;
        let detail = check(&body, "cluster")["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        // "applied N of M", once the log's end was read after the commits.
        match detail
            .strip_prefix("applied ")
            .and_then(|d| d.split_once(" of "))
        {
            Some((a, m)) if status == 200 && a == m && a != "0" => Ok(body),
            _ => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(body["failing"], json!([]));
    let names: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "nats", "views", "cluster"]);
    let m = Metrics::scrape(addr).await;
    // The repository's stream, the 16 kv partitions, the 16 artifact
    // streams, the publisher, compactor, artifact evictor and snapshotter
    // roles (leases too).
    assert_eq!(
        m.value("cairn_cluster_owned_streams", &[]),
        37.0,
        "{}",
        m.text
    );
    assert_eq!(m.value("cairn_cluster_applied_seq_lag_events", &[]), 0.0);
    node.shutdown().await;
}
