//! The `cairn` binary as a library: node wiring, configuration, the client
//! CLI and the benchmarks. `main.rs` only calls [`cli::main`].
//!
//! # Layout
//! - [`cli`] — the command line (clap): `node`, `log`, `views`, `repo`,
//!   `pkg`, `watch`, `bench`, `completion`, `man`; global connection and
//!   namespace flags, one name form.
//! - [`client`] — requests to a node's service and their output
//!   (table, JSON, YAML) for `repo` and `pkg`.
//! - [`config`] — [`config::NodeConfig`] — TOML file, `CAIRN_*` environment,
//!   flags (lowest to highest precedence) — and its validation.
//! - [`local_nats`] — a `nats-server -js` child for nodes without a NATS URL
//!   (and for tests and benchmarks); it dies with its node (parent-death
//!   signal), and a server an earlier run left is found by its pid file
//!   and stopped.
//! - [`nats_servers`] — real `nats-server` processes for tests and
//!   benchmarks: one server, or three routed into a JetStream cluster on
//!   loopback (the test harness re-exports it).
//! - [`nginx`] — Debian's nginx with a temp configuration on a loopback
//!   port (the artifact tests' real origin, the artifact benchmark's origin
//!   and peer), killed when dropped.
//! - [`node`] — starting and gracefully stopping a node.
//! - [`health`] — the readiness checks `/readyz` answers.
//! - [`log_cmd`] — `cairn log` — over NATS or straight from a data directory.
//! - [`views_cmd`] — `cairn views rebuild`.
//! - [`watch_cmd`] — `cairn watch`: a watch streamed to the terminal.
//! - [`top`] — `cairn top`: a live view of nodes from their `/metrics`.
//! - [`bench`](mod@bench) — `cairn bench …`, each against its raw baseline in the same run.
//! - [`telemetry`] — tracing subscriber set-up, the OTLP exporters' settings
//!   and HTTP client.
//! - [`traces`] — the trace pipeline (OTLP export, bounded queue, dropped
//!   spans counted, sampler from `OTEL_TRACES_SAMPLER*`).
//! - [`metrics`] — the node's one metrics registry (Prometheus text and OTLP)
//!   and the observable instruments reading the running node.
//! - [`memory`] — handing memory freed by large syncs back to the system.

pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod health;
pub mod local_nats;
pub mod log_cmd;
pub mod memory;
pub mod metrics;
pub mod nats_servers;
pub mod nginx;
pub mod node;
pub mod telemetry;
pub mod top;
pub mod traces;
pub mod views_cmd;
pub mod watch_cmd;
