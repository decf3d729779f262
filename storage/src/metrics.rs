//! The store's metrics (OpenTelemetry metrics API; the node's binary
//! installs the SDK and its exporters, see `cairn::telemetry`):
//!
//! - `cairn_store_append_duration_seconds` — histogram: an append from
//!   being queued to the writer until it is durable (queue wait and group
//!   commit included);
//! - `cairn_store_group_commit_appends` — histogram: appends committed by
//!   one write batch (one fsync).
//!
//! Decision: the instruments are built once, from the global meter
//! provider, when [`install`] is called (the binary calls it after
//! installing its provider); before that [`with`] hands out
//! instruments of the global provider as it is then (a no-op one in a
//! process that installs none), without keeping them — so a library used
//! before the provider is installed never pins no-op instruments.
//! The row cache's counters (per view) are [`crate::Store::row_cache_stats`],
//! read by the binary's observable instruments.

use std::sync::OnceLock;

use opentelemetry::metrics::{Histogram, Meter};

/// The store's instruments.
#[derive(Debug)]
pub struct StoreMetrics {
    /// `cairn_store_append_duration_seconds`.
    pub append_duration: Histogram<f64>,
    /// `cairn_store_group_commit_appends`.
    pub group_commit_appends: Histogram<u64>,
}

/// Bucket bounds of latency histograms, in seconds (100 µs … 10 s).
pub const LATENCY_BUCKETS_SECONDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Bucket bounds of the group-commit size histogram, in appends.
pub const GROUP_BUCKETS_APPENDS: [f64; 10] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl StoreMetrics {
    fn new(meter: &Meter) -> Self {
        Self {
            append_duration: meter
                .f64_histogram("cairn_store_append_duration")
                .with_unit("s")
                .with_description("an append from queued to durable")
                .with_boundaries(LATENCY_BUCKETS_SECONDS.to_vec())
                .build(),
            group_commit_appends: meter
                .u64_histogram("cairn_store_group_commit_appends")
                .with_description("appends committed by one write batch")
                .with_boundaries(GROUP_BUCKETS_APPENDS.to_vec())
                .build(),
        }
    }
}

static INSTALLED: OnceLock<StoreMetrics> = OnceLock::new();

/// Builds the instruments from the global meter provider (call once it is
/// installed; later calls change nothing).
pub fn install() {
    INSTALLED.get_or_init(|| StoreMetrics::new(&opentelemetry::global::meter("cairn")));
}

/// Runs `f` with the store's instruments (see the module docs).
pub fn with<R>(f: impl FnOnce(&StoreMetrics) -> R) -> R {
    match INSTALLED.get() {
        Some(m) => f(m),
        None => f(&StoreMetrics::new(&opentelemetry::global::meter("cairn"))),
    }
}
