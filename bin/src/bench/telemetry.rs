//! `cairn bench telemetry`: what exporting traces costs. On one in-process
//! node, the `list` workload (uncached `pkgrev.list` pages of a generated
//! repository) and the `append` workload (durable `kv.set` commands, one
//! after the other) run with trace export off and on — to an OTLP/HTTP
//! receiver the benchmark starts on loopback, every trace sampled — in
//! alternating rounds of the same run (so drift of a shared machine falls
//! on both sides). Last line: `telemetry: list_overhead=<%>
//! append_overhead=<%>` (median latency with export on over off, minus one;
//! the means are printed above it — an append is an fsync, and the disk's
//! occasional stalls move a side's mean by several percent). Metrics are
//! collected in both (the registry is always on), and the spans are created
//! in both (as on a node logging at `info`); what differs is handing them
//! to OpenTelemetry and exporting them.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::json;

use super::{
    cache::{self, Running, NAMESPACE, REPOSITORY},
    gen::Shape,
};
use crate::node::Node;

/// What `cairn bench telemetry` runs.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// Package revisions of the generated repository (`list`).
    pub revisions: u64,
    /// Timed listings per round and side.
    pub lists: usize,
    /// Timed appends (`kv.set`) per round and side.
    pub appends: usize,
    /// Rounds (each: off, then on).
    pub rounds: usize,
}

/// Longest wait for one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Items per listed page.
const PAGE_ITEMS: u64 = 100;

/// The receiver's counts.
#[derive(Debug, Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// An OTLP/HTTP receiver on loopback: answers every export with an empty
/// (valid) `Export*ServiceResponse`, counting requests and bytes. It runs
/// on a thread and runtime of its own, as a collector runs in a process
/// of its own: decoding exports never takes turns with the benchmark's
/// client or the node on their threads. Dropping the returned runtime
/// stops it.
fn receiver() -> anyhow::Result<(String, Arc<Received>, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-otlp-receiver")
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::default());
    let counts = received.clone();
    let app = axum::Router::new().route(
        "/v1/{signal}",
        axum::routing::post(move |body: Bytes| {
            let counts = counts.clone();
            async move {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    runtime.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), received, runtime))
}

/// Latencies of `n` runs of `op`, in seconds, in run order.
async fn timed<F, Fut>(n: usize, mut op: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut latencies = Vec::with_capacity(n.max(1));
    for i in 0..n.max(1) {
        let started = Instant::now();
        op(i).await?;
        latencies.push(started.elapsed().as_secs_f64());
    }
    Ok(latencies)
}

/// The mean of `latencies`, in seconds.
fn mean(latencies: &[f64]) -> f64 {
    latencies.iter().sum::<f64>() / latencies.len().max(1) as f64
}

/// The median of `latencies`, in seconds.
fn median(latencies: &[f64]) -> f64 {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark (see the module docs); returns (list, append)
/// overhead in percent.
pub fn telemetry(
    options: &TelemetryOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    anyhow::ensure!(options.rounds >= 1, "--rounds: at least 1");
    crate::telemetry::init("warn,async_nats=off", false);
    let dir = tempfile::tempdir()?;
    let shape = Shape::for_revisions(options.revisions, 5);
    let generated = cache::generate(dir.path(), &shape, out)?;
    let (endpoint, received, receiver_runtime) = receiver()?;
    let system = actix::System::new();
    let result = system.block_on(async {
        let mut config = cache::node_config(&dir.path().join("node"));
        config.telemetry.otlp_endpoint = endpoint.clone();
        config.telemetry.traces_sampler_ratio = 1.0;
        let node = Node::start(config).await?;
        anyhow::ensure!(
            crate::traces::installed().is_some() && crate::telemetry::set_trace_export(false),
            "trace export could not be installed (OTEL_EXPORTER_OTLP_ENDPOINT or the subscriber)"
        );
        let client = async_nats::ConnectOptions::new()
            .name("cairn-bench")
            .connect(node.nats_url.as_str())
            .await
            .with_context(|| format!("connecting to {}", node.nats_url))?;
        let running = Running { node, client };
        let result = run(options, &running, &generated, &endpoint, &received, out).await;
        running.node.shutdown().await;
        result
    });
    receiver_runtime.shutdown_background();
    result
}

async fn run(
    options: &TelemetryOptions,
    running: &Running,
    generated: &super::gen::Generated,
    endpoint: &str,
    received: &Received,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    cache::register_and_settle(running, generated, out).await?;
    let client = &running.client;
    let mut pad = 0usize;
    let mut key = 0usize;
    let value = "x".repeat(100);
    let list = |n: usize, pad: &mut usize| {
        let start = *pad;
        *pad += n;
        timed(n, move |i| async move {
            let mut body = serde_json::to_vec(
                &json!({"namespace": NAMESPACE, "repository": REPOSITORY, "limit": PAGE_ITEMS}),
            )?;
            // New bytes each time: no page comes from the node's page cache.
            body.resize(body.len() + start + i, b' ');
            cache::call(client, "cairn.v1.pkgrev.list", body.into(), REQUEST_TIMEOUT).await?;
            Ok(())
        })
    };
    let value = &value;
    let append = |n: usize, key: &mut usize| {
        let start = *key;
        *key += n;
        timed(n, move |i| async move {
            let body = serde_json::to_vec(
                &json!({"namespace": "bench-telemetry", "key": format!("k{}", start + i), "value": value}),
            )?;
            cache::call(client, "cairn.v1.kv.set", body.into(), REQUEST_TIMEOUT).await?;
            Ok(())
        })
    };
    // Warm-up, untimed, both sides.
    for on in [false, true] {
        crate::telemetry::set_trace_export(on);
        list(20, &mut pad).await?;
        append(20, &mut key).await?;
    }
    // Each round runs both sides, export off then on in odd rounds and on
    // then off in even ones (ABBA), so that what drifts during the run
    // (the store growing with every append, a neighbour's load) falls on
    // both sides alike.
    let (mut list_off, mut list_on, mut append_off, mut append_on) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut means = [(0.0, 0.0); 2];
        for on in order {
            crate::telemetry::set_trace_export(on);
            let listed = list(options.lists, &mut pad).await?;
            let appended = append(options.appends, &mut key).await?;
            means[usize::from(on)] = (mean(&listed), mean(&appended));
            let (lists, appends) = if on {
                (&mut list_on, &mut append_on)
            } else {
                (&mut list_off, &mut append_off)
            };
            lists.extend(listed);
            appends.extend(appended);
        }
        writeln!(
            out,
            "round {}: list off {:.3}ms on {:.3}ms, append off {:.3}ms on {:.3}ms",
            round + 1,
            means[0].0 * 1e3,
            means[1].0 * 1e3,
            means[0].1 * 1e3,
            means[1].1 * 1e3
        )?;
    }
    crate::telemetry::set_trace_export(false);
    let traces = crate::traces::installed().context("trace pipeline")?;
    let flushed = tokio::task::spawn_blocking(|| traces.flush());
    let _ = flushed.await;
    let counters = &traces.counters;
    writeln!(
        out,
        "exported to {endpoint}: {} spans in {} requests ({} bytes); dropped {} (queue full) {} (export failed)",
        counters.exported.load(Ordering::Relaxed),
        received.requests.load(Ordering::Relaxed),
        received.bytes.load(Ordering::Relaxed),
        counters.dropped_queue_full.load(Ordering::Relaxed),
        counters.dropped_export_failed.load(Ordering::Relaxed),
    )?;
    let overhead = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    // The headline compares medians: an append's latency is an fsync, and
    // the disk's occasional stalls of tens of ms (nothing the export
    // does) move a side's mean by several percent from one run to the
    // next; the means are printed above it.
    let (lo, ao) = (
        overhead(median(&list_on), median(&list_off)),
        overhead(median(&append_on), median(&append_off)),
    );
    writeln!(
        out,
        "list: mean off {:.3}ms on {:.3}ms ({:+.1}%), p50 off {:.3}ms on {:.3}ms; \
         append: mean off {:.3}ms on {:.3}ms ({:+.1}%), p50 off {:.3}ms on {:.3}ms \
         ({} rounds)",
        mean(&list_off) * 1e3,
        mean(&list_on) * 1e3,
        overhead(mean(&list_on), mean(&list_off)),
        median(&list_off) * 1e3,
        median(&list_on) * 1e3,
        mean(&append_off) * 1e3,
        mean(&append_on) * 1e3,
        overhead(mean(&append_on), mean(&append_off)),
        median(&append_off) * 1e3,
        median(&append_on) * 1e3,
        options.rounds
    )?;
    writeln!(
        out,
        "telemetry: list_overhead={lo:.1}% append_overhead={ao:.1}%"
    )?;
    Ok((lo, ao))
}
