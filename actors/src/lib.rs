//! cairn's behaviour: the actors and the NATS surface.
//!
//! # Layout
//! - [`publisher`] — the Publisher actor — tails the log from its persisted
//!   cursor and publishes every event to JetStream (`CAIRN_EVENTS`) with
//!   `Nats-Msg-Id` = event id, in log order (each publish fenced on the
//!   stream position before its own); [`publisher::window`] is its plain
//!   component (in-flight window, cursor and fence), unit-tested without
//!   actix.
//! - [`service`] — the `cairn` NATS micro service — endpoint registration,
//!   request decoding (JSON or protobuf), error replies; one module per area
//!   (`service::log` for `cairn.v1.log.read`).
//! - [`writer`] — the stream-writer shell: the single writer of one
//!   stream, for any domain (decide → append at the expected version →
//!   fold → reply), with its [`writer::StreamDomain`] trait.
//! - [`kv`] — the key-value cache domain: partition writers
//!   (`StreamWriter<Kv>`), the memory tier and counters, patterns,
//!   function-result keys.
//! - [`registry`] — opens, closes and finds repositories; [`repository`]
//!   — the repository domain: the RepositoryActor
//!   (`StreamWriter<Repository>`), its pure decisions, its errors;
//!   [`schedule`] — a SyncManager per repository decides when it syncs.
//! - [`timing`] — the clock, the node-wide sync slots and the syncs'
//!   memory budget, shared by
//!   [`schedule`] and [`repository`] (neither imports the other for them;
//!   [`schedule`] does not import [`repository`] at all).
//! - [`watch`] — watches: the per-node [`watch::WatchHub`] (follows the
//!   log, bounded queue per watcher) and the Watcher actor per watch
//!   (listing or resume, live events, heartbeats, relist on overflow).
//! - [`origin`] — Git: mirrors and fetches, Porch-compatible discovery,
//!   and every write (lifecycle commits and ref changes, pushes); all of
//!   cairn's Git-only code.
//! - [`revision_filter`] — which package revisions a `pkgrev.list` or a
//!   watch selects (fields, lifecycles, labels, annotations); domain logic that
//!   [`service`] and [`watch`] share.
//! - [`artifact`] — the HTTP artifact cache domain: URL keys, RFC 9111
//!   rules, the artifact streams' writer (`StreamWriter<ArtifactDomain>`)
//!   and [`artifact::ArtifactCache`], the component both faces call.
//! - [`trace`] — W3C trace context across hops: read from requests,
//!   continued by the command's span, kept in envelopes, sent on.
//! - [`metrics`] — the actors' OpenTelemetry instruments (service, syncs,
//!   watches, publisher, cluster leases) and their Prometheus names.
//! - [`http`] — the node's HTTP face (axum): the artifact reverse proxy
//!   `/u/<upstream>/…`, `/v1/artifacts?url=`, `/healthz`, `/readyz`,
//!   `/metrics`.
//! - [`error`] — [`ServiceError`], the error every endpoint answers with;
//!   each domain's error enum maps into it once.
//! - `test_git` (tests only) — Git upstreams the unit tests build.
//! - `test_spans` (tests only) — a tracing layer capturing every span, to
//!   assert that a command's spans form one tree (registry and watch tests).
//!
//! # Where a new domain goes
//! A domain (key-value namespaces, artifacts, …) is a module
//! `actors/src/<domain>/` beside [`repository`]: its state, pure decisions
//! (given/when/then tests), error enum and `impl`
//! [`writer::StreamDomain`]; its writer is `StreamWriter<Domain>`; its
//! endpoints a module of [`service`]. See [`writer`] for the steps.
//!
//! [`service`] is the NATS edge: it imports the domain modules, and none of
//! them imports it.
//!
//! Actors stay thin: each one forwards to a component with ordinary methods.
//! Blocking work (RocksDB, Git) runs in `spawn_blocking`, never on an
//! arbiter thread.
//!
//! # Storage through its traits
//! Components and read functions take the storage traits, not the concrete
//! [`cairn_storage::Store`]: view reads `&dyn ViewRead` (or `&impl
//! ViewRead` where a page scan is generic anyway), log reads `&dyn
//! EventLog`, blobs `&dyn BlobStore`, and the stream-writer shell appends
//! through `&dyn AsyncAppend` ([`writer::StreamDomain::store`]). Only the
//! structs that wire a node hold a `Store` — `SyncEnv`, `ContextParts`,
//! the publisher, the watch hub and Watchers (which also need
//! `subscribe()`, the publish cursor in `meta`, or a `'static` handle to
//! move into `spawn_blocking`) — and they lend it to the components as the
//! trait. A replicated backend (the cluster issue) then plugs in at those
//! structs without touching the components.
//!
//! Lifecycles are [`cairn_events::revision::Lifecycle`] everywhere (Git
//! discovery, validation, filters); their spelling appears only where a
//! revision is rendered or a request is parsed.

pub mod artifact;
pub mod cluster;
pub mod error;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod origin;
pub mod publisher;
pub mod registry;
pub mod repository;
pub mod revision_filter;
pub mod schedule;
pub mod service;
pub mod timing;
pub mod trace;
pub mod watch;
pub mod writer;

#[cfg(test)]
mod test_git;
#[cfg(test)]
mod test_spans;

pub use error::ServiceError;
