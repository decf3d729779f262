//! Test harness for cairn's integration suites: real parts only (a real
//! `nats-server`, RocksDB in temp directories, Git with the real `git`
//! CLI), every wait bounded by a deadline.
//!
//! # Layout
//! - [`wait`] — deadlines: [`within`] (await with a timeout),
//!   [`wait_until`] (poll a condition, bounded, where no event exists),
//!   [`wait_until_blocking`], the default bound [`WAIT`].
//! - [`nats`] — [`NatsServer`], a real `nats-server` with JetStream built
//!   from a [`NatsServerConfig`] (accounts, users, service exports and
//!   imports), and [`NatsCluster`], three servers routed on loopback with
//!   clustered JetStream; ports picked by the servers, every process killed
//!   on drop.
//! - [`client`] — [`Client`], the one typed client of a node's service:
//!   `call(endpoint, json) -> Result<Value, ServiceError>`, `ok`, protobuf
//!   and raw requests, `$SRV` requests, the log of a repository, bounded
//!   [`Subscription`]s, a revision's files read page by page
//!   ([`Client::resources`], [`Client::resource_pages`]).
//! - [`cluster`] — [`cluster::CairnCluster`], `cairn node` children on a
//!   [`NatsCluster`] (lease owners, restarts, kills), and the headers and
//!   log dumps the cluster suites compare.
//! - [`node`] — [`TestNode`] (a node in-process, from a [`TestNodeBuilder`]),
//!   [`ChildNode`] (`cairn node` as a child process), [`TestDir`] (a temp
//!   directory kept when its test fails).
//! - [`origin`] — [`ScriptedOrigin`], an HTTP origin on loopback that
//!   answers scripted status, fields and bodies (and misbehaves on
//!   request: short bodies, resets, no answer), counting requests.
//! - [`Nginx`] (from `cairn::nginx`, shared with the benchmark) — Debian's
//!   nginx on a loopback port with a temp configuration, killed on drop.
//! - [`git`](mod@git) — [`GitFixture`] (Porch fixtures unpacked, generated
//!   repositories), [`git()`] the one Git runner, [`unpack`].
//! - [`jetstream`] — [`jetstream::cairn_seqs`], the position and `Cairn-Seq`
//!   of every message of a stream, in stream order.
//! - [`process`] — [`ChildGuard`] (kills a child and its descendants),
//!   [`PidGuard`] (kills a process that is not the test's child),
//!   [`process::is_running`],
//!   [`Cli`] (the `cairn` CLI with a timeout; [`cairn_cli!`] names the
//!   binary), [`ClosedPort`], line readers with deadlines.
//! - [`otlp`] — [`otlp::OtlpReceiver`], a real OTLP/HTTP receiver on loopback
//!   decoding exported spans (`opentelemetry-proto` types), and
//!   [`otlp::Blackhole`], a port that never answers.
//! - [`telemetry`] — [`telemetry::Metrics`], a node's `/metrics` scraped and
//!   parsed (Prometheus text format), looked up exactly by name and labels.
//! - [`store`] — [`TempStore`] and sample [`events`].
//! - [`paths`] — [`shared_dir`], the workspace's `../shared` directory (a
//!   leaf module, so `git` does not import the crate root that declares it).
//!
//! The suites live in `tests/tests/*.rs` (`cluster` tests the cluster
//! helper itself); the child programs they spawn in `src/bin/`
//! (`cairn-under-test` is the real CLI, `cairn-crash-appender` an appender
//! that reports every acknowledged append).

pub mod client;
pub mod cluster;
pub mod git;
pub mod jetstream;
pub mod nats;
pub mod node;
pub mod origin;
pub mod otlp;
pub mod paths;
pub mod process;
pub mod store;
pub mod telemetry;
pub mod wait;

pub use cairn::nginx::Nginx;
pub use client::{
    files_of_pages, files_of_proto_pages, kinds, Client, Files, ResourcePage, ServiceError,
    Subscription, NAMESPACE,
};
pub use git::{git, unpack, GitFixture};
pub use nats::{Account, NatsCluster, NatsServer, NatsServerConfig};
pub use node::{ChildNode, TestDir, TestNode, TestNodeBuilder, KILL_AFTER_SYNC_CHUNKS};
pub use origin::{Gate, Reply, ScriptedOrigin};
pub use paths::shared_dir;
pub use process::{
    async_lines, next_line, read_line_matching, ChildGuard, Cli, CliOutput, ClosedPort, PidGuard,
};
pub use store::{events, TempStore};
pub use wait::{wait_until, wait_until_blocking, within, WAIT};

/// The `cairn` CLI built for the calling test crate (`cairn-under-test`,
/// whose path Cargo gives integration tests only).
#[macro_export]
macro_rules! cairn_cli {
    () => {
        $crate::Cli::new(env!("CARGO_BIN_EXE_cairn-under-test"))
    };
}
