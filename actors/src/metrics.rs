//! The actors' metrics (OpenTelemetry metrics API; the node's binary
//! installs the SDK, the Prometheus registry and the OTLP exporter —
//! `cairn::telemetry` — and the observable gauges that read the node's
//! state). Every label has a bounded set of values: endpoint names, HTTP
//! codes, sync results and error classes, change kinds — never a key, URL,
//! namespace or package name.
//!
//! | instrument (Prometheus name) | kind | labels |
//! |---|---|---|
//! | `cairn_service_requests_total` | counter | `endpoint`, `code` |
//! | `cairn_service_errors_total` | counter | `endpoint`, `code` |
//! | `cairn_service_request_duration_seconds` | histogram | `endpoint` |
//! | `cairn_syncs_total` | counter | `result` (`success`/`failure`), `error_class` |
//! | `cairn_sync_duration_seconds` | histogram | `result` |
//! | `cairn_sync_packages_total` | counter | `change` (`added`/`modified`/`deleted`) |
//! | `cairn_sync_refs_read_total` | counter | — |
//! | `cairn_watch_delivered_events_total` | counter | — |
//! | `cairn_watch_relists_total` | counter | — |
//! | `cairn_publisher_retries_total` | counter | — |
//! | `cairn_cluster_lease_renewals_total` | counter | — |
//! | `cairn_cluster_lease_losses_total` | counter | — |
//!
//! Decision: as `cairn_storage::metrics`, the instruments are built once
//! from the global meter provider by [`install`]; before it, [`with`]
//! lends instruments of the provider as it is then (no-op in a process
//! that installs none), so nothing pins no-op instruments. One process is
//! one node: nodes started in-process side by side (tests) share the
//! instruments.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    OnceLock,
};

use opentelemetry::{
    metrics::{Counter, Histogram, Meter},
    KeyValue,
};

pub use cairn_storage::metrics::LATENCY_BUCKETS_SECONDS;

/// The actors' instruments.
#[derive(Debug)]
pub struct Metrics {
    /// Requests answered, by endpoint and code.
    pub requests: Counter<u64>,
    /// Requests answered with an error, by endpoint and code.
    pub errors: Counter<u64>,
    /// Request latency, by endpoint.
    pub request_duration: Histogram<f64>,
    /// Syncs by result and error class.
    pub syncs: Counter<u64>,
    /// Sync duration by result.
    pub sync_duration: Histogram<f64>,
    /// Package revisions a sync added, modified, deleted.
    pub sync_packages: Counter<u64>,
    /// Refs syncs read (discoveries).
    pub sync_refs_read: Counter<u64>,
    /// Events delivered to watchers.
    pub watch_delivered: Counter<u64>,
    /// Watchers told to relist.
    pub watch_relists: Counter<u64>,
    /// Publisher sessions restarted after a failure.
    pub publisher_retries: Counter<u64>,
    /// Leases renewed.
    pub lease_renewals: Counter<u64>,
    /// Leases lost (a renewal refused).
    pub lease_losses: Counter<u64>,
}

/// Upper bound of sync duration buckets, in seconds (10 ms … 5 min).
pub const SYNC_BUCKETS_SECONDS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            requests: counter("cairn_service_requests", "requests answered"),
            errors: counter("cairn_service_errors", "requests answered with an error"),
            request_duration: meter
                .f64_histogram("cairn_service_request_duration")
                .with_unit("s")
                .with_description("time from a request's arrival to its answer")
                .with_boundaries(LATENCY_BUCKETS_SECONDS.to_vec())
                .build(),
            syncs: counter("cairn_syncs", "syncs finished, by result and error class"),
            sync_duration: meter
                .f64_histogram("cairn_sync_duration")
                .with_unit("s")
                .with_description("time from a sync's slot to its last event")
                .with_boundaries(SYNC_BUCKETS_SECONDS.to_vec())
                .build(),
            sync_packages: counter(
                "cairn_sync_packages",
                "package revisions syncs added, modified, deleted",
            ),
            sync_refs_read: counter("cairn_sync_refs_read", "refs syncs read from their mirrors"),
            watch_delivered: counter("cairn_watch_delivered_events", "events sent to watchers"),
            watch_relists: counter("cairn_watch_relists", "watchers told to relist"),
            publisher_retries: counter(
                "cairn_publisher_retries",
                "publisher sessions resumed after a failure",
            ),
            lease_renewals: counter("cairn_cluster_lease_renewals", "stream leases renewed"),
            lease_losses: counter("cairn_cluster_lease_losses", "stream leases lost"),
        }
    }
}

static INSTALLED: OnceLock<Metrics> = OnceLock::new();

/// Builds the instruments from the global meter provider (call once it is
/// installed; later calls change nothing).
pub fn install() {
    INSTALLED.get_or_init(|| Metrics::new(&opentelemetry::global::meter("cairn")));
    cairn_storage::metrics::install();
}

/// Runs `f` with the instruments (see the module docs).
pub fn with<R>(f: impl FnOnce(&Metrics) -> R) -> R {
    match INSTALLED.get() {
        Some(m) => f(m),
        None => f(&Metrics::new(&opentelemetry::global::meter("cairn"))),
    }
}

/// Counts one answered request of `endpoint` (`cairn.v1.` stripped) with
/// `code` (200 for success), taking `seconds`.
pub fn request(endpoint: &'static str, code: u16, seconds: f64) {
    let endpoint = endpoint.strip_prefix("cairn.v1.").unwrap_or(endpoint);
    with(|m| {
        let labels = [
            KeyValue::new("endpoint", endpoint),
            KeyValue::new("code", i64::from(code)),
        ];
        m.requests.add(1, &labels);
        if code >= 400 {
            m.errors.add(1, &labels);
        }
        m.request_duration
            .record(seconds, &[KeyValue::new("endpoint", endpoint)]);
    });
}

/// Counts a finished sync: `Ok((added, modified, deleted))` or the error
/// class of a failed one.
pub fn sync(outcome: Result<(u64, u64, u64), &'static str>, seconds: f64) {
    with(|m| match outcome {
        Ok((added, modified, deleted)) => {
            m.syncs.add(
                1,
                &[
                    KeyValue::new("result", "success"),
                    KeyValue::new("error_class", ""),
                ],
            );
            m.sync_duration
                .record(seconds, &[KeyValue::new("result", "success")]);
            for (change, n) in [
                ("added", added),
                ("modified", modified),
                ("deleted", deleted),
            ] {
                m.sync_packages.add(n, &[KeyValue::new("change", change)]);
            }
        }
        Err(class) => {
            m.syncs.add(
                1,
                &[
                    KeyValue::new("result", "failure"),
                    KeyValue::new("error_class", class),
                ],
            );
            m.sync_duration
                .record(seconds, &[KeyValue::new("result", "failure")]);
        }
    });
}

/// The last sequence number the publisher had acknowledged by JetStream
/// (0 before it published anything in this process).
static PUBLISHED_SEQ: AtomicU64 = AtomicU64::new(0);

/// The publisher's cursor moved to `seq`.
pub fn published(seq: u64) {
    PUBLISHED_SEQ.store(seq, Ordering::Relaxed);
}

/// The last sequence number published ([`published`]).
pub fn published_seq() -> u64 {
    PUBLISHED_SEQ.load(Ordering::Relaxed)
}
